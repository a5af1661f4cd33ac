"""One inference runner for every caller: validation (``model.test()``), ``infer``, ``analyze`` and the demo.

:class:`InferenceRunner` pre-processes (pads to the size the backbone needs), tiles, runs the network in
minibatches, and post-processes (crops back, keeps the final stage, blends the tiles). Two tilings:

- :class:`GridTiling`: NAFNet/HINet's ``val.grids`` (the forks' ``grids()``): along an axis of length ``n`` with crop
  ``c``, ``(n - 1) // c + 1`` tiles with an adaptive step ``ceil((n - c) / (tiles - 1))`` (rounded down to a multiple
  of the scale), the last tile flush with the border; overlaps are averaged. Sizes are in output (ground-truth)
  pixels, so validation numbers equal the forks'.
- :class:`BlendedTiling`: ``--tile``/``--tile-overlap`` of ``infer``/``analyze``: square tiles with at least the
  overlap, blended with linear ramps (no seams).
"""
import math
import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger

from .acceleration import Acceleration

#: paddings tried in turn when ``find_padding`` is set and a forward fails at a size
PAD_CANDIDATES = (8, 16, 32, 64)
#: the ``val`` keys that give a ``grids`` tile size
CROP_KEYS = ('crop_size_h', 'crop_size_w', 'crop_size_h_ratio', 'crop_size_w_ratio', 'crop_size')


def final_output_index(net, num_outputs):
    """Position of the final restoration among a multi-stage backbone's outputs, in ``range(num_outputs)``
    (``final_output_index`` of the backbone class: MPRNet 0, HINet -1). ``net`` may be wrapped (DDP) or multi-head."""
    bare = getattr(net, 'module', net)
    backbone = getattr(bare, 'backbone', bare)
    return getattr(backbone, 'final_output_index', -1) % num_outputs


def final_output(out, net):
    """The final restoration of a network output (list for multi-stage backbones) as ``(B, K', C, H, W)``."""
    if isinstance(out, (list, tuple)):
        out = out[final_output_index(net, len(out))]
    return out if out.dim() == 5 else out.unsqueeze(1)


# ---------------------------------------------------------------------------------------------- tilings
def grid_positions(size, crop, scale=1):
    """Start offsets of the tiles along one axis (the forks' adaptive-step rule).

    Args:
        size (int): axis length (output pixels).
        crop (int): tile length (output pixels), ``<= size``.
        scale (int): steps are rounded down to a multiple of it.

    Returns:
        list[int]: increasing offsets; the first is 0, the last ``size - crop``.
    """
    num = (size - 1) // crop + 1
    step = crop if num == 1 else math.ceil((size - crop) / (num - 1) - 1e-8)
    step = max(step // scale * scale, scale)
    positions, i, last = [], 0, False
    while i < size and not last:
        if i + crop >= size:
            i, last = size - crop, True
        positions.append(i)
        i += step
    return positions


def _side(val_opt, key, size, fallback):
    if val_opt.get(f'crop_size_{key}') is not None:
        return int(val_opt[f'crop_size_{key}'])
    if val_opt.get(f'crop_size_{key}_ratio') is not None:
        return int(float(val_opt[f'crop_size_{key}_ratio']) * size)
    if val_opt.get('crop_size') is not None:
        return int(val_opt['crop_size'])
    return fallback


def grid_crop_size(val_opt, train_dataset_opt, height, width, scale=1):
    """Tile size ``(crop_h, crop_w)`` in output pixels for an output of ``height x width``.

    Read, per side, from ``val.crop_size_h`` / ``crop_size_w`` (NAFNet), ``val.crop_size_h_ratio`` /
    ``crop_size_w_ratio`` (fractions of the image), ``val.crop_size`` (HINet, square), else the training
    ``gt_size``. Clamped to the image and rounded down to a multiple of ``scale``.

    Raises:
        ValueError: no size is given anywhere.
    """
    fallback = (train_dataset_opt or {}).get('gt_size')
    crop_h, crop_w = _side(val_opt, 'h', height, fallback), _side(val_opt, 'w', width, fallback)
    if crop_h is None or crop_w is None:
        raise ValueError('val.grids is true but no tile size is set. Fix: set val.crop_size (or crop_size_h and '
                         'crop_size_w, or crop_size_h_ratio and crop_size_w_ratio), or datasets.train.gt_size.')
    crop_h = max(min(crop_h, height) // scale * scale, scale)
    crop_w = max(min(crop_w, width) // scale * scale, scale)
    return crop_h, crop_w


def check_grid_options(opt):
    """Fail early when ``val.grids`` is on without any tile size (see :func:`grid_crop_size`)."""
    val_opt = opt.get('val') or {}
    if not val_opt.get('grids'):
        return
    train_opt = (opt.get('datasets') or {}).get('train') or {}
    if all(val_opt.get(k) is None for k in CROP_KEYS) and train_opt.get('gt_size') is None:
        grid_crop_size(val_opt, train_opt, 1, 1)  # raises the error that names the keys


class GridTiling:
    """The forks' ``val.grids`` tiles (see the module docstring); overlaps are averaged.

    Args:
        val_opt (dict): the ``val`` options (tile size keys, :func:`grid_crop_size`).
        train_dataset_opt (dict | None): the training dataset options (``gt_size`` fallback).
        scale (int): output pixels per input pixel.
    """

    def __init__(self, val_opt, train_dataset_opt, scale=1):
        self.val_opt, self.train_dataset_opt, self.scale = val_opt, train_dataset_opt, int(scale)

    def windows(self, height, width):
        """Input windows ``[(y0, x0, th, tw), ...]`` for an input of ``height x width``, all of one size."""
        s = self.scale
        crop_h, crop_w = grid_crop_size(self.val_opt, self.train_dataset_opt, height * s, width * s, s)
        return [(i // s, j // s, crop_h // s, crop_w // s) for i in grid_positions(height * s, crop_h, s)
                for j in grid_positions(width * s, crop_w, s)]

    def weight(self, window, height, width, scale):
        """Blending weight of a tile's output: None (plain averaging)."""
        return None


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


class BlendedTiling:
    """Square tiles of ``tile`` input pixels overlapping by at least ``overlap``, blended with linear ramps.

    Raises:
        ValueError: ``overlap >= tile``, naming the CLI flags.
    """

    def __init__(self, tile, overlap=32):
        self.tile, self.overlap = int(tile), max(int(overlap or 0), 0)
        if self.overlap >= self.tile:
            raise ValueError(f'--tile-overlap ({self.overlap}) must be smaller than --tile ({self.tile}).')

    def windows(self, height, width):
        """Input windows ``[(y0, x0, th, tw), ...]`` for an input of ``height x width``, all of one size."""
        th, tw = min(self.tile, height), min(self.tile, width)
        return [(y0, x0, th, tw) for y0 in tile_starts(height, self.tile, self.overlap)
                for x0 in tile_starts(width, self.tile, self.overlap)]

    def weight(self, window, height, width, scale):
        """Blending weight ``(th * s, tw * s)`` of a tile's output (linear ramps at inner edges)."""
        y0, x0, th, tw = window
        s, overlap = scale, self.overlap * scale
        wy = blend_ramp(th * s, y0 * s, (y0 + th) * s, height * s, overlap)
        wx = blend_ramp(tw * s, x0 * s, (x0 + tw) * s, width * s, overlap)
        return wy[:, None] * wx[None, :]


# ---------------------------------------------------------------------------------------------- the runner
class InferenceRunner:
    """Apply a (multi-head) network to whole images: pad, tile, run in minibatches, crop, blend.

    Args:
        net (nn.Module): a :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` or a plain backbone (possibly
            DDP-wrapped); the caller sets eval mode.
        pad_multiple (int | None): reflect-pad every forward input to a multiple of this (Restormer:
            ``val.window_size``; replicate where the image is too small to reflect).
        find_padding (bool): when a forward fails at a size, try paddings of 8, 16, 32, 64 in turn and keep the
            first that works (``infer``/``analyze`` on arbitrary images).
        tiling (GridTiling | BlendedTiling | None): how to cut large images; None: whole images.
        max_minibatch (int | None): at most this many images (or tiles) per forward; None: all at once.
        with_scores (bool): also return the score branch's per-pixel logits (``head_scores``), padded, tiled and
            blended as the heads.
        out_device (torch.device | str | None): where the result is assembled (None: the network's device).
        acceleration (Acceleration | None): autocast, channels_last and compile for the forward passes
            (:class:`basicsr_mh.acceleration.Acceleration`; the outputs are FP32 either way); None: eager FP32.
        compiled (dict | None): the cache of compiled forwards to use (a model keeps one across validations).
        where (str): the option named when a compile falls back to eager.

    ``runner(x)``: ``x`` (B, C, H, W) (moved to the network's device minibatch by minibatch) -> heads
    (B, K', C_out, H * s, W * s) (K' = 1 for a plain network; the final stage of multi-stage backbones); with
    ``with_scores`` a tuple ``(heads, scores (B, K', H * s, W * s))``.
    """

    def __init__(self,
                 net,
                 pad_multiple=None,
                 find_padding=False,
                 tiling=None,
                 max_minibatch=None,
                 with_scores=False,
                 out_device=None,
                 acceleration=None,
                 compiled=None,
                 where='val.compile'):
        self.net = net
        self.device = next(iter(net.parameters()), torch.empty(0)).device
        self.acceleration = acceleration or Acceleration(device_type=self.device.type)
        self.compiled = {} if compiled is None else compiled
        self.where = where
        self.pad_multiple = int(pad_multiple or 1)
        self.find_padding = bool(find_padding)
        self.tiling = tiling
        self.max_minibatch = int(max_minibatch or 0)
        self.with_scores = bool(with_scores)
        self.out_device = None if out_device is None else torch.device(out_device)

    @classmethod
    def for_images(cls, net, device='cpu', tile=0, overlap=32, pad_multiple=None, with_scores=False, acceleration=None):
        """The runner of ``infer`` and ``analyze``: ``net`` moved to ``device`` in eval mode (channels_last when
        ``acceleration`` says so), the padding found when a size fails, ``tile > 0`` blended tiles of ``tile`` input
        pixels, one image (or tile) per forward, results as float32 on the CPU."""
        tiling = BlendedTiling(tile, overlap) if tile and int(tile) > 0 else None
        net = net.to(torch.device(device)).eval()
        if acceleration is not None:
            net = acceleration.prepare_network(net)
        return cls(net, pad_multiple, True, tiling, 1, with_scores, 'cpu', acceleration, where='infer')

    @torch.no_grad()
    def __call__(self, x):
        height, width = x.shape[-2:]
        windows = self.tiling.windows(height, width) if self.tiling is not None else [(0, 0, height, width)]
        if len(windows) == 1 and windows[0] == (0, 0, height, width):
            out = self._forward(x)
        else:
            out = self._tiled(x, windows)
        if self.with_scores:
            return out[:, :, :-1], out[:, :, -1]
        return out

    def _tiled(self, x, windows):
        height, width = x.shape[-2:]
        batch = x.shape[0]
        tiles = torch.cat([x[..., y0:y0 + th, x0:x0 + tw] for y0, x0, th, tw in windows], dim=0)
        parts = self._forward(tiles)
        th, tw = windows[0][2:]
        s = parts.shape[-1] // tw
        merged = parts.new_zeros((batch, *parts.shape[1:-2], height * s, width * s))
        total = parts.new_zeros((height * s, width * s))
        for t, window in enumerate(windows):
            y0, x0 = window[0] * s, window[1] * s
            part = parts[t * batch:(t + 1) * batch]
            weight = self.tiling.weight(window, height, width, s)
            if weight is None:
                merged[..., y0:y0 + th * s, x0:x0 + tw * s] += part
                total[y0:y0 + th * s, x0:x0 + tw * s] += 1
            else:
                weight = weight.to(parts)
                merged[..., y0:y0 + th * s, x0:x0 + tw * s] += part * weight
                total[y0:y0 + th * s, x0:x0 + tw * s] += weight
        return merged / total

    def _forward(self, x):
        """``x`` (N, C, h, w) in minibatches -> (N, K', C_out[+1], h * s, w * s), each minibatch moved to the
        network's device and its output to ``out_device`` (float32 there) as soon as it is done."""
        step = self.max_minibatch or x.shape[0]
        outs = []
        for start in range(0, x.shape[0], step):
            out = self._forward_padded(x[start:start + step].to(self.device))
            outs.append(out if self.out_device is None else out.to(self.out_device, torch.float32))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def _forward_padded(self, x):
        if not self.find_padding:
            return self._padded(x, self.pad_multiple)
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
            heads, scores = self.acceleration.run(self.net, x, self.compiled, self.where, return_scores=True)
            out = torch.cat([final_output(heads, self.net), scores.unsqueeze(2)], dim=2)
        else:
            out = final_output(self.acceleration.run(self.net, x, self.compiled, self.where), self.net)
        scale_h, scale_w = out.shape[-2] // x.shape[-2], out.shape[-1] // x.shape[-1]
        return out[..., :h * max(scale_h, 1), :w * max(scale_w, 1)]
