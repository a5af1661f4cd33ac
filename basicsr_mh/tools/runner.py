"""Run a (multi-head) network on images of any size: padding to the size the backbone needs, overlapping tiles."""
import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger

from ..acceleration import Acceleration
from .common import final_output

PAD_CANDIDATES = (8, 16, 32, 64)


def tile_starts(size, tile, overlap):
    """Start positions of tiles of length ``min(tile, size)`` covering ``range(size)``, overlapping >= ``overlap``."""
    if tile <= 0 or size <= tile:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def blend_ramp(length, start, end, size, overlap):
    """1-D blending weight of a tile ``[start, end)`` of an axis of ``size``: linear ramps over ``overlap`` samples
    at edges inside the image, 1 elsewhere (strictly positive, so every pixel has weight)."""
    w = torch.ones(length)
    ramp = min(overlap, length // 2)
    if ramp > 0:
        up = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
        if start > 0:
            w[:ramp] = up
        if end < size:
            w[-ramp:] = torch.minimum(w[-ramp:], up.flip(0))
    return w


class HeadRunner:
    """Apply a network to whole images and return all its heads.

    Args:
        net (nn.Module): a :class:`MultiHeadArch` or a plain backbone, in eval mode.
        device (str | torch.device): where to run.
        tile (int): tile side (input pixels); images larger than this in a dimension are tiled; 0: never.
        overlap (int): overlap of neighbouring tiles (input pixels); blended with linear ramps.
        pad_multiple (int | None): reflect-pad every forward input to a multiple of this (Restormer:
            ``val.window_size``). When a forward fails at a size, 8, 16, 32, 64 are tried in turn, and kept.
        with_scores (bool): also return the score branch's per-pixel logits (``head_scores``), padded, tiled and
            blended as the heads.
        acceleration (Acceleration | None): autocast and channels_last for the forward passes
            (:class:`basicsr_mh.acceleration.Acceleration`); the outputs are FP32 either way.

    ``runner(x)``: ``x`` (B, C, H, W) float in [0, 1] -> (B, K', C_out, H * s, W * s) float on the CPU
    (K' = 1 for a plain network; the final stage of multi-stage backbones); with ``with_scores`` a tuple
    ``(heads, scores (B, K', H * s, W * s))``.
    """

    def __init__(self, net, device='cpu', tile=0, overlap=32, pad_multiple=None, with_scores=False, acceleration=None):
        self.device = torch.device(device)
        self.with_scores = bool(with_scores)
        self.acceleration = acceleration or Acceleration(device_type=self.device.type)
        self.net = self.acceleration.prepare_network(net.to(self.device).eval())
        self._compiled = {}
        self.tile = int(tile or 0)
        self.overlap = max(int(overlap or 0), 0)
        self.pad_multiple = int(pad_multiple or 1)
        if self.tile and self.overlap >= self.tile:
            raise ValueError(f'--tile-overlap ({self.overlap}) must be smaller than --tile ({self.tile}).')

    @torch.no_grad()
    def forward_patch(self, x):
        """One forward of ``x`` (B, C, h, w) with padding: (B, K', C_out, h * s, w * s) on the device."""
        x = x.to(self.device)
        first_error = None
        for multiple in [self.pad_multiple] + [m for m in PAD_CANDIDATES if m > self.pad_multiple]:
            try:
                out = self._padded(x, multiple)
            except RuntimeError as err:
                if 'out of memory' in str(err):
                    raise
                first_error = first_error or err
                continue
            if multiple != self.pad_multiple:
                get_root_logger().info(f'basicsr-mh: the network needs inputs padded to a multiple of {multiple}; '
                                       'padding from now on.')
                self.pad_multiple = multiple
            return out
        raise ValueError(f'the network fails on a {tuple(x.shape[-2:])} input even when padded to a multiple of '
                         f'{PAD_CANDIDATES[-1]}: {first_error}')

    def _padded(self, x, multiple):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        if pad_h or pad_w:
            mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
            x = F.pad(x, (0, pad_w, 0, pad_h), mode)
        if self.with_scores:  # the logits travel as one more channel of each head through crops and tiles
            heads, scores = self.acceleration.run(self.net, x, self._compiled, 'infer', return_scores=True)
            out = torch.cat([final_output(heads, self.net), scores.unsqueeze(2)], dim=2)
        else:
            out = final_output(self.acceleration.run(self.net, x, self._compiled, 'infer'), self.net)
        scale_h, scale_w = out.shape[-2] // x.shape[-2], out.shape[-1] // x.shape[-1]
        return out[..., :h * max(scale_h, 1), :w * max(scale_w, 1)]

    @torch.no_grad()
    def __call__(self, x):
        """(B, C, H, W) -> (B, K', C_out, H', W') on the CPU, float32; with scores ``(heads, scores)``."""
        out = self._whole(x)
        if self.with_scores:
            return out[:, :, :-1], out[:, :, -1]
        return out

    def _whole(self, x):
        b, _, height, width = x.shape
        ys, xs = tile_starts(height, self.tile, self.overlap), tile_starts(width, self.tile, self.overlap)
        if len(ys) == 1 and len(xs) == 1:
            return self.forward_patch(x).float().cpu()
        th, tw = min(self.tile, height), min(self.tile, width)
        out = weight = None
        for y0 in ys:
            for x0 in xs:
                part = self.forward_patch(x[..., y0:y0 + th, x0:x0 + tw]).float().cpu()
                s = part.shape[-1] // tw
                if out is None:
                    out = torch.zeros(*part.shape[:3], height * s, width * s)
                    weight = torch.zeros(height * s, width * s)
                wy = blend_ramp(th * s, y0 * s, (y0 + th) * s, height * s, self.overlap * s)
                wx = blend_ramp(tw * s, x0 * s, (x0 + tw) * s, width * s, self.overlap * s)
                w2 = wy[:, None] * wx[None, :]
                out[..., y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += part * w2
                weight[y0 * s:(y0 + th) * s, x0 * s:(x0 + tw) * s] += w2
        return out / weight
