"""Small building blocks shared by the architectures of :mod:`basicsr_mh.archs`.

Shapes use ``N`` for the batch size, ``C`` for channels and ``H``, ``W`` for the spatial size.
"""
import torch
from torch import nn as nn


class LayerNorm2d(nn.Module):
    """Layer normalization over the channel dimension of an ``NCHW`` tensor, as used by NAFNet.

    Each pixel ``x[n, :, h, w]`` is normalized with the mean and the biased variance of its ``C`` values, then scaled
    and shifted per channel::

        y = weight * (x - mean_C(x)) / sqrt(var_C(x) + eps) + bias

    NAFNet computes this in a custom ``torch.autograd.Function`` with a hand-written backward pass. Here the forward
    pass uses the same sequence of operations (so the values are the same) and autograd derives the gradients.

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
        channels = x.shape[1]
        mean = x.mean(1, keepdim=True)
        centered = x - mean
        var = centered.pow(2).mean(1, keepdim=True)
        y = centered / (var + self.eps).sqrt()
        return self.weight.view(1, channels, 1, 1) * y + self.bias.view(1, channels, 1, 1)

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
