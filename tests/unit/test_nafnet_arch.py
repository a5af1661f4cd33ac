"""Tests for :mod:`basicsr_mh.archs.nafnet_arch` and the blocks of :mod:`basicsr_mh.archs.arch_util`.

The parameter layout is checked against an independent listing written from the published NAFNet definition
(megvii-research/NAFNet, ``basicsr/models/archs/NAFNet_arch.py``). An optional test compares the outputs with the
published code itself: set ``BASICSR_MH_REFERENCE`` to a checkout of the NAFNet repository or of the multi-output
deblurring repository (with ``NAFNet-main/basicsr/models/archs/NAFNet_arch.py``); it is skipped otherwise.
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import load_reference, state_layout
from torch import nn as nn

from basicsr_mh.archs.arch_util import LayerNorm2d, SimpleGate
from basicsr_mh.archs.nafnet_arch import NAFBlock, NAFNet

# configurations of the published GoPro models (options/test/GoPro/NAFNet-width{32,64}.yml)
GOPRO_WIDTH32 = dict(img_channel=3, width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1])
GOPRO_WIDTH64 = dict(img_channel=3, width=64, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1])
# parameter counts of the published implementation, counted with its own code
GOPRO_WIDTH32_PARAMS = 17111907
GOPRO_WIDTH64_PARAMS = 67888835

TINY = dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def reference_block_layout(prefix, c):
    """List the parameters of one published NAFBlock with ``c`` channels (DW_Expand = FFN_Expand = 2).

    Args:
        prefix (str): Key prefix, e.g. ``'encoders.0.0.'``.
        c (int): Channels of the block.

    Returns:
        list[tuple[str, tuple[int, ...]]]: ``(key, shape)`` pairs in state_dict order (a module's own parameters
        come before those of its children, children in the order of creation).
    """
    dw, ffn = 2 * c, 2 * c
    layout = [('beta', (1, c, 1, 1)), ('gamma', (1, c, 1, 1)), ('conv1.weight', (dw, c, 1, 1)), ('conv1.bias', (dw, )),
              ('conv2.weight', (dw, 1, 3, 3)), ('conv2.bias', (dw, )), ('conv3.weight', (c, dw // 2, 1, 1)),
              ('conv3.bias', (c, )), ('sca.1.weight', (dw // 2, dw // 2, 1, 1)), ('sca.1.bias', (dw // 2, )),
              ('conv4.weight', (ffn, c, 1, 1)), ('conv4.bias', (ffn, )), ('conv5.weight', (c, ffn // 2, 1, 1)),
              ('conv5.bias', (c, )), ('norm1.weight', (c, )), ('norm1.bias', (c, )), ('norm2.weight', (c, )),
              ('norm2.bias', (c, ))]
    return [(prefix + name, shape) for name, shape in layout]


def reference_layout(img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums):
    """List the state_dict of the published NAFNet for a configuration, by the published construction rules.

    The published ``__init__`` creates ``intro``, ``ending``, ``encoders``, ``decoders``, ``middle_blks``, ``ups``,
    ``downs`` in this order; encoder stage ``i`` works at ``width * 2**i`` channels and its ``downs[i]`` is a 2x2
    stride-2 conv to twice the channels; ``ups[i]`` is a bias-free 1x1 conv to twice the channels followed by
    PixelShuffle(2), which halves the channels.

    Returns:
        list[tuple[str, tuple[int, ...]]]: ``(key, shape)`` pairs in state_dict order.
    """
    chans_enc = [width * 2**i for i in range(len(enc_blk_nums))]
    chan_mid = width * 2**len(enc_blk_nums)
    chans_dec = [chan_mid // 2**(i + 1) for i in range(len(dec_blk_nums))]

    layout = [('intro.weight', (width, img_channel, 3, 3)), ('intro.bias', (width, )),
              ('ending.weight', (img_channel, width, 3, 3)), ('ending.bias', (img_channel, ))]
    for i, (num, c) in enumerate(zip(enc_blk_nums, chans_enc)):
        for j in range(num):
            layout += reference_block_layout(f'encoders.{i}.{j}.', c)
    for i, (num, c) in enumerate(zip(dec_blk_nums, chans_dec)):
        for j in range(num):
            layout += reference_block_layout(f'decoders.{i}.{j}.', c)
    for j in range(middle_blk_num):
        layout += reference_block_layout(f'middle_blks.{j}.', chan_mid)
    for i, c in enumerate(chans_dec):
        layout.append((f'ups.{i}.0.weight', (4 * c, 2 * c, 1, 1)))
    for i, c in enumerate(chans_enc):
        layout += [(f'downs.{i}.weight', (2 * c, c, 2, 2)), (f'downs.{i}.bias', (2 * c, ))]
    return layout


def _build_on_meta(**kwargs):
    """Build a NAFNet without allocating its weights (for layout checks of the large models)."""
    with torch.device('meta'):
        return NAFNet(**kwargs)


def _randomize_block_scalars(model, seed=0):
    """Give beta, gamma and the LayerNorm affine parameters non-trivial values (they start at 0 / 1 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(('beta', 'gamma')):
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
            elif '.norm' in name:
                base = 1.0 if name.endswith('weight') else 0.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
    return model


# --------------------------------------------------------------------------------------------------------------------
# (a) parameter layout of the published checkpoints
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    'config, n_params', [(GOPRO_WIDTH32, GOPRO_WIDTH32_PARAMS), (GOPRO_WIDTH64, GOPRO_WIDTH64_PARAMS)],
    ids=['gopro-width32', 'gopro-width64'])
def test_published_layout(config, n_params):
    expected = reference_layout(**config)
    assert sum(torch.Size(shape).numel() for _, shape in expected) == n_params
    model = _build_on_meta(**config)
    assert state_layout(model) == expected
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert not list(model.buffers())


def test_layout_small_config_and_strict_load():
    config = dict(img_channel=1, width=4, middle_blk_num=2, enc_blk_nums=[2, 1, 3], dec_blk_nums=[1, 2, 1])
    model = NAFNet(**config)
    assert state_layout(model) == reference_layout(**config)
    other = NAFNet(**config)
    other.load_state_dict(_randomize_block_scalars(model).state_dict(), strict=True)


def test_tlc_ready_pool_modules():
    model = NAFNet(**TINY)
    blocks = [m for m in model.modules() if isinstance(m, NAFBlock)]
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert len(blocks) == 5 and len(pools) == len(blocks)
    assert all(block.sca[0].output_size == 1 for block in blocks)


# --------------------------------------------------------------------------------------------------------------------
# (b) same outputs as the published code (optional: needs a checkout of the reference repository)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def reference():
    with load_reference('nafnet', ('arch_util', 'local_arch', 'NAFNet_arch'), package=True) as modules:
        yield modules


@pytest.mark.parametrize(
    'config, size',
    [(TINY, (2, 3, 17, 23)),
     (dict(img_channel=3, width=8, middle_blk_num=2, enc_blk_nums=[2, 1, 1], dec_blk_nums=[1, 1, 2]), (1, 3, 30, 41)),
     (GOPRO_WIDTH32, (1, 3, 48, 40))],
    ids=['tiny', 'small', 'gopro-width32'])
def test_matches_reference(reference, config, size):
    torch.manual_seed(0)
    ref_net = _randomize_block_scalars(reference['NAFNet_arch'].NAFNet(**config), seed=1)
    net = NAFNet(**config)
    assert state_layout(net) == state_layout(ref_net)
    net.load_state_dict(ref_net.state_dict(), strict=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref_net.parameters())

    x = torch.rand(size)
    with torch.no_grad():
        expected = ref_net(x)
        out = net(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_layernorm_matches_reference(reference):
    torch.manual_seed(0)
    ref_ln = reference['arch_util'].LayerNorm2d(6)
    ln = LayerNorm2d(6)
    with torch.no_grad():
        ref_ln.weight.normal_(1.0, 0.2)
        ref_ln.bias.normal_(0.0, 0.2)
    ln.load_state_dict(ref_ln.state_dict(), strict=True)
    x_ref = (3 * torch.randn(2, 6, 5, 7) + 1).requires_grad_(True)
    x = x_ref.detach().clone().requires_grad_(True)
    grad_out = torch.randn(2, 6, 5, 7)
    y_ref, y = ref_ln(x_ref), ln(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    (y_ref * grad_out).sum().backward()
    (y * grad_out).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ln.weight.grad, ref_ln.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ln.bias.grad, ref_ln.bias.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# (c) behaviour
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('size', [(2, 3, 37, 45), (1, 3, 17, 23), (1, 3, 1, 1), (1, 3, 8, 8)])
def test_forward_shapes(size):
    torch.manual_seed(0)
    model = _randomize_block_scalars(NAFNet(**TINY)).eval()
    with torch.no_grad():
        out = model(torch.rand(size))
    assert out.shape == size
    assert torch.isfinite(out).all()


def test_no_encoder_default_config():
    model = NAFNet()
    assert model.padder_size == 1
    x = torch.rand(1, 3, 5, 7)
    assert model(x).shape == x.shape


def test_padding_is_zero_right_bottom():
    torch.manual_seed(0)
    model = _randomize_block_scalars(NAFNet(**TINY)).eval()
    assert model.padder_size == 4
    x = torch.rand(1, 3, 17, 23)
    padded = torch.zeros(1, 3, 20, 24)
    padded[:, :, :17, :23] = x
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[:, :, :17, :23])


def test_identity_when_ending_is_zero():
    torch.manual_seed(0)
    model = NAFNet(**TINY).eval()
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if n.endswith(('beta', 'gamma')))
    with torch.no_grad():
        model.ending.weight.zero_()
        model.ending.bias.zero_()
    x = torch.rand(2, 3, 13, 19)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_block_is_identity_at_init():
    torch.manual_seed(0)
    block = NAFBlock(6).eval()
    x = torch.randn(2, 6, 9, 11)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_gradient_flows_to_every_parameter():
    torch.manual_seed(0)
    model = _randomize_block_scalars(NAFNet(**TINY)).train()
    x = torch.rand(2, 3, 17, 23, requires_grad=True)
    model(x).square().mean().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert torch.count_nonzero(param.grad) > 0, name


def test_nafblock_options():
    block = NAFBlock(4, DW_Expand=4, FFN_Expand=3, drop_out_rate=0.5)
    assert block.conv1.out_channels == 16 and block.conv3.in_channels == 8 and block.sca[1].in_channels == 8
    assert block.conv4.out_channels == 12 and block.conv5.in_channels == 6
    assert isinstance(block.dropout1, nn.Dropout) and isinstance(block.dropout2, nn.Dropout)
    assert block(torch.randn(1, 4, 6, 5)).shape == (1, 4, 6, 5)
    default = NAFBlock(4)
    assert isinstance(default.dropout1, nn.Identity) and isinstance(default.dropout2, nn.Identity)


def _layernorm_reference64(x, weight, bias, eps):
    """Channel LayerNorm computed in float64 with explicit per-pixel loops over the channel values."""
    x64, out = x.double(), torch.empty(x.shape, dtype=torch.float64)
    n, c, h, w = x.shape
    for i in range(n):
        for r in range(h):
            for s in range(w):
                values = x64[i, :, r, s]
                mean = values.sum() / c
                var = ((values - mean)**2).sum() / c
                out[i, :, r, s] = (values - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()
    return out


def test_layernorm2d_values_and_gradients():
    torch.manual_seed(0)
    ln = LayerNorm2d(5)
    assert ln.eps == 1e-6
    assert ln.weight.shape == (5, ) and ln.bias.shape == (5, )
    assert torch.equal(ln.weight, torch.ones(5)) and torch.equal(ln.bias, torch.zeros(5))
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.3)
        ln.bias.normal_(0.0, 0.3)
    x = 2 * torch.randn(2, 5, 4, 3) + 0.5
    out = ln(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    expected = _layernorm_reference64(x, ln.weight.detach(), ln.bias.detach(), 1e-6)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    # agrees with torch's layer_norm applied on channels-last
    channels_last = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (5, ), ln.weight, ln.bias, eps=1e-6)
    torch.testing.assert_close(out, channels_last.permute(0, 3, 1, 2), rtol=0, atol=1e-5)

    ln64 = LayerNorm2d(3, eps=1e-3).double()
    with torch.no_grad():
        ln64.weight.normal_(1.0, 0.3)
        ln64.bias.normal_(0.0, 0.3)
    x64 = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    weight = ln64.weight.detach().clone().requires_grad_(True)
    bias = ln64.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda inp, w, b: torch.func.functional_call(ln64, {
            'weight': w,
            'bias': b
        }, (inp, )), (x64, weight, bias))


def test_layernorm2d_backward_equals_autograd_of_the_plain_ops():
    torch.manual_seed(1)
    ln = LayerNorm2d(16)
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.3)
        ln.bias.normal_(0.0, 0.3)
    x = (3 * torch.randn(2, 16, 9, 7) + 1).requires_grad_(True)
    grad_out = torch.randn(2, 16, 9, 7)
    ln(x).backward(grad_out)
    x_plain = x.detach().clone().requires_grad_(True)
    w, b = ln.weight.detach().clone().requires_grad_(True), ln.bias.detach().clone().requires_grad_(True)
    centered = x_plain - x_plain.mean(1, keepdim=True)
    y = centered / (centered.pow(2).mean(1, keepdim=True) + 1e-6).sqrt()
    (w.view(1, -1, 1, 1) * y + b.view(1, -1, 1, 1)).backward(grad_out)
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ln.weight.grad, w.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ln.bias.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_simple_gate():
    x = torch.randn(2, 6, 4, 5)
    out = SimpleGate()(x)
    assert out.shape == (2, 3, 4, 5)
    torch.testing.assert_close(out, x[:, :3] * x[:, 3:])


def test_registered_and_buildable():
    assert ARCH_REGISTRY.get('NAFNet') is NAFNet
    from basicsr.archs import build_network
    net = build_network(dict(type='NAFNet', **TINY))
    assert isinstance(net, NAFNet)
    assert state_layout(net) == reference_layout(**TINY)
