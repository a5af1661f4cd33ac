"""Small building blocks shared by the architectures of :mod:`basicsr_mh.archs`.

Shapes use ``N`` for the batch size, ``C`` for channels and ``H``, ``W`` for the spatial size.
"""
import torch
from torch import nn as nn
from torch.autograd.function import once_differentiable


class LayerNorm2dFunction(torch.autograd.Function):
    """Channel layer norm of ``(N, C, H, W)`` with a written-out backward pass (see :class:`LayerNorm2d`).

    With ``y = (x - mean_C x) * r``, ``r = 1 / sqrt(var_C x + eps)`` and ``g = grad_out * weight``::

        grad_x = r * (g - mean_C g - y * mean_C(g * y)),  grad_weight = sum_NHW(grad_out * y),
        grad_bias = sum_NHW(grad_out)

    Saved for backward: ``y`` (N, C, H, W), ``r`` (N, 1, H, W) and ``weight``. Differentiable once (as NAFNet's).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        mean = x.mean(1, keepdim=True)
        centered = x - mean
        var = centered.pow(2).mean(1, keepdim=True)
        std = (var + eps).sqrt()
        y = centered / std
        ctx.save_for_backward(y, std.reciprocal(), weight)
        return weight.view(1, channels, 1, 1) * y + bias.view(1, channels, 1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        y, inv_std, weight = ctx.saved_tensors
        channels = grad_out.shape[1]
        g = grad_out * weight.view(1, channels, 1, 1)
        grad_x = inv_std * (g - g.mean(1, keepdim=True) - y * (g * y).mean(1, keepdim=True))
        grad_weight = (grad_out * y).sum(dim=(0, 2, 3))
        grad_bias = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


class LayerNorm2d(nn.Module):
    """Layer normalization over the channel dimension of an ``NCHW`` tensor, as used by NAFNet.

    Each pixel ``x[n, :, h, w]`` is normalized with the mean and the biased variance of its ``C`` values, then scaled
    and shifted per channel::

        y = weight * (x - mean_C(x)) / sqrt(var_C(x) + eps) + bias

    The forward pass uses NAFNet's sequence of operations (so the values are the same). The backward pass is written
    out (:class:`LayerNorm2dFunction`), so only the normalized tensor and the per-pixel ``1 / std`` are kept for it
    instead of the several full-size intermediates autograd would keep (a width-16 NAFNet at 2 x 128²: 127 MiB of
    tensors saved for backward instead of 159 MiB).

    Args:
        channels (int): Number of channels ``C``.
        eps (float): Added to the variance before the square root. Default: 1e-6.

    Attributes:
        weight (nn.Parameter): Per-channel scale, shape ``(C,)``, initialized to ones.
        bias (nn.Parameter): Per-channel shift, shape ``(C,)``, initialized to zeros.

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: ``(N, C, H, W)``, same dtype as the input.
    """

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        """Normalize ``x`` over its channels.

        Args:
            x (Tensor): Input of shape ``(N, C, H, W)``.

        Returns:
            Tensor: Normalized, scaled and shifted tensor of shape ``(N, C, H, W)``.
        """
        return LayerNorm2dFunction.apply(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f'{self.weight.shape[0]}, eps={self.eps}'


class SimpleGate(nn.Module):
    """NAFNet's SimpleGate: split the channels into two halves and multiply them elementwise.

    Shape:
        - Input: ``(N, 2C, H, W)`` (the channel count must be even).
        - Output: ``(N, C, H, W)``, equal to ``x[:, :C] * x[:, C:]``.
    """

    def forward(self, x):
        """Gate the first half of the channels with the second half.

        Args:
            x (Tensor): Input of shape ``(N, 2C, H, W)``.

        Returns:
            Tensor: Output of shape ``(N, C, H, W)``.
        """
        first, second = x.chunk(2, dim=1)
        return first * second
