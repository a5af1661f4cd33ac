"""Every figure basicsr-mh draws (matplotlib, Agg): the paper's Fig. 3 / Fig. 4 maps with colour bars, the Fig. 6
matrix, bar charts, validation curves with the input's level as a line, and crop comparisons with per-crop PSNR.

Used by ``basicsr-mh analyze`` and ``basicsr-mh demo``; images are RGB uint8 (H, W, 3) unless said otherwise.
"""
import numpy as np
import torch

#: Colour maps: Fig. 3 (summed absolute differences, >= 0) and Fig. 4 (signed difference of two heads).
RESIDUAL_CMAP, SIGNED_CMAP = 'inferno', 'RdBu_r'


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def to_uint8(tensor):
    """float (3, H, W) RGB in [0, 1] -> uint8 (H, W, 3) RGB, rounded as BasicSR's ``tensor2img``."""
    return (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.).round().astype(np.uint8)


def colorize(values, cmap, vmin, vmax):
    """(H, W) float array -> (H, W, 3) uint8 **BGR** image through a matplotlib colour map (exact size, for cv2)."""
    import matplotlib
    norm = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    rgb = matplotlib.colormaps[cmap](norm)[..., :3]
    return np.ascontiguousarray((rgb[..., ::-1] * 255).round().astype(np.uint8))


def residual_map(base):
    """Paper Fig. 3: (K, C, H, W) base heads -> (H, W) float64 ``sum_{i<j} mean_c |h_i - h_j|``."""
    total = torch.zeros(base.shape[-2:], dtype=torch.float64)
    for i in range(base.shape[0]):
        for j in range(i):
            total += (base[i] - base[j]).abs().double().mean(dim=0)
    return total


def signed_difference(base, pair):
    """Paper Fig. 4: (K, C, H, W) base heads and a pair (i, j) -> (H, W) float64 ``mean_c (h_i - h_j)``."""
    i, j = pair
    return (base[i] - base[j]).double().mean(dim=0)


def most_different_pair(base):
    """The pair (i, j), i > j, of base heads (K, C, H, W) with the largest summed absolute difference."""
    best, pair = -1.0, (1, 0)
    for i in range(base.shape[0]):
        for j in range(i):
            value = float((base[i] - base[j]).abs().sum())
            if value > best:
                best, pair = value, (i, j)
    return pair


def plot_matrix(path, matrix, title):
    """Fig. 6: the K x K matrix (numpy) with its values in the cells and a colour bar, written to ``path``."""
    plt = pyplot()
    k = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * k, 1.0 + 0.8 * k), dpi=100)
    finite = matrix[np.isfinite(matrix)]
    image = ax.imshow(
        matrix, cmap='viridis', vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    middle = (float(finite.min()) + float(finite.max())) / 2 if finite.size else 0.0
    for i in range(k):
        for j in range(k):
            color = 'black' if matrix[i, j] > middle else 'white'
            ax.text(j, i, f'{matrix[i, j]:.2f}', ha='center', va='center', fontsize=8, color=color)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel('head j')
    ax.set_ylabel('head i')
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bars(path, labels, values, title, ylabel):
    """A bar chart of ``values`` (one per label), written to ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 1.5), 3.2), dpi=100)
    ax.bar(range(len(values)), values, color='tab:blue')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(path, series, title, xlabel, ylabel, levels=()):
    """Line plot: ``series`` = [(label, xs, ys), ...]; ``levels`` = [(label, y), ...] drawn as dashed horizontal
    lines (e.g. the blurry input's PSNR). Written to ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=100)
    for label, xs, ys in series:
        ax.plot(xs, ys, marker='o', markersize=3, label=label)
    for n, (label, y) in enumerate(levels):
        ax.axhline(y, linestyle='--', color=f'C{len(series) + n}', label=label)
    ax.ticklabel_format(axis='y', useOffset=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def strongest_blur_window(gt, lq, size):
    """(top, left) of the ``size`` x ``size`` window where the blurry ``lq`` differs most from ``gt`` (both
    (C, H, W) tensors): where deblurring has the most to show. The window is clipped to the image."""
    diff = (gt.double() - lq.double()).abs().mean(dim=0)[None, None]
    height, width = diff.shape[-2:]
    size = min(size, height, width)
    stride = max(1, size // 4)
    sums = torch.nn.functional.avg_pool2d(diff, size, stride=stride)[0, 0]
    row, col = divmod(int(torch.argmax(sums)), sums.shape[1])
    return min(row * stride, height - size), min(col * stride, width - size)


def plot_comparison(path, panels, maps=(), title=None):
    """One row of image panels and colour-mapped maps with colour bars, written to ``path``.

    Args:
        panels (list): [(label, uint8 (H, W, 3) RGB), ...] shown as they are (nearest-neighbour zoom).
        maps (list): [(label, (H, W) float array, cmap, vmin, vmax), ...] each with its colour bar.
        title (str | None): figure title.
    """
    plt = pyplot()
    count = len(panels) + len(maps)
    fig, axes = plt.subplots(1, count, figsize=(2.6 * count, 3.0), dpi=110, squeeze=False)
    for ax, (label, img) in zip(axes[0], panels):
        ax.imshow(img, interpolation='nearest')
        ax.set_title(label, fontsize=8)
        ax.axis('off')
    for ax, (label, values, cmap, vmin, vmax) in zip(axes[0][len(panels):], maps):
        image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation='nearest')
        ax.set_title(label, fontsize=8)
        ax.axis('off')
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
