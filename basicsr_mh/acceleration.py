"""Mixed precision, channels_last and ``torch.compile`` for training, validation and inference (``train.amp``,
``train.channels_last``, ``train.compile``).

One :class:`Acceleration` says how a network runs: the forward pass under ``torch.autocast`` (``bf16`` or ``fp16``),
network and inputs in channels_last memory format, the network compiled with ``torch.compile`` (falling back to eager
with a logged message where it cannot compile). Losses, the min-head assignment and metrics stay in FP32: callers cast
the network output with :func:`to_float32`. Parameters, optimizer state and checkpoints stay FP32; the compiled
callable is kept beside the module, so ``state_dict`` keys do not change.
"""
import contextlib
import torch
from basicsr.utils import get_root_logger
from dataclasses import dataclass
from typing import Optional

#: ``amp`` values and their autocast dtypes.
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
#: ``compile`` values other than true/false (``torch.compile``'s modes).
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
#: The keys, under ``train`` (training and its validation) or ``val`` (``basicsr-mh test``).
ACCELERATION_KEYS = ('amp', 'channels_last', 'compile')


def check_acceleration_options(section, where='train', cuda=None):
    """Validate ``amp``/``channels_last``/``compile`` of an option section; returns ``(amp, channels_last, mode)``.

    Args:
        section (dict | None): the ``train`` (or ``val``) options.
        where (str): the section's name, for the messages.
        cuda (bool | None): whether the run has a CUDA device (None: ``torch.cuda.is_available()``).

    Returns:
        tuple: ``(None | 'bf16' | 'fp16', bool, None | compile mode)``.

    Raises:
        ValueError: naming the key and the fix, for an unknown value, or ``fp16`` without a CUDA device.
    """
    section = section or {}
    amp = section.get('amp', False)
    if amp in (False, None, 'false', 'fp32', 'none'):
        amp = None
    elif amp not in AMP_DTYPES:
        raise ValueError(f'{where}.amp must be false, bf16 or fp16, got {amp!r}. Fix: `amp: bf16` (CPU and recent '
                         'GPUs), `amp: fp16` (CUDA, with a gradient scaler) or `amp: false` (FP32).')
    if amp == 'fp16' and not (torch.cuda.is_available() if cuda is None else cuda):
        raise ValueError(f'{where}.amp: fp16 needs a CUDA device (autocast to float16 with a gradient scaler); this '
                         'run has none. Fix: `amp: bf16` (bfloat16 autocast works on the CPU) or `amp: false`.')
    channels_last = section.get('channels_last', False)
    if not isinstance(channels_last, bool):
        raise ValueError(f'{where}.channels_last must be true or false, got {channels_last!r}. Fix: '
                         '`channels_last: true` (network and inputs in NHWC memory format) or remove it.')
    mode = section.get('compile', False)
    if mode is True:
        mode = 'default'
    elif mode in (False, None):
        mode = None
    elif mode not in COMPILE_MODES:
        raise ValueError(f'{where}.compile must be true, false or a torch.compile mode ({", ".join(COMPILE_MODES)}), '
                         f'got {mode!r}. Fix: `compile: true`, or remove it.')
    return amp, channels_last, mode


def to_float32(out):
    """A network output in FP32: a tensor, a list/tuple of tensors (stages) or ``(heads, scores)``; FP32 and
    non-float tensors are returned as they are."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, (list, tuple)):
        return type(out)(to_float32(o) for o in out)
    return out


class CompiledForward:
    """``torch.compile(net, mode=mode)`` that falls back to ``net`` itself where it cannot compile.

    Compilation happens at the first call; when that raises, the reason is logged once (naming ``where``) and the
    eager module runs from then on. An error of the eager module itself (a wrong input) is raised as it is.
    """

    def __init__(self, net, mode, where='train.compile'):
        self.net = net
        self.mode = mode
        self.where = where
        self.compiled = None
        self.failed = None
        try:
            self.compiled = torch.compile(net, mode=None if mode == 'default' else mode)
        except Exception as err:  # noqa: BLE001  (no compiler for this platform / torch build: eager)
            self._fall_back(err)

    def _fall_back(self, err):
        self.failed = f'{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ""}'
        self.compiled = None
        get_root_logger().warning(f'basicsr-mh: {self.where}: torch.compile cannot compile '
                                  f'{type(self.net).__name__} here ({self.failed[:300]}); running eager instead. '
                                  f'Fix: `compile: false` to silence this, or install what the message names (a C '
                                  'compiler, Triton for CUDA).')

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.net(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (re-raised below when eager fails too)
            self._fall_back(err)
            return self.net(*args, **kwargs)


@dataclass(frozen=True)
class Acceleration:
    """How a network runs: autocast dtype, memory format, compile mode.

    Attributes:
        amp (str | None): ``bf16``, ``fp16`` or None (FP32).
        channels_last (bool): network and 4-D inputs in channels_last memory format.
        compile (str | None): a ``torch.compile`` mode, or None (eager).
        device_type (str): ``cpu`` or ``cuda`` (autocast's device type).
    """
    amp: Optional[str] = None
    channels_last: bool = False
    compile: Optional[str] = None
    device_type: str = 'cpu'

    @classmethod
    def from_options(cls, section, device, where='train'):
        """The checked keys of ``section`` (:func:`check_acceleration_options`) for a network on ``device``."""
        device_type = torch.device(device).type
        amp, channels_last, mode = check_acceleration_options(section, where, cuda=device_type == 'cuda')
        return cls(amp, channels_last, mode, device_type)

    @property
    def enabled(self):
        """Whether anything differs from eager FP32 contiguous."""
        return bool(self.amp or self.channels_last or self.compile)

    def describe(self):
        """One line for the log."""
        parts = [
            f'amp {self.amp or "off (FP32)"}', f'channels_last {"on" if self.channels_last else "off"}',
            f'compile {self.compile or "off"}'
        ]
        return ', '.join(parts)

    def autocast(self):
        """A context: ``torch.autocast`` to the ``amp`` dtype, or nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.amp])

    def prepare_network(self, net):
        """``net`` in channels_last memory format (in place) when asked; returns ``net``."""
        return net.to(memory_format=torch.channels_last) if self.channels_last else net

    def prepare_input(self, x):
        """A 4-D input (B, C, H, W) in channels_last memory format when asked (same values)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_of(self, net, cache, where='train.compile'):
        """The callable that runs ``net``: a :class:`CompiledForward` (kept in the dict ``cache`` per module, so it
        compiles once) or ``net`` itself."""
        if not self.compile:
            return net
        if id(net) not in cache or cache[id(net)].net is not net:
            cache[id(net)] = CompiledForward(net, self.compile, where)
        return cache[id(net)]

    def grad_scaler(self):
        """A ``torch.amp.GradScaler`` for ``fp16`` (on CUDA), else None."""
        if self.amp != 'fp16':
            return None
        return torch.amp.GradScaler(self.device_type)

    def run(self, net, x, cache, where='train.compile', **kwargs):
        """``net(x, **kwargs)`` with everything applied; the output cast to FP32 (:func:`to_float32`)."""
        forward = self.forward_of(net, cache, where)
        with self.autocast():
            out = forward(self.prepare_input(x), **kwargs)
        return to_float32(out)
