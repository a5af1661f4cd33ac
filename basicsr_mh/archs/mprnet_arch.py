"""MPRNet, the multi-stage progressive restoration network (three stages), for BasicSR.

Reference: S. W. Zamir, A. Arora, S. Khan, M. Hayat, F. S. Khan, M.-H. Yang and L. Shao, "Multi-Stage Progressive
Image Restoration", CVPR 2021 (arXiv:2102.02808).

Module and parameter names follow the published deblurring model (swz30/MPRNet, ``Deblurring/MPRNet.py``; also in
Liu-SD/multi-output-deblur), so its checkpoints load with ``strict=True``; for sizes it accepts (multiples of 8) the
outputs are the same. As published, one ``nn.PReLU`` (one parameter) is shared by every channel-attention block; its
``state_dict`` lists it under each block's key.

One change of order, not of result: the published forward calls ``sam12`` on the top and the bottom half separately
and concatenates the two stage-1 images. ``sam12``'s convs are 1x1 (pointwise), so calling it once on the two halves
stacked back to full height gives the same numbers; it also makes ``sam12.conv2`` run once per forward, so
:class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` can give stage 1 heads too. With MultiHeadArch all three
stages get heads (``tail``, ``sam23.conv2`` and ``sam12.conv2`` grow to ``K * out_c`` outputs) and ``sam12.conv3`` and
``sam23.conv3`` read all K head images of their stage (``K * out_c`` inputs), as the reference multi-head MPRNet
(``MHMPRNet.py``) does; its checkpoints load with ``strict=True``.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn as nn

from ..heads import HeadLayout
from .hinet_arch import SAM, conv, pad_to_size

__all__ = ['MPRNet', 'CAB', 'CALayer', 'ORSNet']


class CALayer(nn.Module):
    """Channel attention: global average pooling, 1x1 conv down by ``reduction``, ReLU, 1x1 conv up, sigmoid.

    Shape: (N, C, H, W) -> (N, C, H, W), ``x`` scaled per channel.
    """

    def __init__(self, channel, reduction=16, bias=False):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x):
        """(N, C, H, W) -> (N, C, H, W)."""
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    """Channel attention block: conv, activation, conv, :class:`CALayer`, plus the input.

    Args:
        n_feat (int): channels.
        kernel_size (int): conv kernel.
        reduction (int): channel reduction of the attention.
        bias (bool): conv biases.
        act (nn.Module): the activation module (MPRNet shares one PReLU between all blocks).

    Shape: (N, n_feat, H, W) -> (N, n_feat, H, W).
    """

    def __init__(self, n_feat, kernel_size, reduction, bias, act):
        super().__init__()
        self.CA = CALayer(n_feat, reduction, bias=bias)  # noqa: N815 (published name); registered before body
        self.body = nn.Sequential(
            conv(n_feat, n_feat, kernel_size, bias=bias), act, conv(n_feat, n_feat, kernel_size, bias=bias))

    def forward(self, x):
        """(N, n_feat, H, W) -> (N, n_feat, H, W)."""
        return self.CA(self.body(x)) + x


def _cabs(n, n_feat, kernel_size, reduction, bias, act):
    return nn.Sequential(*[CAB(n_feat, kernel_size, reduction, bias=bias, act=act) for _ in range(n)])


class DownSample(nn.Module):
    """Bilinear x0.5, then a 1x1 conv from ``in_channels`` to ``in_channels + s_factor`` channels."""

    def __init__(self, in_channels, s_factor):
        super().__init__()
        self.down = nn.Sequential(
            nn.Upsample(scale_factor=0.5, mode='bilinear', align_corners=False),
            nn.Conv2d(in_channels, in_channels + s_factor, 1, stride=1, padding=0, bias=False))

    def forward(self, x):
        """(N, C, H, W) -> (N, C + s_factor, H/2, W/2)."""
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear x2, then a 1x1 conv from ``in_channels + s_factor`` to ``in_channels`` channels."""

    def __init__(self, in_channels, s_factor):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False),
            nn.Conv2d(in_channels + s_factor, in_channels, 1, stride=1, padding=0, bias=False))

    def forward(self, x):
        """(N, C + s_factor, H, W) -> (N, C, 2H, 2W)."""
        return self.up(x)


class SkipUpSample(UpSample):
    """:class:`UpSample` plus a skip: ``up(x) + y``."""

    def forward(self, x, y):
        """(N, C + s_factor, H, W), (N, C, 2H, 2W) -> (N, C, 2H, 2W)."""
        return self.up(x) + y


class Encoder(nn.Module):
    """Three-level U-Net encoder of CABs (``n_feat``, ``+s``, ``+2s`` channels), with optional cross-stage fusion.

    Shape: (N, n_feat, H, W) -> [(N, n_feat, H, W), (N, n_feat + s, H/2, W/2), (N, n_feat + 2s, H/4, W/4)].
    """

    def __init__(self, n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff):
        super().__init__()
        chans = [n_feat, n_feat + scale_unetfeats, n_feat + scale_unetfeats * 2]
        self.encoder_level1 = _cabs(2, chans[0], kernel_size, reduction, bias, act)
        self.encoder_level2 = _cabs(2, chans[1], kernel_size, reduction, bias, act)
        self.encoder_level3 = _cabs(2, chans[2], kernel_size, reduction, bias, act)
        self.down12 = DownSample(n_feat, scale_unetfeats)
        self.down23 = DownSample(n_feat + scale_unetfeats, scale_unetfeats)
        self.csff = csff
        if csff:
            for i, c in enumerate(chans, 1):
                setattr(self, f'csff_enc{i}', nn.Conv2d(c, c, kernel_size=1, bias=bias))
            for i, c in enumerate(chans, 1):
                setattr(self, f'csff_dec{i}', nn.Conv2d(c, c, kernel_size=1, bias=bias))

    def forward(self, x, encoder_outs=None, decoder_outs=None):
        """Encode ``x``; with the previous stage's ``encoder_outs`` and ``decoder_outs``, fuse them in (CSFF)."""
        fuse = encoder_outs is not None and decoder_outs is not None
        enc1 = self.encoder_level1(x)
        if fuse:
            enc1 = enc1 + self.csff_enc1(encoder_outs[0]) + self.csff_dec1(decoder_outs[0])
        enc2 = self.encoder_level2(self.down12(enc1))
        if fuse:
            enc2 = enc2 + self.csff_enc2(encoder_outs[1]) + self.csff_dec2(decoder_outs[1])
        enc3 = self.encoder_level3(self.down23(enc2))
        if fuse:
            enc3 = enc3 + self.csff_enc3(encoder_outs[2]) + self.csff_dec3(decoder_outs[2])
        return [enc1, enc2, enc3]


class Decoder(nn.Module):
    """Three-level U-Net decoder of CABs with CAB-attended skips.

    Shape: the three encoder outputs -> [(N, n_feat, H, W), (N, n_feat + s, H/2, W/2), (N, n_feat + 2s, H/4, W/4)].
    """

    def __init__(self, n_feat, kernel_size, reduction, act, bias, scale_unetfeats):
        super().__init__()
        chans = [n_feat, n_feat + scale_unetfeats, n_feat + scale_unetfeats * 2]
        self.decoder_level1 = _cabs(2, chans[0], kernel_size, reduction, bias, act)
        self.decoder_level2 = _cabs(2, chans[1], kernel_size, reduction, bias, act)
        self.decoder_level3 = _cabs(2, chans[2], kernel_size, reduction, bias, act)
        self.skip_attn1 = CAB(chans[0], kernel_size, reduction, bias=bias, act=act)
        self.skip_attn2 = CAB(chans[1], kernel_size, reduction, bias=bias, act=act)
        self.up21 = SkipUpSample(n_feat, scale_unetfeats)
        self.up32 = SkipUpSample(n_feat + scale_unetfeats, scale_unetfeats)

    def forward(self, outs):
        """Decode ``[enc1, enc2, enc3]`` into ``[dec1, dec2, dec3]``."""
        enc1, enc2, enc3 = outs
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: ``num_cab`` CABs and a 3x3 conv (no bias), plus the input."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, num_cab):
        super().__init__()
        body = [CAB(n_feat, kernel_size, reduction, bias=bias, act=act) for _ in range(num_cab)]
        body.append(conv(n_feat, n_feat, kernel_size))
        self.body = nn.Sequential(*body)

    def forward(self, x):
        """(N, n_feat, H, W) -> (N, n_feat, H, W)."""
        return self.body(x) + x


class ORSNet(nn.Module):
    """Original-resolution subnetwork of stage 3: three ORBs, each followed by the fused stage-2 U-Net features.

    Shape: (N, n_feat + scale_orsnetfeats, H, W) and stage 2's encoder/decoder outputs -> same shape as the input.
    """

    def __init__(self, n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias, scale_unetfeats, num_cab):
        super().__init__()
        width = n_feat + scale_orsnetfeats
        self.orb1 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb2 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.orb3 = ORB(width, kernel_size, reduction, act, bias, num_cab)
        self.up_enc1 = UpSample(n_feat, scale_unetfeats)
        self.up_dec1 = UpSample(n_feat, scale_unetfeats)
        self.up_enc2 = nn.Sequential(
            UpSample(n_feat + scale_unetfeats, scale_unetfeats), UpSample(n_feat, scale_unetfeats))
        self.up_dec2 = nn.Sequential(
            UpSample(n_feat + scale_unetfeats, scale_unetfeats), UpSample(n_feat, scale_unetfeats))
        for i in (1, 2, 3):
            setattr(self, f'conv_enc{i}', nn.Conv2d(n_feat, width, kernel_size=1, bias=bias))
        for i in (1, 2, 3):
            setattr(self, f'conv_dec{i}', nn.Conv2d(n_feat, width, kernel_size=1, bias=bias))

    def forward(self, x, encoder_outs, decoder_outs):
        """See the class docstring."""
        x = self.orb1(x)
        x = x + self.conv_enc1(encoder_outs[0]) + self.conv_dec1(decoder_outs[0])
        x = self.orb2(x)
        x = x + self.conv_enc2(self.up_enc1(encoder_outs[1])) + self.conv_dec2(self.up_dec1(decoder_outs[1]))
        x = self.orb3(x)
        x = x + self.conv_enc3(self.up_enc2(encoder_outs[2])) + self.conv_dec3(self.up_dec2(decoder_outs[2]))
        return x


@ARCH_REGISTRY.register()
class MPRNet(nn.Module):
    """MPRNet: three progressively refining stages on 4 patches, 2 patches and the full image.

    Stage 1 runs a U-Net (``shallow_feat1``, ``stage1_encoder``, ``stage1_decoder``) on the four quarters (encoder
    features of left/right quarters are joined before decoding top and bottom); ``sam12`` gives the stage-1 image
    ``sam12.conv2(x) + input`` and gated features. Stage 2 runs a U-Net on the two halves (``shallow_feat2``,
    ``concat12`` with the SAM features, ``stage2_encoder`` with CSFF, ``stage2_decoder`` on the full map) and
    ``sam23`` gives the stage-2 image. Stage 3 works at full resolution without downsampling (``shallow_feat3``,
    ``concat23``, ``stage3_orsnet``); the final image is ``tail(x) + input``.

    The published network needs sizes that are multiples of 8 (its test scripts reflect-pad to them). Here the input
    is padded right/bottom to multiples of 8 (reflection, replication for tiny inputs) and the three images are
    cropped back after the residual additions, so each stays additive in its output layer.

    Args:
        in_c (int): input channels. Default: 3.
        out_c (int): output channels (the stage images are 3-channel as published). Default: 3.
        n_feat (int): base feature channels. Default: 96.
        scale_unetfeats (int): channels added per U-Net level. Default: 48.
        scale_orsnetfeats (int): channels added in stage 3. Default: 32.
        num_cab (int): CABs per ORB. Default: 8.
        kernel_size (int): conv kernel. Default: 3.
        reduction (int): channel-attention reduction. Default: 4.
        bias (bool): conv biases. Default: False.

    Shape:
        - Input: ``(N, in_c, H, W)``, any ``H, W >= 1``.
        - Output: ``[stage3, stage2, stage1]``, each ``(N, 3, H, W)`` (``stage3`` has ``out_c`` channels);
          ``stage3`` is the final restoration: it comes first (``final_output_index = 0``), as published.
    """

    size_multiple = 8
    final_output_index = 0  # position of the final restoration in the returned list (HINet: -1)

    def __init__(self,
                 in_c=3,
                 out_c=3,
                 n_feat=96,
                 scale_unetfeats=48,
                 scale_orsnetfeats=32,
                 num_cab=8,
                 kernel_size=3,
                 reduction=4,
                 bias=False):
        super().__init__()
        act = nn.PReLU()  # one module, hence one parameter, shared by all CABs (as published)
        self.shallow_feat1 = nn.Sequential(
            conv(in_c, n_feat, kernel_size, bias=bias), CAB(n_feat, kernel_size, reduction, bias=bias, act=act))
        self.shallow_feat2 = nn.Sequential(
            conv(in_c, n_feat, kernel_size, bias=bias), CAB(n_feat, kernel_size, reduction, bias=bias, act=act))
        self.shallow_feat3 = nn.Sequential(
            conv(in_c, n_feat, kernel_size, bias=bias), CAB(n_feat, kernel_size, reduction, bias=bias, act=act))

        self.stage1_encoder = Encoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff=False)
        self.stage1_decoder = Decoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats)
        self.stage2_encoder = Encoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff=True)
        self.stage2_decoder = Decoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats)
        self.stage3_orsnet = ORSNet(n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias, scale_unetfeats,
                                    num_cab)

        # the SAMs must stay 1x1: forward() runs sam12 once on both halves (see the module docstring)
        self.sam12 = SAM(n_feat, kernel_size=1, bias=bias)
        self.sam23 = SAM(n_feat, kernel_size=1, bias=bias)
        self.concat12 = conv(n_feat * 2, n_feat, kernel_size, bias=bias)
        self.concat23 = conv(n_feat * 2, n_feat + scale_orsnetfeats, kernel_size, bias=bias)
        self.tail = conv(n_feat + scale_orsnetfeats, out_c, kernel_size, bias=bias)

    def multihead_layout(self):
        """Where :class:`~basicsr_mh.archs.multihead_arch.MultiHeadArch` grows heads (found by its probe otherwise):
        ``tail`` (stage 3, output 0), ``sam23.conv2`` and ``sam12.conv2`` (stages 2 and 1, whose images
        ``sam23.conv3``/``sam12.conv3`` read), each before a global residual. An identity start is measured on a
        16x16 probe (a 64x64 one costs more than building the network)."""
        return HeadLayout(
            outputs=((0, 'tail', 1.0, True), (1, 'sam23.conv2', 1.0, False), (2, 'sam12.conv2', 1.0, False)),
            num_network_outputs=3,
            head_inputs=(('sam23.conv3', 'sam23.conv2', 1.0), ('sam12.conv3', 'sam12.conv2', 1.0)),
            probe_size=16)

    def check_image_size(self, x):
        """Pad ``x`` (N, C, h, w) right/bottom to multiples of 8 (:func:`~basicsr_mh.archs.hinet_arch.pad_to_size`)."""
        m = self.size_multiple
        h, w = x.shape[-2:]
        return pad_to_size(x, -(-h // m) * m, -(-w // m) * m)

    def forward(self, x):
        """Restore an image.

        Args:
            x (Tensor): degraded image ``(N, in_c, H, W)``.

        Returns:
            list[Tensor]: ``[stage3, stage2, stage1]`` images, each ``(N, 3, H, W)``.
        """
        h, w = x.shape[-2:]
        x3_img = self.check_image_size(x)
        height, width = x3_img.shape[-2:]
        half_h, half_w = height // 2, width // 2

        # multi-patch hierarchy: two halves for stage 2, four quarters for stage 1
        x2top_img, x2bot_img = x3_img[:, :, :half_h], x3_img[:, :, half_h:]
        quarters = [x2top_img[..., :half_w], x2top_img[..., half_w:], x2bot_img[..., :half_w], x2bot_img[..., half_w:]]

        # stage 1
        feat1_ltop, feat1_rtop, feat1_lbot, feat1_rbot = [self.stage1_encoder(self.shallow_feat1(q)) for q in quarters]
        feat1_top = [torch.cat((k, v), 3) for k, v in zip(feat1_ltop, feat1_rtop)]
        feat1_bot = [torch.cat((k, v), 3) for k, v in zip(feat1_lbot, feat1_rbot)]
        res1_top = self.stage1_decoder(feat1_top)
        res1_bot = self.stage1_decoder(feat1_bot)
        # one SAM call on both halves (pointwise convs: the same as one call per half, then concatenation)
        samfeats, stage1_img = self.sam12(torch.cat([res1_top[0], res1_bot[0]], 2), x3_img)
        x2top_samfeats, x2bot_samfeats = samfeats[:, :, :half_h], samfeats[:, :, half_h:]

        # stage 2
        x2top_cat = self.concat12(torch.cat([self.shallow_feat2(x2top_img), x2top_samfeats], 1))
        x2bot_cat = self.concat12(torch.cat([self.shallow_feat2(x2bot_img), x2bot_samfeats], 1))
        feat2_top = self.stage2_encoder(x2top_cat, feat1_top, res1_top)
        feat2_bot = self.stage2_encoder(x2bot_cat, feat1_bot, res1_bot)
        feat2 = [torch.cat((k, v), 2) for k, v in zip(feat2_top, feat2_bot)]
        res2 = self.stage2_decoder(feat2)
        x3_samfeats, stage2_img = self.sam23(res2[0], x3_img)

        # stage 3
        x3_cat = self.concat23(torch.cat([self.shallow_feat3(x3_img), x3_samfeats], 1))
        x3_cat = self.stage3_orsnet(x3_cat, feat2, res2)
        # residual first, crop last: the images stay additive in `tail`, `sam23.conv2` and `sam12.conv2`
        stage3_img = self.tail(x3_cat) + x3_img
        outs = [stage3_img, stage2_img, stage1_img]
        if (height, width) != (h, w):
            outs = [o[:, :, :h, :w] for o in outs]
        return outs
