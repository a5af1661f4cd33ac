"""NAFNet, the nonlinear-activation-free baseline for image restoration, for BasicSR.

Reference: L. Chen, X. Chu, X. Zhang and J. Sun, "Simple Baselines for Image Restoration", ECCV 2022
(arXiv:2204.04676).

Module and parameter names follow the published implementation, so its checkpoints (for example
``NAFNet-GoPro-width32.pth`` and ``NAFNet-GoPro-width64.pth``) load with ``strict=True``.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn as nn
from torch.nn import functional as F

from ..heads import HeadLayout
from .arch_util import LayerNorm2d, SimpleGate


class NAFBlock(nn.Module):
    """NAFNet's basic block: a gated depthwise-conv branch with simplified channel attention, then a gated FFN.

    Both branches are residual and scaled by learnable per-channel factors (``beta`` and ``gamma``), which start at
    zero, so a freshly built block is the identity.

    Args:
        c (int): Number of input and output channels.
        DW_Expand (int): Channel expansion of the depthwise-conv branch. Default: 2.
        FFN_Expand (int): Channel expansion of the feed-forward branch. Default: 2.
        drop_out_rate (float): Dropout rate after each branch; ``nn.Identity`` is used when it is 0. Default: 0.

    Shape:
        - Input: ``(N, c, H, W)``.
        - Output: ``(N, c, H, W)``.
    """

    def __init__(self, c, DW_Expand=2, FFN_Expand=2, drop_out_rate=0.):  # noqa: N803 (published argument names)
        super().__init__()
        dw_channel = c * DW_Expand
        ffn_channel = c * FFN_Expand

        # depthwise-conv branch: 1x1 expand, 3x3 depthwise, SimpleGate (halves channels), attention, 1x1 project
        self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, stride=1, groups=dw_channel, bias=True)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
        # simplified channel attention; the pooling stays a real nn.AdaptiveAvgPool2d module so that test-time local
        # converters (TLC) can swap it for a local average pooling
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw_channel // 2, dw_channel // 2, kernel_size=1, padding=0, stride=1, groups=1, bias=True),
        )
        self.sg = SimpleGate()

        # feed-forward branch: 1x1 expand, SimpleGate, 1x1 project
        self.conv4 = nn.Conv2d(c, ffn_channel, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, kernel_size=1, padding=0, stride=1, groups=1, bias=True)

        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)

        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0. else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0. else nn.Identity()

        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)), requires_grad=True)
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)), requires_grad=True)

    def forward(self, inp):
        """Apply the block.

        Args:
            inp (Tensor): Features of shape ``(N, c, H, W)``.

        Returns:
            Tensor: Features of shape ``(N, c, H, W)``.
        """
        x = self.norm1(inp)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.sg(x)
        x = x * self.sca(x)
        x = self.conv3(x)
        x = self.dropout1(x)
        y = inp + x * self.beta

        x = self.conv4(self.norm2(y))
        x = self.sg(x)
        x = self.conv5(x)
        x = self.dropout2(x)
        return y + x * self.gamma


@ARCH_REGISTRY.register()
class NAFNet(nn.Module):
    """NAFNet: a U-shaped network of NAFBlocks with a global residual connection.

    The input is zero-padded on the right and bottom to a multiple of ``2 ** len(enc_blk_nums)``. A 3x3 conv
    (``intro``) maps it to ``width`` channels; each encoder stage runs its blocks, keeps a skip and halves the
    resolution while doubling the channels with a strided 2x2 conv (``downs``); the middle blocks follow; each decoder
    stage doubles the resolution with a 1x1 conv and PixelShuffle (``ups``), adds the matching skip and runs its blocks.
    A 3x3 conv (``ending``) maps back to ``img_channel`` channels and the (padded) input is added; the result is
    cropped to the input size.

    The configurations of the paper are, for GoPro, ``width=32`` or ``width=64`` with ``enc_blk_nums=[1, 1, 1, 28]``,
    ``middle_blk_num=1`` and ``dec_blk_nums=[1, 1, 1, 1]``.

    Args:
        img_channel (int): Channels of the input and output images. Default: 3.
        width (int): Channels after ``intro``; doubled at each encoder stage. Default: 16.
        middle_blk_num (int): Number of NAFBlocks at the lowest resolution. Default: 1.
        enc_blk_nums (Sequence[int]): Number of NAFBlocks in each encoder stage. Default: no encoder stage.
        dec_blk_nums (Sequence[int]): Number of NAFBlocks in each decoder stage; it should have the same length as
            ``enc_blk_nums``. Default: no decoder stage.

    Shape:
        - Input: ``(N, img_channel, H, W)``, any ``H, W >= 1``.
        - Output: ``(N, img_channel, H, W)``.
    """

    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
        super().__init__()
        # the attributes are created in the published order, so that state_dict keys come in the checkpoints' order
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, groups=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, stride=1, groups=1, bias=True)

        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = nn.Sequential()  # placeholder that fixes the key order; filled below
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()

        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, chan * 2, kernel_size=2, stride=2))
            chan *= 2

        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])

        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, kernel_size=1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))

        self.padder_size = 2**len(self.encoders)

    def multihead_layout(self):
        """Where :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` grows heads (found by its probe otherwise):
        ``ending``, followed by the global residual and the crop."""
        return HeadLayout(outputs=((0, 'ending', 1.0, True), ))

    def forward(self, inp):
        """Restore an image.

        Args:
            inp (Tensor): Degraded image of shape ``(N, img_channel, H, W)``.

        Returns:
            Tensor: Restored image of shape ``(N, img_channel, H, W)``.
        """
        _, _, H, W = inp.shape
        inp = self.check_image_size(inp)

        x = self.intro(inp)

        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)

        x = self.middle_blks(x)

        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1]):
            x = up(x)
            x = x + skip
            x = decoder(x)

        # keep the tail additive after ``ending`` (multi-head wrappers rely on it)
        x = self.ending(x)
        x = x + inp
        return x[:, :, :H, :W]

    def check_image_size(self, x):
        """Zero-pad ``x`` on the right and bottom so that ``H`` and ``W`` are multiples of ``self.padder_size``.

        Args:
            x (Tensor): Tensor of shape ``(N, C, H, W)``.

        Returns:
            Tensor: Tensor of shape ``(N, C, H', W')`` with ``H' = ceil(H / p) * p`` and ``W' = ceil(W / p) * p``,
            ``p = self.padder_size``.
        """
        _, _, h, w = x.shape
        mod_pad_h = (self.padder_size - h % self.padder_size) % self.padder_size
        mod_pad_w = (self.padder_size - w % self.padder_size) % self.padder_size
        return F.pad(x, (0, mod_pad_w, 0, mod_pad_h))
