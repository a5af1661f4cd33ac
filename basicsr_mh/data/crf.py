"""Camera response functions (CRF): the nonlinear map from linear irradiance to pixel values, and its inverse.

GoPro (Nah et al. 2017) averages its 240 fps frames in linear light: it inverts a gamma 2.2 CRF, averages, and applies
the CRF again. :class:`GammaCRF` is that curve, ``value = irradiance ** (1 / gamma)``; :class:`SRGBCRF` is the sRGB
transfer curve (a linear toe and a 2.4 power segment), for comparison. Both act element-wise on float arrays in
[0, 1] of any shape and keep the dtype of a float32 input.
"""
import numpy as np


class GammaCRF:
    """Parametric gamma CRF: ``forward(x) = x ** (1 / gamma)``, ``inverse(y) = y ** gamma`` on [0, 1].

    Args:
        gamma (float): > 0; 2.2 is GoPro's choice, 1.0 is the identity (averaging pixel values directly).
    """

    def __init__(self, gamma=2.2):
        gamma = float(gamma)
        if not gamma > 0:
            raise ValueError(f'crf gamma must be > 0, got {gamma}.')
        self.gamma = gamma

    def forward(self, linear):
        """Linear irradiance (any shape, in [0, 1]; clipped) -> pixel values in [0, 1], same shape."""
        return np.power(np.clip(linear, 0.0, 1.0), 1.0 / self.gamma)

    def inverse(self, values):
        """Pixel values (any shape, in [0, 1]; clipped) -> linear irradiance in [0, 1], same shape."""
        return np.power(np.clip(values, 0.0, 1.0), self.gamma)

    def inverse_lut(self):
        """(256,) float32 table: linear irradiance of each uint8 value ``v``, i.e. ``inverse(v / 255)``."""
        return self.inverse(np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)

    def __call__(self, linear):
        return self.forward(linear)

    def describe(self):
        """A JSON-able description, e.g. ``{'type': 'gamma', 'gamma': 2.2}``."""
        return {'type': 'gamma', 'gamma': self.gamma}

    def __repr__(self):
        return f'GammaCRF(gamma={self.gamma})'


class SRGBCRF(GammaCRF):
    """The sRGB transfer curve (IEC 61966-2-1) as a CRF; same interface as :class:`GammaCRF`."""

    def __init__(self):
        self.gamma = 2.4

    def forward(self, linear):
        linear = np.clip(linear, 0.0, 1.0)
        dtype = linear.dtype if linear.dtype.kind == 'f' else np.float64
        out = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
        return out.astype(dtype, copy=False)

    def inverse(self, values):
        values = np.clip(values, 0.0, 1.0)
        dtype = values.dtype if values.dtype.kind == 'f' else np.float64
        out = np.where(values <= 0.04045, values / 12.92, np.power((values + 0.055) / 1.055, 2.4))
        return out.astype(dtype, copy=False)

    def describe(self):
        return {'type': 'srgb'}

    def __repr__(self):
        return 'SRGBCRF()'


def build_crf(kind='gamma', gamma=2.2):
    """``'gamma'`` -> :class:`GammaCRF` (``gamma``), ``'srgb'`` -> :class:`SRGBCRF`, ``'linear'`` -> gamma 1."""
    if kind == 'gamma':
        return GammaCRF(gamma)
    if kind == 'srgb':
        return SRGBCRF()
    if kind == 'linear':
        return GammaCRF(1.0)
    raise ValueError(f"crf must be 'gamma', 'srgb' or 'linear', got {kind!r}.")
