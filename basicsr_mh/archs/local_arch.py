"""Test-time local statistics (TLC) for BasicSR backbones, and :class:`NAFNetLocal`.

Reference: X. Chu, L. Chen, C. Chen and X. Lu, "Improving Image Restoration by Revisiting Global Information
Aggregation" (TLC), ECCV 2022 (arXiv:2112.04491).

A network trained on crops of ``train_size`` and tested on full-size images sees, in each global average pooling,
statistics of a much larger region than in training. TLC replaces each ``nn.AdaptiveAvgPool2d(1)`` by a local average
pooling (:class:`LocalAvgPool2d`): a box filter of stride 1 whose kernel is the pooled feature map's size at training
time times ``base_size / train_size``, with ``base_size = (int(1.5 * H_train), int(1.5 * W_train))``. The kernel of
each pooling layer is fixed once, by a pass at ``train_size`` (:meth:`LocalBase.convert`); at test time each output
pixel gets the mean of the kernel-sized window around it, and where the feature map is no larger than the kernel the
pooling stays global. The arithmetic (integral image, window placement, replicate padding of the border, the optional
``fast_imp`` approximation) follows the published ``local_arch.py`` of megvii-research/NAFNet, so ``NAFNetLocal``
gives the published ``NAFNetLocal`` outputs and loads its checkpoints (the parameters are NAFNet's).
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn as nn
from torch.nn import functional as F

from .nafnet_arch import NAFNet

__all__ = ['LocalAvgPool2d', 'LocalBase', 'NAFNetLocal', 'replace_global_pooling', 'local_base_size']


def local_base_size(train_size):
    """The TLC window at input scale for a training size: ``(int(1.5 * H), int(1.5 * W))``.

    Args:
        train_size (Sequence[int]): ``(N, C, H, W)`` of the training crops.

    Returns:
        tuple[int, int]: ``base_size``.
    """
    _, _, h, w = train_size
    return int(h * 1.5), int(w * 1.5)


class LocalAvgPool2d(nn.Module):
    """Local average pooling of TLC, a drop-in replacement for ``nn.AdaptiveAvgPool2d(1)``.

    The kernel ``(k_h, k_w)`` is either given, or derived at the first forward pass (the conversion pass at the
    training size ``(H_t, W_t)``) from that pass's feature map ``(h_t, w_t)`` as
    ``k_h = h_t * base_size[0] // H_t`` and ``k_w = w_t * base_size[1] // W_t``; it is fixed from then on.

    Forward, for ``x`` of shape ``(N, C, h, w)``:

    - ``k_h >= h`` and ``k_w >= w``: the global mean, shape ``(N, C, 1, 1)`` (as ``nn.AdaptiveAvgPool2d(1)``).
    - otherwise (``fast_imp=False``): the mean over every window of size ``(min(h, k_h), min(w, k_w))`` that lies
      inside ``x`` (stride 1, computed from an integral image in O(1) per pixel), shape
      ``(N, C, h - k_h' + 1, w - k_w' + 1)``, replicate-padded back to ``(N, C, h, w)`` (``auto_pad``; the smaller
      half of the padding goes to the top/left).
    - ``fast_imp=True``: the published faster approximation: ``x`` is subsampled with strides ``(r_h, r_w)`` (the
      largest of 5, 4, 3, 2, 1 that divides the size, at most ``5 * h_t // H_t``), box-averaged with a window of
      ``k // r`` samples (windows start one sample after their anchor, as published), upsampled by nearest
      neighbour and replicate-padded. Where that window would be empty (a subsampled side of 1) the exact pooling
      is used instead.

    The operation is differentiable (cumulative sums, slicing, padding).

    Args:
        kernel_size (Sequence[int] | None): fixed kernel ``(k_h, k_w)``; None derives it from ``base_size``.
        base_size (int | Sequence[int] | None): TLC window at input scale, e.g. ``(384, 384)`` for 256x256 crops.
        auto_pad (bool): replicate-pad the output back to the input size. Default: True.
        fast_imp (bool): use the subsampled approximation. Default: False.
        train_size (Sequence[int] | None): ``(N, C, H, W)`` of the training crops.

    Shape:
        - Input: ``(N, C, h, w)``.
        - Output: ``(N, C, 1, 1)`` (global case) or ``(N, C, h, w)`` (``auto_pad``).
    """

    def __init__(self, kernel_size=None, base_size=None, auto_pad=True, fast_imp=False, train_size=None):
        super().__init__()
        if kernel_size is None and base_size is None:
            raise ValueError('LocalAvgPool2d needs a kernel_size or a base_size (with train_size).')
        if kernel_size is None and train_size is None:
            raise ValueError('LocalAvgPool2d: a base_size needs the train_size (N, C, H, W) it refers to.')
        self.kernel_size = None if kernel_size is None else _pair(kernel_size)
        self.base_size = None if base_size is None else _pair(base_size)
        self.train_size = None if train_size is None else tuple(int(v) for v in train_size)
        self.auto_pad = auto_pad
        self.fast_imp = fast_imp
        # subsampling strides of the fast implementation, tried in this order
        self.rs = (5, 4, 3, 2, 1)
        self.max_r1 = self.rs[0]
        self.max_r2 = self.rs[0]

    def extra_repr(self):
        return (f'kernel_size={self.kernel_size}, base_size={self.base_size}, train_size={self.train_size}, '
                f'fast_imp={self.fast_imp}')

    def set_kernel_from(self, height, width):
        """Fix the kernel from the feature size ``(height, width)`` seen at the training size."""
        train_h, train_w = self.train_size[-2], self.train_size[-1]
        self.kernel_size = (height * self.base_size[0] // train_h, width * self.base_size[1] // train_w)
        self.max_r1 = max(1, self.rs[0] * height // train_h)
        self.max_r2 = max(1, self.rs[0] * width // train_w)

    def forward(self, x):
        """Average ``x`` (N, C, h, w) locally; returns (N, C, 1, 1) or (N, C, h, w), see the class docstring."""
        if self.kernel_size is None:
            self.set_kernel_from(x.shape[-2], x.shape[-1])
        h, w = x.shape[-2:]
        k_h, k_w = self.kernel_size
        if k_h >= h and k_w >= w:
            return F.adaptive_avg_pool2d(x, 1)
        out = self._fast(x) if self.fast_imp else None
        if out is None:
            out = box_mean(x, min(h, k_h), min(w, k_w))
        if self.auto_pad:
            out = replicate_pad_to(out, h, w)
        return out

    def _fast(self, x):
        """The published subsampled approximation, or None where its window would be empty."""
        h, w = x.shape[-2:]
        r1 = min(self.max_r1, next(r for r in self.rs if h % r == 0))
        r2 = min(self.max_r2, next(r for r in self.rs if w % r == 0))
        s = x[:, :, ::r1, ::r2].cumsum(dim=-1).cumsum(dim=-2)
        sh, sw = s.shape[-2:]
        k1, k2 = min(sh - 1, self.kernel_size[0] // r1), min(sw - 1, self.kernel_size[1] // r2)
        if k1 < 1 or k2 < 1:
            return None
        out = (s[:, :, :-k1, :-k2] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2] + s[:, :, k1:, k2:]) / (k1 * k2)
        return F.interpolate(out, scale_factor=(r1, r2))


def _pair(value):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f'expected an int or a pair of ints, got {value!r}')
    return value


def box_mean(x, k_h, k_w):
    """Mean of every ``(k_h, k_w)`` window inside ``x`` (stride 1), from an integral image.

    Args:
        x (Tensor): ``(N, C, h, w)``.
        k_h (int): window height, ``1 <= k_h <= h``.
        k_w (int): window width, ``1 <= k_w <= w``.

    Returns:
        Tensor: ``(N, C, h - k_h + 1, w - k_w + 1)``; element ``[i, j]`` is the mean of
        ``x[..., i:i + k_h, j:j + k_w]``.
    """
    s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
    # the published order of the four corner terms (the same float rounding)
    out = s[:, :, k_h:, k_w:] + s[:, :, :-k_h, :-k_w] - s[:, :, :-k_h, k_w:] - s[:, :, k_h:, :-k_w]
    return out / (k_h * k_w)


def replicate_pad_to(out, h, w):
    """Replicate-pad ``out`` (N, C, h', w') to (N, C, h, w): ``(h - h') // 2`` rows on top, the rest at the bottom."""
    oh, ow = out.shape[-2:]
    if (oh, ow) == (h, w):
        return out
    pad = ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2)
    return F.pad(out, pad, mode='replicate')


def replace_global_pooling(module, base_size, train_size, fast_imp=False):
    """Replace, recursively and in place, every ``nn.AdaptiveAvgPool2d(1)`` of ``module`` by a :class:`LocalAvgPool2d`.

    Other adaptive poolings (output sizes other than 1) are left alone.

    Args:
        module (nn.Module): the network.
        base_size (Sequence[int]): TLC window at input scale.
        train_size (Sequence[int]): ``(N, C, H, W)`` of the training crops.
        fast_imp (bool): use the subsampled approximation.

    Returns:
        int: the number of replaced layers.
    """
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
            setattr(module, name, LocalAvgPool2d(base_size=base_size, fast_imp=fast_imp, train_size=train_size))
            count += 1
        else:
            count += replace_global_pooling(child, base_size, train_size, fast_imp)
    return count


class LocalBase:
    """Mixin that turns a network's global average poolings into TLC local poolings (published ``Local_Base``).

    Mix it into a network class (``class NAFNetLocal(LocalBase, NAFNet)``) and call :meth:`convert` at the end of
    ``__init__``.
    """

    def convert(self, base_size, train_size, fast_imp=False):
        """Replace the global poolings and fix their kernels by a pass at ``train_size``.

        The pass only needs the feature sizes: it runs on the meta device (no arithmetic) when the network allows it,
        and on a zero input otherwise. The training mode is kept.

        Args:
            base_size (Sequence[int]): TLC window at input scale (:func:`local_base_size`).
            train_size (Sequence[int]): ``(N, C, H, W)`` of the training crops.
            fast_imp (bool): use the subsampled approximation.
        """
        train_size = tuple(int(v) for v in train_size)
        if len(train_size) != 4:
            raise ValueError(f'train_size must be (N, C, H, W), got {train_size!r}')
        if not replace_global_pooling(self, base_size, train_size, fast_imp):
            return
        was_training = self.training
        self.eval()
        try:
            _shape_pass(self, train_size)
        finally:
            self.train(was_training)


@torch.no_grad()
def _shape_pass(net, train_size):
    """Run ``net`` once at ``train_size`` so that every :class:`LocalAvgPool2d` fixes its kernel."""
    ref = next(iter(net.parameters()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    pools = [m for m in net.modules() if isinstance(m, LocalAvgPool2d) and m.kernel_size is None]
    try:
        tensors = {name: torch.empty_like(t, device='meta') for name, t in net.state_dict(keep_vars=True).items()}
        torch.func.functional_call(net, tensors, (torch.empty(train_size, dtype=dtype, device='meta'), ), strict=False)
    except Exception:  # an op without a meta kernel: do the pass for real
        for pool in pools:
            pool.kernel_size = None
        device = ref.device if ref is not None else None
        net(torch.zeros(train_size, dtype=dtype, device=device))


@ARCH_REGISTRY.register()
class NAFNetLocal(LocalBase, NAFNet):
    """NAFNet with TLC local pooling in its simplified channel attention, for testing at sizes above the crop size.

    Same arguments, parameters and ``state_dict`` keys as :class:`~basicsr_mh.archs.nafnet_arch.NAFNet` (checkpoints
    of either load into the other), plus:

    Args:
        train_size (Sequence[int]): ``(N, C, H, W)`` of the training crops. Default: ``(1, 3, 256, 256)``.
        fast_imp (bool): the published faster, approximate pooling. Default: False.

    As long as every pooled feature map is no larger than its kernel (inputs up to about ``1.5 * train_size`` in
    both dimensions, ``train_size`` itself included) the outputs are exactly NAFNet's (every pooling is still global);
    larger inputs use local statistics.

    Shape:
        - Input: ``(N, img_channel, H, W)``.
        - Output: ``(N, img_channel, H, W)``.
    """

    def __init__(self, *args, train_size=(1, 3, 256, 256), fast_imp=False, **kwargs):
        NAFNet.__init__(self, *args, **kwargs)
        self.convert(base_size=local_base_size(train_size), train_size=train_size, fast_imp=fast_imp)
