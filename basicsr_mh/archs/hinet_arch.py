"""HINet, the Half Instance Normalization Network (two stages), and its TLC variant :class:`HINetLocal`.

Reference: L. Chen, X. Lu, J. Zhang, X. Chu and C. Chen, "HINet: Half Instance Normalization Network for Image
Restoration", CVPR Workshops 2021 (arXiv:2105.06086).

Module and parameter names follow the published implementation (megvii-research/HINet, also shipped as
``NAFNet-main/basicsr/models/archs/hinet_arch.py`` in Liu-SD/multi-output-deblur), so its checkpoints load with
``strict=True``; for input sizes it accepts (multiples of ``2 ** (depth - 1)``) the outputs are the same.
Other sizes are padded and cropped (:meth:`HINet.check_image_size`).

With :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` both stages get heads: ``sam12.conv2`` (stage 1) and
``last`` (stage 2) grow to ``K * in_chn`` outputs, and ``sam12.conv3``, which reads the stage-1 image, reads all K
stage-1 head images (``K * in_chn`` inputs), as the reference multi-head HINet (``mhhinet_arch.py``) does; its
checkpoints load with ``strict=True``.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn as nn
from torch.nn import functional as F

from ..heads import HeadLayout
from .local_arch import LocalBase, local_base_size

__all__ = ['HINet', 'HINetLocal', 'SAM', 'UNetConvBlock', 'UNetUpBlock', 'pad_to_size']


def conv3x3(in_chn, out_chn, bias=True):
    """3x3 conv, stride 1, padding 1."""
    return nn.Conv2d(in_chn, out_chn, kernel_size=3, stride=1, padding=1, bias=bias)


def conv_down(in_chn, out_chn, bias=False):
    """4x4 conv, stride 2, padding 1: halves an even spatial size."""
    return nn.Conv2d(in_chn, out_chn, kernel_size=4, stride=2, padding=1, bias=bias)


def conv(in_channels, out_channels, kernel_size, bias=False, stride=1):
    """Square conv with 'same' padding ``kernel_size // 2``."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias, stride=stride)


def pad_to_size(x, height, width):
    """Pad ``x`` (N, C, h, w) on the right and bottom to (N, C, height, width).

    Reflection padding (what the published MPRNet test scripts use) where each pad is smaller than the side it
    mirrors, replication otherwise (tiny inputs). A no-op when the size already fits.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = height - h, width - w
    if pad_h == 0 and pad_w == 0:
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class SAM(nn.Module):
    """Supervised attention module: predicts the stage image and gates the features with it.

    ``img = conv2(x) + x_img``; ``features = conv1(x) * sigmoid(conv3(img)) + x``.

    Args:
        n_feat (int): feature channels.
        kernel_size (int): kernel of the three convs. Default: 3.
        bias (bool): conv biases. Default: True.
        img_channels (int): image channels. Default: 3 (the published SAM always uses 3; HINet passes its ``in_chn``,
            which is the same for RGB and gives a stage-1 image with the input's channels otherwise).

    Shape:
        - Input: ``x`` (N, n_feat, H, W), ``x_img`` (N, img_channels, H, W).
        - Output: features (N, n_feat, H, W), image (N, img_channels, H, W).
    """

    def __init__(self, n_feat, kernel_size=3, bias=True, img_channels=3):
        super().__init__()
        self.conv1 = conv(n_feat, n_feat, kernel_size, bias=bias)
        self.conv2 = conv(n_feat, img_channels, kernel_size, bias=bias)
        self.conv3 = conv(img_channels, n_feat, kernel_size, bias=bias)

    def forward(self, x, x_img):
        """(N, n_feat, H, W), (N, img_channels, H, W) -> features (N, n_feat, H, W), image (N, img_channels, H, W)."""
        x1 = self.conv1(x)
        img = self.conv2(x) + x_img
        x2 = torch.sigmoid(self.conv3(img))
        return x1 * x2 + x, img


class UNetConvBlock(nn.Module):
    """Two 3x3 convs with LeakyReLU and a 1x1 shortcut; optional HIN, cross-stage fusion and downsampling.

    HIN (half instance normalization): after ``conv_1`` the first ``out_size // 2`` channels are instance-normalized
    (affine), the others pass. CSFF (``use_csff`` with ``downsample``): the encoder and decoder features of the
    previous stage are added through 3x3 convs. ``downsample``: a 4x4 stride-2 conv of the block output.

    Args:
        in_size (int): input channels.
        out_size (int): output channels.
        downsample (bool): also return a half-resolution copy.
        relu_slope (float): LeakyReLU negative slope.
        use_csff (bool): add ``csff_enc(enc) + csff_dec(dec)`` (only with ``downsample``). Default: False.
        use_HIN (bool): half instance normalization. Default: False.

    Shape:
        - Input: ``x`` (N, in_size, H, W); ``enc``, ``dec`` (N, out_size, H, W) or None.
        - Output: (N, out_size, H, W), or with ``downsample`` ((N, out_size, H/2, W/2), (N, out_size, H, W)).
    """

    def __init__(self, in_size, out_size, downsample, relu_slope, use_csff=False, use_HIN=False):  # noqa: N803
        super().__init__()
        self.identity = nn.Conv2d(in_size, out_size, 1, 1, 0)
        self.use_csff = use_csff
        self.conv_1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1, bias=True)
        self.relu_1 = nn.LeakyReLU(relu_slope, inplace=False)
        self.conv_2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1, bias=True)
        self.relu_2 = nn.LeakyReLU(relu_slope, inplace=False)
        if downsample and use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, 1, 1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, 1, 1)
        self.use_HIN = use_HIN
        if use_HIN:
            self.norm = nn.InstanceNorm2d(out_size // 2, affine=True)
        self.downsample = conv_down(out_size, out_size, bias=False) if downsample else None

    def forward(self, x, enc=None, dec=None):
        """See the class docstring for shapes."""
        out = self.conv_1(x)
        if self.use_HIN:
            out_1, out_2 = torch.chunk(out, 2, dim=1)
            out = torch.cat([self.norm(out_1), out_2], dim=1)
        out = self.relu_1(out)
        out = self.relu_2(self.conv_2(out))
        out = out + self.identity(x)
        if enc is not None and dec is not None:
            if not self.use_csff:
                raise RuntimeError('UNetConvBlock: encoder/decoder features given to a block without CSFF.')
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        if self.downsample is not None:
            return self.downsample(out), out
        return out


class UNetUpBlock(nn.Module):
    """2x2 stride-2 transposed conv, concatenation with the skip, then a :class:`UNetConvBlock`.

    Shape:
        - Input: ``x`` (N, in_size, H, W), ``bridge`` (N, out_size, 2H, 2W) with ``2 * out_size == in_size``.
        - Output: (N, out_size, 2H, 2W).
    """

    def __init__(self, in_size, out_size, relu_slope):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2, bias=True)
        self.conv_block = UNetConvBlock(in_size, out_size, False, relu_slope)

    def forward(self, x, bridge):
        """(N, in_size, H, W), (N, out_size, 2H, 2W) -> (N, out_size, 2H, 2W)."""
        return self.conv_block(torch.cat([self.up(x), bridge], 1))


@ARCH_REGISTRY.register()
class HINet(nn.Module):
    """HINet: two U-Nets in sequence, joined by a supervised attention module (SAM) and cross-stage fusion.

    Stage 1 (``conv_01``, ``down_path_1``, ``up_path_1`` with ``skip_conv_1``) ends in ``sam12``, which predicts the
    stage-1 image ``sam12.conv2(x) + input`` and gated features. Stage 2 (``conv_02``, ``cat12`` merging those
    features, ``down_path_2`` with CSFF from stage 1's encoder and decoder, ``up_path_2`` with ``skip_conv_2``) ends in
    ``last``; the stage-2 image is ``last(x) + input``. Level ``i`` of each U-Net has ``wf * 2**i`` channels; HIN is
    used at levels ``hin_position_left..hin_position_right`` of the encoders.

    The published network needs sizes that are multiples of ``2 ** (depth - 1)`` (and more than one pixel at an HIN
    level). Here any size works: the input is padded on the right and bottom (:meth:`check_image_size`) and both
    images are cropped back after the residual additions, so sizes the published code accepts give its outputs, and
    each image stays an additive function of its output layer (what MultiHeadArch needs).

    The published GoPro model uses ``wf=64, hin_position_left=3, hin_position_right=4``.

    Args:
        in_chn (int): image channels. Default: 3.
        wf (int): channels at the first level. Default: 64.
        depth (int): U-Net levels. Default: 5.
        relu_slope (float): LeakyReLU negative slope. Default: 0.2.
        hin_position_left (int): first encoder level with HIN. Default: 0.
        hin_position_right (int): last encoder level with HIN. Default: 4.

    Shape:
        - Input: ``(N, in_chn, H, W)``, any ``H, W >= 1``.
        - Output: ``[stage1, stage2]``, each ``(N, in_chn, H, W)``; ``stage2`` is the final restoration.
    """

    final_output_index = -1  # position of the final restoration in the returned list

    def __init__(self, in_chn=3, wf=64, depth=5, relu_slope=0.2, hin_position_left=0, hin_position_right=4):
        super().__init__()
        self.depth = depth
        # attribute creation order = published state_dict key order
        self.down_path_1 = nn.ModuleList()
        self.down_path_2 = nn.ModuleList()
        self.conv_01 = nn.Conv2d(in_chn, wf, 3, 1, 1)
        self.conv_02 = nn.Conv2d(in_chn, wf, 3, 1, 1)

        prev_channels = wf
        for i in range(depth):
            use_hin = hin_position_left <= i <= hin_position_right
            downsample = i + 1 < depth
            self.down_path_1.append(UNetConvBlock(prev_channels, (2**i) * wf, downsample, relu_slope, use_HIN=use_hin))
            self.down_path_2.append(
                UNetConvBlock(prev_channels, (2**i) * wf, downsample, relu_slope, use_csff=downsample, use_HIN=use_hin))
            prev_channels = (2**i) * wf

        self.up_path_1 = nn.ModuleList()
        self.up_path_2 = nn.ModuleList()
        self.skip_conv_1 = nn.ModuleList()
        self.skip_conv_2 = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up_path_1.append(UNetUpBlock(prev_channels, (2**i) * wf, relu_slope))
            self.up_path_2.append(UNetUpBlock(prev_channels, (2**i) * wf, relu_slope))
            self.skip_conv_1.append(nn.Conv2d((2**i) * wf, (2**i) * wf, 3, 1, 1))
            self.skip_conv_2.append(nn.Conv2d((2**i) * wf, (2**i) * wf, 3, 1, 1))
            prev_channels = (2**i) * wf
        self.sam12 = SAM(prev_channels, img_channels=in_chn)
        self.cat12 = nn.Conv2d(prev_channels * 2, prev_channels, 1, 1, 0)
        self.last = conv3x3(prev_channels, in_chn, bias=True)

        self.size_multiple = 2**(depth - 1)
        # instance norm needs more than one pixel; only the lowest level can shrink to 1x1
        self.hin_at_lowest_level = hin_position_left <= depth - 1 <= hin_position_right

    def padded_size(self, h, w):
        """The size ``(H', W')`` an ``h x w`` input is padded to: multiples of ``2 ** (depth - 1)``, not 1x1 at HIN."""
        m = self.size_multiple
        ph, pw = -(-h // m) * m, -(-w // m) * m
        if self.hin_at_lowest_level and ph == m and pw == m:
            pw += m
        return ph, pw

    def check_image_size(self, x):
        """Pad ``x`` (N, C, h, w) right/bottom to (N, C, H', W') of :meth:`padded_size` (see :func:`pad_to_size`)."""
        return pad_to_size(x, *self.padded_size(*x.shape[-2:]))

    def multihead_layout(self):
        """Where :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` grows heads (found by its probe otherwise):
        ``sam12.conv2`` (stage 1, whose image ``sam12.conv3`` reads) and ``last`` (stage 2), both before a global
        residual and the crop."""
        return HeadLayout(
            outputs=((0, 'sam12.conv2', 1.0, False), (1, 'last', 1.0, True)),
            num_network_outputs=2,
            head_inputs=(('sam12.conv3', 'sam12.conv2', 1.0), ))

    def forward(self, x):
        """Restore an image.

        Args:
            x (Tensor): degraded image ``(N, in_chn, H, W)``.

        Returns:
            list[Tensor]: ``[stage1, stage2]`` images, each ``(N, in_chn, H, W)``.
        """
        h, w = x.shape[-2:]
        image = self.check_image_size(x)

        # stage 1
        x1 = self.conv_01(image)
        encs, decs = [], []
        for i, down in enumerate(self.down_path_1):
            if i + 1 < self.depth:
                x1, x1_up = down(x1)
                encs.append(x1_up)
            else:
                x1 = down(x1)
        for i, up in enumerate(self.up_path_1):
            x1 = up(x1, self.skip_conv_1[i](encs[-i - 1]))
            decs.append(x1)
        sam_feature, out_1 = self.sam12(x1, image)

        # stage 2
        x2 = self.cat12(torch.cat([self.conv_02(image), sam_feature], dim=1))
        blocks = []
        for i, down in enumerate(self.down_path_2):
            if i + 1 < self.depth:
                x2, x2_up = down(x2, encs[i], decs[-i - 1])
                blocks.append(x2_up)
            else:
                x2 = down(x2)
        for i, up in enumerate(self.up_path_2):
            x2 = up(x2, self.skip_conv_2[i](blocks[-i - 1]))
        # residual first, crop last: the images stay additive in `sam12.conv2` and `last`
        out_2 = self.last(x2) + image
        if out_2.shape[-2:] != (h, w):
            out_1, out_2 = out_1[:, :, :h, :w], out_2[:, :, :h, :w]
        return [out_1, out_2]


@ARCH_REGISTRY.register()
class HINetLocal(LocalBase, HINet):
    """:class:`HINet` with the TLC conversion of the published ``HINetLocal`` (same parameters and keys).

    The published conversion replaces ``nn.AdaptiveAvgPool2d(1)`` layers only; HINet has none (its global statistics
    are the instance norms of its HIN blocks, which the conversion leaves alone), so ``HINetLocal`` computes exactly
    what ``HINet`` computes, as the published one does. It exists so that option files naming it build.

    Args:
        train_size (Sequence[int]): ``(N, C, H, W)`` of the training crops. Default: ``(1, 3, 256, 256)``.
        fast_imp (bool): the approximate TLC pooling. Default: False.
        *args, **kwargs: :class:`HINet`'s.

    Shape:
        - Input: ``(N, in_chn, H, W)``.
        - Output: ``[stage1, stage2]``, each ``(N, in_chn, H, W)``.
    """

    def __init__(self, *args, train_size=(1, 3, 256, 256), fast_imp=False, **kwargs):
        HINet.__init__(self, *args, **kwargs)
        self.convert(base_size=local_base_size(train_size), train_size=train_size, fast_imp=fast_imp)
