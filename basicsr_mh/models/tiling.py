"""NAFNet/HINet ``val.grids`` tiling: run the network on overlapping crops, average the overlaps back together.

Tile positions follow the forks' ``grids()``: along an axis of length ``n`` with crop ``c``, ``(n - 1) // c + 1``
tiles with an adaptive step ``ceil((n - c) / (tiles - 1))`` (rounded down to a multiple of the scale), the last tile
flush with the border. Sizes and positions are in output (ground-truth) pixels; the input is cut at ``// scale``.
The merge works for any output layout ``(N, ..., H, W)``: plain ``(N, C, H, W)`` and multi-head
``(N, K', C, H, W)`` alike (every head is merged on its own).
"""
import math
import torch

CROP_KEYS = ('crop_size_h', 'crop_size_w', 'crop_size_h_ratio', 'crop_size_w_ratio', 'crop_size')


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


def split_tiles(lq, crop_h, crop_w, scale=1):
    """Cut ``lq`` (B, C, h, w) into tiles; sizes in output pixels (``h * scale`` x ``w * scale``).

    Returns:
        tuple(Tensor, list[tuple[int, int]]): tiles ``(T * B, C, crop_h // scale, crop_w // scale)``, tile-major
        (tile t of sample b at ``t * B + b``), and the ``(i, j)`` output offset of each tile.
    """
    height, width = lq.shape[-2] * scale, lq.shape[-1] * scale
    parts, offsets = [], []
    for i in grid_positions(height, crop_h, scale):
        for j in grid_positions(width, crop_w, scale):
            parts.append(lq[..., i // scale:(i + crop_h) // scale, j // scale:(j + crop_w) // scale])
            offsets.append((i, j))
    return torch.cat(parts, dim=0), offsets


def merge_tiles(outputs, offsets, batch, height, width):
    """Average tile outputs back into whole images.

    Args:
        outputs (Tensor): ``(T * B, ..., crop_h, crop_w)`` in the order of :func:`split_tiles`.
        offsets (list[tuple[int, int]]): the T tile offsets.
        batch (int): B.
        height (int), width (int): output size.

    Returns:
        Tensor: ``(B, ..., height, width)`` on the outputs' device.
    """
    crop_h, crop_w = outputs.shape[-2:]
    tiles = outputs.reshape(len(offsets), batch, *outputs.shape[1:])
    merged = outputs.new_zeros((batch, *outputs.shape[1:-2], height, width))
    count = outputs.new_zeros((height, width))
    for t, (i, j) in enumerate(offsets):
        merged[..., i:i + crop_h, j:j + crop_w] += tiles[t]
        count[i:i + crop_h, j:j + crop_w] += 1
    return merged / count
