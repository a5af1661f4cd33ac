"""Tests for :mod:`basicsr_mh.archs.restormer_arch` (Restormer) and for MultiHeadArch on Restormer.

The parameter layout is checked against an independent listing written from the published Restormer definition
(swz30/Restormer, ``basicsr/models/archs/restormer_arch.py``), and the outputs against an independent functional
oracle of the published forward computed from a state_dict (the plain Restormer, and the reference multi-head
``MHRestormer`` of Liu-SD/multi-output-deblur: ``output`` conv with ``K * C`` channels -> ``view(B, K, C, H, W)`` ->
optional pair combination in the order ``for i in range(K): for j in range(i + 1)`` -> ``+ inp_img``).

Optional tests compare with the published code itself: set ``BASICSR_MH_REFERENCE`` to a checkout of the
multi-output deblurring repository (with ``Restormer-main/basicsr_restormer/models/archs/``) or of Restormer; they
are skipped otherwise, and when ``einops`` (needed by the reference code only) is missing.
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from collections import OrderedDict
from conftest import load_reference, state_layout
from pathlib import Path
from torch.nn import functional as F

from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.archs.multihead_layers import MultiHeadConv2d
from basicsr_mh.archs.restormer_arch import BiasFreeLayerNorm, Restormer, RestormerLayerNorm, WithBiasLayerNorm
from basicsr_mh.heads import extended_head_pairs

# published default configuration (motion deblurring; dual-pixel defocus deblurring adds inp_channels=6 and
# dual_pixel_task=True); parameter counts of the published implementation, counted with its own code
DEFAULT = dict(
    inp_channels=3,
    out_channels=3,
    dim=48,
    num_blocks=[4, 6, 6, 8],
    num_refinement_blocks=4,
    heads=[1, 2, 4, 8],
    ffn_expansion_factor=2.66,
    bias=False,
    LayerNorm_type='WithBias',
    dual_pixel_task=False)
DEFAULT_PARAMS = 26126644
DUAL_PIXEL = dict(DEFAULT, inp_channels=6, dual_pixel_task=True)
DUAL_PIXEL_PARAMS = 26132548
BIAS_FREE = dict(DEFAULT, LayerNorm_type='BiasFree')
BIAS_FREE_PARAMS = 26111668

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
TINY_BIAS_FREE = dict(TINY, LayerNorm_type='BiasFree', bias=True)
TINY_DUAL = dict(TINY, inp_channels=6, out_channels=3, dual_pixel_task=True)
SMALL = dict(
    dim=8, num_blocks=[2, 1, 2, 1], num_refinement_blocks=2, heads=[2, 2, 4, 8], ffn_expansion_factor=1.5, bias=True)
PAIRS_K4 = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)]

pytestmark = pytest.mark.usefixtures('one_thread')


# --------------------------------------------------------------------------------------------------------------------
# helpers: independent layout and functional forward, written from the published rules
# --------------------------------------------------------------------------------------------------------------------
def reference_block_layout(prefix, dim, num_heads, ffn_expansion_factor, bias, layer_norm_type):
    """List the parameters of one published TransformerBlock: norm1, attn (MDTA), norm2, ffn (GDFN).

    Returns:
        list[tuple[str, tuple[int, ...]]]: ``(key, shape)`` pairs in state_dict order (a module's own parameters
        before its children's, children in the order of creation).
    """
    hidden = int(dim * ffn_expansion_factor)

    def norm(name):
        with_bias = layer_norm_type == 'WithBias'
        return [(f'{name}.body.weight', (dim, ))] + ([(f'{name}.body.bias', (dim, ))] if with_bias else [])

    def conv(name, out_c, in_c, k):
        return [(f'{name}.weight', (out_c, in_c, k, k))] + ([(f'{name}.bias', (out_c, ))] if bias else [])

    layout = norm('norm1')
    layout += [('attn.temperature', (num_heads, 1, 1))]
    layout += conv('attn.qkv', 3 * dim, dim, 1) + conv('attn.qkv_dwconv', 3 * dim, 1, 3)
    layout += conv('attn.project_out', dim, dim, 1)
    layout += norm('norm2')
    layout += conv('ffn.project_in', 2 * hidden, dim, 1) + conv('ffn.dwconv', 2 * hidden, 1, 3)
    layout += conv('ffn.project_out', dim, hidden, 1)
    return [(prefix + key, shape) for key, shape in layout]


def reference_layout(inp_channels=3,
                     out_channels=3,
                     dim=48,
                     num_blocks=(4, 6, 6, 8),
                     num_refinement_blocks=4,
                     heads=(1, 2, 4, 8),
                     ffn_expansion_factor=2.66,
                     bias=False,
                     LayerNorm_type='WithBias',
                     dual_pixel_task=False):  # noqa: N803
    """List the state_dict of the published Restormer for a configuration, by the published construction rules.

    Level ``i`` (1-4) works at ``dim * 2**(i-1)`` channels; ``patch_embed.proj``, ``Downsample`` (3x3 conv to half
    the channels + PixelUnshuffle) and ``Upsample`` (3x3 conv to twice the channels + PixelShuffle) never have biases;
    ``reduce_chan_level3/2`` (1x1), ``skip_conv`` (1x1, dual-pixel only) and ``output`` (3x3) follow ``bias``. Decoder
    level 1 and ``refinement`` work at ``2 * dim`` channels with ``heads[0]``; decoder levels 3 and 2 repeat the block
    counts and heads of the encoder levels.

    Returns:
        list[tuple[str, tuple[int, ...]]]: ``(key, shape)`` pairs in state_dict order.
    """
    c1, c2, c3, c4 = dim, 2 * dim, 4 * dim, 8 * dim

    def stage(name, num, chan, num_heads):
        out = []
        for i in range(num):
            out += reference_block_layout(f'{name}.{i}.', chan, num_heads, ffn_expansion_factor, bias, LayerNorm_type)
        return out

    def conv(name, out_c, in_c, k, with_bias):
        return [(f'{name}.weight', (out_c, in_c, k, k))] + ([(f'{name}.bias', (out_c, ))] if with_bias else [])

    layout = conv('patch_embed.proj', c1, inp_channels, 3, False)
    layout += stage('encoder_level1', num_blocks[0], c1, heads[0])
    layout += conv('down1_2.body.0', c1 // 2, c1, 3, False)
    layout += stage('encoder_level2', num_blocks[1], c2, heads[1])
    layout += conv('down2_3.body.0', c2 // 2, c2, 3, False)
    layout += stage('encoder_level3', num_blocks[2], c3, heads[2])
    layout += conv('down3_4.body.0', c3 // 2, c3, 3, False)
    layout += stage('latent', num_blocks[3], c4, heads[3])
    layout += conv('up4_3.body.0', 2 * c4, c4, 3, False)
    layout += conv('reduce_chan_level3', c3, c4, 1, bias)
    layout += stage('decoder_level3', num_blocks[2], c3, heads[2])
    layout += conv('up3_2.body.0', 2 * c3, c3, 3, False)
    layout += conv('reduce_chan_level2', c2, c3, 1, bias)
    layout += stage('decoder_level2', num_blocks[1], c2, heads[1])
    layout += conv('up2_1.body.0', 2 * c2, c2, 3, False)
    layout += stage('decoder_level1', num_blocks[0], c2, heads[0])
    layout += stage('refinement', num_refinement_blocks, c2, heads[0])
    if dual_pixel_task:
        layout += conv('skip_conv', c2, c1, 1, bias)
    layout += conv('output', out_channels, c2, 3, bias)
    return layout


def _conv(x, sd, name):
    """Published conv ``name`` from a state_dict: 'same' padding, depthwise when its weight has one input channel."""
    weight = sd[name + 'weight']
    return F.conv2d(
        x, weight, sd.get(name + 'bias'), padding=weight.shape[-1] // 2, groups=x.shape[1] // weight.shape[1])


def _layer_norm(x, sd, name):
    """Published LayerNorm: to (B, HW, C), normalize the last dim (biased variance, eps 1e-5), back to NCHW."""
    b, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    sigma = y.var(-1, keepdim=True, unbiased=False)
    if name + 'body.bias' in sd:  # WithBias
        y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(sigma + 1e-5) * sd[name + 'body.weight']
        y = y + sd[name + 'body.bias']
    else:  # BiasFree: the mean is not subtracted
        y = y / torch.sqrt(sigma + 1e-5) * sd[name + 'body.weight']
    return y.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _block(x, sd, p):
    """Published TransformerBlock: MDTA (attention across channels per head) and GDFN, both residual."""
    b, c, h, w = x.shape
    temperature = sd[p + 'attn.temperature']
    heads = temperature.shape[0]
    qkv = _conv(_conv(_layer_norm(x, sd, p + 'norm1.'), sd, p + 'attn.qkv.'), sd, p + 'attn.qkv_dwconv.')
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in qkv.chunk(3, dim=1))
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * temperature, dim=-1)
    x = x + _conv((attn @ v).reshape(b, c, h, w), sd, p + 'attn.project_out.')
    y = _conv(_conv(_layer_norm(x, sd, p + 'norm2.'), sd, p + 'ffn.project_in.'), sd, p + 'ffn.dwconv.')
    y1, y2 = y.chunk(2, dim=1)
    return x + _conv(F.gelu(y1) * y2, sd, p + 'ffn.project_out.')


def _stage(x, sd, name):
    index = 0
    while f'{name}.{index}.attn.temperature' in sd:
        x = _block(x, sd, f'{name}.{index}.')
        index += 1
    return x


def oracle_forward(sd, inp, num_heads=1, combine=False):
    """The published Restormer / reference MHRestormer forward, computed from a state_dict with functional ops.

    Block counts, heads, LayerNorm type, biases and ``dual_pixel_task`` are read from the state_dict. ``H, W`` must
    be multiples of 8 (published requirement). With ``num_heads > 1`` or ``combine`` (reference MHRestormer): the
    ``output`` conv gives ``K * C`` channels, viewed as ``(B, K, C, H, W)`` head-major, optionally combined in pairs
    ``(x_i + x_j) / 2`` in the order ``for i in range(K): for j in range(i + 1)``, then ``+ inp`` per head.

    Returns:
        Tensor: ``(B, C, H, W)`` for one head, else ``(B, K', C, H, W)``.
    """
    e1 = _conv(inp, sd, 'patch_embed.proj.')
    o1 = _stage(e1, sd, 'encoder_level1')
    o2 = _stage(F.pixel_unshuffle(_conv(o1, sd, 'down1_2.body.0.'), 2), sd, 'encoder_level2')
    o3 = _stage(F.pixel_unshuffle(_conv(o2, sd, 'down2_3.body.0.'), 2), sd, 'encoder_level3')
    latent = _stage(F.pixel_unshuffle(_conv(o3, sd, 'down3_4.body.0.'), 2), sd, 'latent')
    d = torch.cat([F.pixel_shuffle(_conv(latent, sd, 'up4_3.body.0.'), 2), o3], 1)
    d = _stage(_conv(d, sd, 'reduce_chan_level3.'), sd, 'decoder_level3')
    d = torch.cat([F.pixel_shuffle(_conv(d, sd, 'up3_2.body.0.'), 2), o2], 1)
    d = _stage(_conv(d, sd, 'reduce_chan_level2.'), sd, 'decoder_level2')
    d = torch.cat([F.pixel_shuffle(_conv(d, sd, 'up2_1.body.0.'), 2), o1], 1)
    d = _stage(_stage(d, sd, 'decoder_level1'), sd, 'refinement')
    dual_pixel = 'skip_conv.weight' in sd
    if dual_pixel:
        d = d + _conv(e1, sd, 'skip_conv.')
    out = _conv(d, sd, 'output.')
    b, _, h, w = out.shape
    out = out.view(b, num_heads, -1, h, w)
    if combine:
        out = torch.stack([(out[:, i] + out[:, j]) / 2 for i in range(num_heads) for j in range(i + 1)], dim=1)
    if not dual_pixel:
        out = out + inp.unsqueeze(1)
    return out[:, 0] if num_heads == 1 and not combine else out


def published_test_protocol(forward, x, factor=8):
    """Reflect-pad right/bottom to a multiple of ``factor``, run ``forward``, crop (published test scripts)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, (factor - w % factor) % factor, 0, (factor - h % factor) % factor), 'reflect')
    return forward(padded)[..., :h, :w]


def _randomize(model, seed=0):
    """Give the temperatures and LayerNorm parameters non-trivial values (they start at 1 / 1 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('temperature'):
                param.copy_(0.2 + 3 * torch.rand(param.shape, generator=gen))
            elif name.endswith('body.weight'):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=gen))
            elif name.endswith('body.bias'):
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    return model


def _restormer(seed=0, **config):
    torch.manual_seed(seed)
    return _randomize(Restormer(**config), seed + 1).eval()


def _mh_restormer(config, num_heads=4, combine=True, seed=0):
    torch.manual_seed(seed)
    net = MultiHeadArch(backbone=dict(type='Restormer', **config), num_heads=num_heads, combine=combine)
    return _randomize(net, seed + 1).eval()


def _assert_close(actual, expected, atol=1e-5):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# --------------------------------------------------------------------------------------------------------------------
# (a) registration and the parameter layout of the published checkpoints
# --------------------------------------------------------------------------------------------------------------------
def test_registered_and_buildable():
    assert ARCH_REGISTRY.get('Restormer') is Restormer
    from basicsr.archs import build_network
    net = build_network(dict(type='Restormer', **TINY))
    assert isinstance(net, Restormer)
    assert state_layout(net.state_dict()) == reference_layout(**TINY)
    import basicsr_mh.archs.restormer_arch as module
    assert 'import einops' not in Path(module.__file__).read_text()  # the reference code needs einops; we don't


def test_default_arguments_are_published():
    import inspect
    params = inspect.signature(Restormer).parameters
    assert list(params) == list(DEFAULT)
    for name, value in DEFAULT.items():
        default = params[name].default
        assert (list(default) if isinstance(default, tuple) else default) == value, name


@pytest.mark.parametrize(
    'config, n_params', [(DEFAULT, DEFAULT_PARAMS), (DUAL_PIXEL, DUAL_PIXEL_PARAMS), (BIAS_FREE, BIAS_FREE_PARAMS)],
    ids=['motion-deblurring', 'dual-pixel', 'bias-free'])
def test_published_layout(config, n_params):
    expected = reference_layout(**config)
    assert sum(torch.Size(shape).numel() for _, shape in expected) == n_params
    with torch.device('meta'):
        model = Restormer(**config)
    assert state_layout(model.state_dict()) == expected
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert not list(model.buffers())


def test_default_constructor_is_motion_deblurring_config():
    with torch.device('meta'):
        model = Restormer()
    assert state_layout(model.state_dict()) == reference_layout(**DEFAULT)


@pytest.mark.parametrize('config', [TINY, TINY_BIAS_FREE, TINY_DUAL, SMALL], ids=['tiny', 'bias-free', 'dual', 'small'])
def test_small_layout_and_strict_load(config):
    model = _restormer(**config)
    assert state_layout(model.state_dict()) == reference_layout(**config)
    other = Restormer(**config)
    other.load_state_dict(model.state_dict(), strict=True)


def test_bad_options():
    with pytest.raises(ValueError, match='LayerNorm_type'):
        Restormer(**dict(TINY, LayerNorm_type='withbias'))
    with pytest.raises(ValueError, match='heads'):
        Restormer(**dict(TINY, heads=[3, 1, 2, 2]))
    with pytest.raises(ValueError, match='4 entries'):
        Restormer(**dict(TINY, num_blocks=[1, 1, 1]))


# --------------------------------------------------------------------------------------------------------------------
# (b) outputs: the published forward for multiples of 8, padding and cropping for any size
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('config', [TINY, TINY_BIAS_FREE, TINY_DUAL, SMALL], ids=['tiny', 'bias-free', 'dual', 'small'])
def test_matches_oracle_multiple_of_8(config):
    model = _restormer(**config)
    x = torch.rand(2, model.patch_embed.proj.in_channels, 24, 40)
    assert model.check_image_size(x) is x
    with torch.no_grad():
        out = model(x)
        expected = oracle_forward(model.state_dict(), x)
    assert out.shape == (2, 3, 24, 40)
    _assert_close(out, expected)


@pytest.mark.parametrize('config', [TINY, TINY_BIAS_FREE, TINY_DUAL], ids=['tiny', 'bias-free', 'dual'])
def test_odd_sizes_follow_published_test_protocol(config):
    model = _restormer(**config)
    in_ch = model.patch_embed.proj.in_channels
    for size in [(1, in_ch, 37, 45), (2, in_ch, 17, 23), (1, in_ch, 8, 13)]:
        x = torch.rand(size)
        with torch.no_grad():
            out = model(x)
            padded = published_test_protocol(model, x)
            expected = published_test_protocol(lambda t: oracle_forward(model.state_dict(), t), x)
        assert out.shape == (size[0], 3) + size[2:]
        _assert_close(out, padded, atol=1e-6)
        _assert_close(out, expected)


@pytest.mark.parametrize('size', [(1, 3, 1, 1), (1, 3, 3, 5), (2, 3, 4, 12), (1, 3, 12, 2), (1, 3, 7, 8)])
def test_tiny_sizes_pad_by_reflect_or_replicate(size):
    model = _restormer(**TINY)
    x = torch.rand(size)
    h, w = size[2:]
    padded = model.check_image_size(x)
    assert padded.shape[2:] == (-(-h // 8) * 8, -(-w // 8) * 8)
    expected = x
    pad_w, pad_h = padded.shape[3] - w, padded.shape[2] - h
    expected = F.pad(expected, (0, pad_w, 0, 0), 'reflect' if pad_w < w else 'replicate')
    expected = F.pad(expected, (0, 0, 0, pad_h), 'reflect' if pad_h < h else 'replicate')
    assert torch.equal(padded, expected)
    with torch.no_grad():
        out = model(x)
    assert out.shape == size and torch.isfinite(out).all()


def test_identity_when_output_is_zero():
    model = _restormer(**TINY)
    with torch.no_grad():
        model.output.weight.zero_()
    x = torch.rand(2, 3, 13, 19)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_gradient_flows_to_every_parameter():
    for config in (TINY_BIAS_FREE, TINY_DUAL):
        model = _restormer(**config).train()
        x = torch.rand(2, model.patch_embed.proj.in_channels, 13, 21, requires_grad=True)
        model(x).square().mean().backward()
        assert x.grad is not None and torch.count_nonzero(x.grad) > 0
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
            assert torch.count_nonzero(param.grad) > 0, name


# --------------------------------------------------------------------------------------------------------------------
# (c) layer norms
# --------------------------------------------------------------------------------------------------------------------
def _layer_norm64(x, weight, bias):
    """Published formulas in float64 on the channel dim of an NCHW tensor (biased variance, eps 1e-5)."""
    x = x.double()
    mu = x.mean(1, keepdim=True)
    sigma = ((x - mu)**2).mean(1, keepdim=True)
    if bias is None:
        return x / torch.sqrt(sigma + 1e-5) * weight.double().view(1, -1, 1, 1)
    return (x - mu) / torch.sqrt(sigma + 1e-5) * weight.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)


@pytest.mark.parametrize('layer_norm_type', ['WithBias', 'BiasFree'])
def test_layer_norm_values_and_gradients(layer_norm_type):
    torch.manual_seed(0)
    norm = _randomize(RestormerLayerNorm(5, layer_norm_type))
    body_type = WithBiasLayerNorm if layer_norm_type == 'WithBias' else BiasFreeLayerNorm
    assert isinstance(norm.body, body_type)
    expected_keys = ['body.weight', 'body.bias'] if layer_norm_type == 'WithBias' else ['body.weight']
    assert list(norm.state_dict()) == expected_keys
    x = 2 * torch.randn(2, 5, 4, 3) + 0.7  # a non-zero mean: BiasFree must not subtract it
    out = norm(x)
    assert out.shape == x.shape
    expected = _layer_norm64(x, norm.body.weight.detach(), getattr(norm.body, 'bias', None))
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    # agrees with the functional oracle's LayerNorm, gradients included
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    grad_out = torch.randn_like(x)
    (norm(x1) * grad_out).sum().backward()
    sd = OrderedDict((k, v.detach()) for k, v in norm.state_dict(keep_vars=True).items())
    (_layer_norm(x2, sd, '') * grad_out).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# (d) MultiHeadArch on Restormer: reference MHRestormer layout and forward
# --------------------------------------------------------------------------------------------------------------------
def _reference_mh_state_dict(config, num_heads, seed=3):
    """A reference-MHRestormer-shaped state_dict: a plain one with an ``output`` conv of ``K * C`` channels."""
    sd = _restormer(seed=seed, **config).state_dict()
    gen = torch.Generator().manual_seed(seed)
    weight = sd['output.weight']
    sd['output.weight'] = 0.1 * torch.randn((num_heads * weight.shape[0], ) + weight.shape[1:], generator=gen)
    if 'output.bias' in sd:
        sd['output.bias'] = 0.1 * torch.randn(num_heads * weight.shape[0], generator=gen)
    return sd


@pytest.mark.parametrize('combine, n_out', [(True, 10), (False, 4)], ids=['combine', 'separate'])
def test_multihead_restormer_layout_and_shapes(combine, n_out):
    net = _mh_restormer(TINY, num_heads=4, combine=combine)
    assert net.head_layer_names == ['output']
    assert net.output_scales == {0: 1.0}
    assert isinstance(net.backbone.output, MultiHeadConv2d)
    if combine:
        assert extended_head_pairs(4, True) == PAIRS_K4
    plain = Restormer(**TINY)
    layout = state_layout(plain.state_dict())
    index = [k for k, _ in layout].index('output.weight')
    layout[index] = ('output.weight', (12, 16, 3, 3))
    assert state_layout(net.state_dict()) == layout
    n_plain = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in net.parameters()) == n_plain + 3 * plain.output.weight.numel()
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, n_out, 3, 37, 45)


@pytest.mark.parametrize('config', [TINY, TINY_BIAS_FREE], ids=['tiny', 'bias-free'])
@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'separate'])
def test_multihead_restormer_matches_oracle(config, combine):
    sd = _reference_mh_state_dict(config, num_heads=4)
    net = _mh_restormer(config, num_heads=4, combine=combine, seed=5)
    net.load_state_dict(sd, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, sd[key]), key
    for size in [(2, 3, 24, 32), (1, 3, 37, 45)]:
        x = torch.rand(size)
        with torch.no_grad():
            out = net(x)
            expected = published_test_protocol(lambda t: oracle_forward(sd, t, num_heads=4, combine=combine), x)
        assert out.shape == (size[0], 10 if combine else 4, 3) + size[2:]
        _assert_close(out, expected)


def test_multihead_dual_pixel_restormer():
    net = _mh_restormer(TINY_DUAL, num_heads=3, combine=True)
    assert net.head_layer_names == ['output']
    sd = net.state_dict()
    x = torch.rand(1, 6, 16, 24)
    with torch.no_grad():
        out = net(x)
        expected = oracle_forward(sd, x, num_heads=3, combine=True)
    assert out.shape == (1, 6, 3, 16, 24)
    _assert_close(out, expected)


def test_single_head_checkpoint_warm_starts_every_head():
    plain = _restormer(seed=7, **TINY)
    net = _mh_restormer(TINY, num_heads=3, combine=True)
    net.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(1, 3, 21, 19)
    with torch.no_grad():
        expected = plain(x)
        out = net(x)
    assert out.shape == (1, 6, 3, 21, 19)
    for k in range(6):
        _assert_close(out[:, k], expected)


def test_multihead_gradients_reach_each_head_only_through_its_output():
    net = _mh_restormer(TINY, num_heads=2, combine=False).train()
    x = torch.rand(1, 3, 16, 16)
    out = net(x)
    out[:, 1].square().mean().backward()
    grad = net.backbone.output.weight.grad
    assert torch.count_nonzero(grad[:3]) == 0 and torch.count_nonzero(grad[3:]) > 0


# --------------------------------------------------------------------------------------------------------------------
# (e) same outputs as the published code (optional: needs a checkout of the reference repository and einops)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def reference():
    with load_reference('restormer', ('restormer_arch', ), needs=('einops', )) as modules:
        if (Path(modules['restormer_arch'].__file__).parent / 'mhrestormer_arch.py').is_file():
            with load_reference('restormer', ('restormer_arch', 'mhrestormer_arch'), needs=('einops', )) as both:
                modules = both
        yield modules


@pytest.mark.parametrize(
    'config, size', [(TINY, (2, 3, 24, 40)), (TINY_BIAS_FREE, (1, 3, 37, 45)), (TINY_DUAL, (1, 6, 16, 21)),
                     (SMALL, (1, 3, 32, 24)), (DEFAULT, (1, 3, 24, 16))],
    ids=['tiny', 'bias-free', 'dual', 'small', 'default'])
def test_matches_reference(reference, config, size):
    torch.manual_seed(0)
    ref_net = _randomize(reference['restormer_arch'].Restormer(**config), seed=1).eval()
    net = Restormer(**config).eval()
    assert state_layout(net.state_dict()) == state_layout(ref_net.state_dict())
    net.load_state_dict(ref_net.state_dict(), strict=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref_net.parameters())
    x = torch.rand(size)
    with torch.no_grad():
        expected = published_test_protocol(ref_net, x)
        out = net(x)
        oracle = published_test_protocol(lambda t: oracle_forward(ref_net.state_dict(), t), x)
    assert out.shape == (size[0], 3) + size[2:]
    _assert_close(out, expected)
    _assert_close(oracle, expected)


@pytest.mark.parametrize('config', [TINY, SMALL], ids=['tiny', 'small'])
@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'separate'])
def test_multihead_matches_reference(reference, config, combine):
    if 'mhrestormer_arch' not in reference:
        pytest.skip('the reference checkout has no mhrestormer_arch.py')
    torch.manual_seed(0)
    ref_net = reference['mhrestormer_arch'].MHRestormer(**config, n_heads=4, combinate_heads=combine)
    ref_net = _randomize(ref_net, seed=1).eval()
    net = _mh_restormer(config, num_heads=4, combine=combine, seed=2)
    assert state_layout(net.state_dict()) == state_layout(ref_net.state_dict())
    net.load_state_dict(ref_net.state_dict(), strict=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref_net.parameters())
    for size in [(2, 3, 32, 24), (1, 3, 37, 45)]:
        x = torch.rand(size)
        with torch.no_grad():
            expected = published_test_protocol(ref_net, x)
            out = net(x)
            oracle = published_test_protocol(
                lambda t: oracle_forward(ref_net.state_dict(), t, num_heads=4, combine=combine), x)
        assert out.shape == (size[0], 10 if combine else 4, 3) + size[2:]
        _assert_close(out, expected)
        _assert_close(oracle, expected)
