"""Tests for :mod:`basicsr_mh.archs.hinet_arch` (HINet, HINetLocal) and MultiHeadArch on HINet.

The parameter layout is checked against an independent listing written from the published HINet definition
(``NAFNet-main/basicsr/models/archs/hinet_arch.py`` of Liu-SD/multi-output-deblur, from megvii-research/HINet). The
multi-head HINet is checked against a functional oracle of the reference ``MHHINet`` (``mhhinet_arch.py``): the plain
HINet with ``sam12.conv2`` / ``last`` set to one head's weights, and for stage 2 a SAM whose ``conv3`` reads the K
stage-1 head images concatenated. Optional tests run the published code (see ``test_local_arch.py`` for
``BASICSR_MH_REFERENCE``).
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import copy
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from collections import OrderedDict
# helpers of the TLC tests (pytest puts tests/ on sys.path: the folder has no __init__.py)
from conftest import load_reference, state_layout
from torch import nn as nn
from torch.nn import functional as F

from basicsr_mh.archs.hinet_arch import HINet, HINetLocal, pad_to_size
from basicsr_mh.archs.local_arch import LocalAvgPool2d
from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.archs.multihead_layers import MultiHeadConv2d, MultiHeadInputConv2d
from basicsr_mh.heads import extended_head_pairs

TINY = dict(wf=8, depth=3, hin_position_left=1, hin_position_right=2)
DEFAULT_PARAMS = 88669702  # HINet() counted with the published code
GOPRO_PARAMS = 88668806  # HINet(hin_position_left=3, hin_position_right=4), the published GoPro model

pytestmark = pytest.mark.usefixtures('one_thread')


# --------------------------------------------------------------------------------------------------------------------
# layout of the published model
# --------------------------------------------------------------------------------------------------------------------
def reference_layout(in_chn=3, wf=64, depth=5, relu_slope=0.2, hin_position_left=0, hin_position_right=4):
    """``(key, shape)`` pairs of the published HINet's state_dict, in order, from its construction rules.

    Published order: ``down_path_1``, ``down_path_2`` (filled in the first loop), ``conv_01``, ``conv_02``,
    ``up_path_1``, ``up_path_2``, ``skip_conv_1``, ``skip_conv_2`` (filled in the second loop), ``sam12``, ``cat12``,
    ``last``. A UNetConvBlock holds ``identity`` (1x1), ``conv_1``, ``conv_2`` (3x3), then ``csff_enc``/``csff_dec``
    (3x3, stage-2 blocks that downsample), ``norm`` (affine InstanceNorm of half the channels, HIN levels), and
    ``downsample`` (4x4 stride-2, bias-free) last. An up block is a 2x2 transposed conv ``up`` and a plain block.
    The published SAM image has 3 channels whatever ``in_chn`` (which only works for ``in_chn`` 3, or 1 by
    broadcasting); here it has ``in_chn`` channels, the same for the published ``in_chn=3``.
    """

    def conv(name, cin, cout, k, bias=True):
        return [(f'{name}.weight', (cout, cin, k, k))] + ([(f'{name}.bias', (cout, ))] if bias else [])

    def block(prefix, cin, cout, downsample, csff=False, hin=False):
        out = conv(prefix + 'identity', cin, cout, 1) + conv(prefix + 'conv_1', cin, cout, 3)
        out += conv(prefix + 'conv_2', cout, cout, 3)
        if downsample and csff:
            out += conv(prefix + 'csff_enc', cout, cout, 3) + conv(prefix + 'csff_dec', cout, cout, 3)
        if hin:
            out += [(prefix + 'norm.weight', (cout // 2, )), (prefix + 'norm.bias', (cout // 2, ))]
        if downsample:
            out += conv(prefix + 'downsample', cout, cout, 4, bias=False)
        return out

    path1, path2, up1, up2, skip1, skip2 = [], [], [], [], [], []
    prev = wf
    for i in range(depth):
        hin = hin_position_left <= i <= hin_position_right
        down = i + 1 < depth
        path1 += block(f'down_path_1.{i}.', prev, wf * 2**i, down, hin=hin)
        path2 += block(f'down_path_2.{i}.', prev, wf * 2**i, down, csff=down, hin=hin)
        prev = wf * 2**i
    for n, i in enumerate(reversed(range(depth - 1))):
        c = wf * 2**i
        for path, name in ((up1, 'up_path_1'), (up2, 'up_path_2')):
            path += [(f'{name}.{n}.up.weight', (prev, c, 2, 2)), (f'{name}.{n}.up.bias', (c, ))]
            path += block(f'{name}.{n}.conv_block.', prev, c, False)
        skip1 += conv(f'skip_conv_1.{n}', c, c, 3)
        skip2 += conv(f'skip_conv_2.{n}', c, c, 3)
        prev = c
    layout = path1 + path2 + conv('conv_01', in_chn, wf, 3) + conv('conv_02', in_chn, wf, 3)
    layout += up1 + up2 + skip1 + skip2
    layout += conv('sam12.conv1', prev, prev, 3) + conv('sam12.conv2', prev, in_chn, 3)
    layout += conv('sam12.conv3', in_chn, prev, 3)
    layout += conv('cat12', 2 * prev, prev, 1) + conv('last', prev, in_chn, 3)
    return layout


def randomize(model, seed=0):
    """Give every bias and norm affine parameter non-trivial values (biases start at 0, norms at 1 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                base = 1.0 if 'norm.weight' in name else 0.0
                param.copy_(base + 0.2 * torch.randn(param.shape, generator=gen))
    return model


@pytest.mark.parametrize(
    'config, n_params', [({}, DEFAULT_PARAMS), (dict(hin_position_left=3, hin_position_right=4), GOPRO_PARAMS)],
    ids=['default', 'gopro'])
def test_published_layout_and_parameter_count(config, n_params):
    expected = reference_layout(**config)
    assert sum(torch.Size(shape).numel() for _, shape in expected) == n_params
    with torch.device('meta'):
        model = HINet(**config)
        local = HINetLocal(**config)
    assert state_layout(model) == expected == state_layout(local)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert not list(model.buffers())


def test_small_layouts_registration_and_strict_load():
    assert ARCH_REGISTRY.get('HINet') is HINet and ARCH_REGISTRY.get('HINetLocal') is HINetLocal
    from basicsr.archs import build_network
    for config in (TINY, dict(in_chn=1, wf=4, depth=2, hin_position_left=0, hin_position_right=0), dict(wf=4, depth=1)):
        net = build_network(dict(type='HINet', **config))
        assert state_layout(net) == reference_layout(**config)
        other = HINetLocal(**config)
        other.load_state_dict(randomize(net).state_dict(), strict=True)


# --------------------------------------------------------------------------------------------------------------------
# behaviour
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('size', [(2, 3, 17, 23), (1, 3, 5, 7), (1, 3, 1, 1), (1, 3, 4, 4), (1, 3, 8, 12)])
def test_any_size_forward(size):
    torch.manual_seed(0)
    net = randomize(HINet(**TINY)).eval()
    with torch.no_grad():
        outs = net(torch.rand(size))
    assert isinstance(outs, list) and len(outs) == 2
    assert all(o.shape == size and torch.isfinite(o).all() for o in outs)
    assert HINet.final_output_index == -1


def test_padding_is_right_bottom_reflection_then_crop():
    torch.manual_seed(0)
    net = randomize(HINet(**TINY)).eval()
    assert net.size_multiple == 4 and net.padded_size(17, 23) == (20, 24)
    assert net.padded_size(4, 4) == (4, 8)  # HIN at the lowest level needs more than one pixel there
    assert HINet(wf=4, depth=3, hin_position_left=0, hin_position_right=1).padded_size(4, 4) == (4, 4)
    x = torch.rand(1, 3, 17, 23)
    padded = torch.cat([x, x.flip(-2)[:, :, 1:4]], dim=2)  # reflection excludes the edge row
    padded = torch.cat([padded, padded.flip(-1)[:, :, :, 1:2]], dim=3)
    torch.testing.assert_close(pad_to_size(x, 20, 24), padded, rtol=0, atol=0)
    with torch.no_grad():
        outs, full = net(x), net(padded)
    for o, f in zip(outs, full):
        torch.testing.assert_close(o, f[:, :, :17, :23], rtol=0, atol=0)
    tiny = torch.rand(1, 3, 2, 3)
    assert pad_to_size(tiny, 4, 4)[:, :, 3, 3].equal(tiny[:, :, 1, 2])  # replication where reflection cannot


def test_hinetlocal_is_hinet():
    torch.manual_seed(0)
    local = randomize(HINetLocal(**TINY, train_size=(1, 3, 16, 16)))
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, LocalAvgPool2d)) for m in local.modules())
    plain = HINet(**TINY)
    plain.load_state_dict(local.state_dict(), strict=True)
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        for a, b in zip(local.eval()(x), plain.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = randomize(HINet(**TINY)).train()
    x = torch.rand(2, 3, 12, 16, requires_grad=True)
    out1, out2 = net(x)
    (out1.square().mean() + out2.square().mean()).backward()
    assert torch.count_nonzero(x.grad) > 0
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name


# --------------------------------------------------------------------------------------------------------------------
# MultiHeadArch on HINet: both stages get heads
# --------------------------------------------------------------------------------------------------------------------
def plain_state(mh_state, picks, in_layers=(), channels=3):
    """A plain backbone's state_dict from a multi-head one.

    Args:
        mh_state (dict): multi-head state_dict.
        picks (dict[str, int | str]): for each grown output layer, the head to keep, or ``'mean'`` for the mean of
            the heads' weights (a conv of the mean of the heads' outputs).
        in_layers (Sequence[str]): layers whose input channels were grown; they keep head 0's slice (a placeholder
            for tests that replace that layer's use).
        channels (int): channels per head.
    """
    out = OrderedDict((k, v.clone()) for k, v in mh_state.items())
    for layer, head in picks.items():
        for suffix in ('.weight', '.bias'):
            key = layer + suffix
            if key not in out:
                continue
            heads = mh_state[key].reshape(-1, channels, *mh_state[key].shape[1:])
            out[key] = heads.mean(0) if head == 'mean' else heads[head].clone()
    for layer in in_layers:
        out[layer + '.weight'] = mh_state[layer + '.weight'][:, :channels].clone()
    return out


def all_heads_sam(sam, mh_state, prefix, num_heads):
    """Forward of the reference multi-head SAM (``mhhinet_arch.py`` / ``MHMPRNet.py``) for a plain SAM ``sam``.

    ``conv2`` has ``3 * K`` outputs; the images ``conv2(x) + x_img.repeat(1, K, 1, 1)`` (head-major) all enter
    ``conv3`` (``3 * K`` inputs). Returns a function ``(x, x_img) -> (features, head 0's image)``.
    """
    w2, b2 = mh_state[prefix + 'conv2.weight'], mh_state.get(prefix + 'conv2.bias')
    w3, b3 = mh_state[prefix + 'conv3.weight'], mh_state.get(prefix + 'conv3.bias')

    def forward(x, x_img):
        imgs = F.conv2d(x, w2, b2, padding=sam.conv2.padding) + x_img.repeat(1, num_heads, 1, 1)
        gate = torch.sigmoid(F.conv2d(imgs, w3, b3, padding=sam.conv3.padding))
        return sam.conv1(x) * gate + x, imgs[:, :3]

    return forward


def assert_pairs(out, plain_outs, pairs, atol=1e-5, what=''):
    assert out.shape[1] == len(pairs)
    for index, (i, j) in enumerate(pairs):
        torch.testing.assert_close(
            out[:, index],
            0.5 * (plain_outs[i] + plain_outs[j]),
            rtol=0,
            atol=atol,
            msg=lambda m: f'{what} extended head {index} ({i}, {j}): {m}')


def _mh_hinet(num_heads=3, combine=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = MultiHeadArch(
        backbone=dict(type='HINet', **TINY), num_heads=num_heads, combine=combine, probe_size=32, **kwargs)
    return randomize(net, seed=seed + 1).eval()


def _plain(state):
    net = HINet(**TINY).eval()
    net.load_state_dict(state, strict=True)
    return net


@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'no-combine'])
def test_multihead_hinet_both_stages_exact(combine):
    k = 3
    net = _mh_hinet(num_heads=k, combine=combine)
    assert net.head_layer_names == ['sam12.conv2', 'last']
    assert net.head_input_layers == {'sam12.conv3': 'sam12.conv2'}
    assert isinstance(net.backbone.sam12.conv2, MultiHeadConv2d) and not net.backbone.sam12.conv2.detach_mean
    assert isinstance(net.backbone.last, MultiHeadConv2d) and net.backbone.last.detach_mean
    assert isinstance(net.backbone.sam12.conv3, MultiHeadInputConv2d)

    state = net.state_dict()
    plain_layout = dict(reference_layout(**TINY))
    assert list(state) == list(plain_layout)
    grown = {
        'sam12.conv2.weight': (3 * k, 8, 3, 3),
        'sam12.conv2.bias': (3 * k, ),
        'last.weight': (3 * k, 8, 3, 3),
        'last.bias': (3 * k, ),
        'sam12.conv3.weight': (8, 3 * k, 3, 3)
    }
    assert {key: shape for key, shape in state_layout(state) if plain_layout[key] != shape} == grown
    n_plain = sum(torch.Size(s).numel() for s in plain_layout.values())
    extra = (k - 1) * (2 * (3 * 8 * 9 + 3) + 8 * 3 * 9)
    assert sum(p.numel() for p in net.parameters()) == n_plain + extra

    x = torch.rand(2, 3, 13, 18)  # padded to 16 x 20 inside
    with torch.no_grad():
        out1, out2 = net(x)
    n_out = len(extended_head_pairs(k, combine))
    assert out1.shape == out2.shape == (2, n_out, 3, 13, 18)

    stage1, stage2 = [], []
    for head in range(k):
        with torch.no_grad():
            stage1.append(_plain(plain_state(state, {'sam12.conv2': head, 'last': 0}, ['sam12.conv3']))(x)[0])
            oracle = _plain(plain_state(state, {'sam12.conv2': 0, 'last': head}, ['sam12.conv3']))
            oracle.sam12.forward = all_heads_sam(oracle.sam12, state, 'sam12.', k)
            stage2.append(oracle(x)[1])
    pairs = extended_head_pairs(k, combine)
    assert_pairs(out1, stage1, pairs, what='stage 1')
    assert_pairs(out2, stage2, pairs, what='stage 2')
    assert (stage1[0] - stage1[1]).abs().max() > 1e-3 and (stage2[0] - stage2[1]).abs().max() > 1e-3


def test_multihead_hinet_mean_feed_option():
    net = _mh_hinet(num_heads=2, combine=True, feed_all_heads=False)
    assert net.head_layer_names == ['sam12.conv2', 'last'] and net.head_input_layers == {}
    state = net.state_dict()
    assert state['sam12.conv3.weight'].shape == (8, 3, 3, 3)
    x = torch.rand(1, 3, 12, 8)
    with torch.no_grad():
        out1, out2 = net(x)
        stage1 = [_plain(plain_state(state, {'sam12.conv2': h, 'last': 0}))(x)[0] for h in range(2)]
        stage2 = [_plain(plain_state(state, {'sam12.conv2': 'mean', 'last': h}))(x)[1] for h in range(2)]
    assert_pairs(out1, stage1, extended_head_pairs(2, True), what='stage 1')
    assert_pairs(out2, stage2, extended_head_pairs(2, True), what='stage 2')


def test_single_head_checkpoint_warm_starts_both_stages():
    torch.manual_seed(0)
    plain = randomize(HINet(**TINY)).eval()
    net = _mh_hinet(num_heads=3, combine=True)
    net.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        outs, ref = net(x), plain(x)
    for out, expected in zip(outs, ref):
        for head in range(out.shape[1]):
            torch.testing.assert_close(out[:, head], expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match='num_heads'):
        _mh_hinet(num_heads=2, combine=False).load_state_dict(net.state_dict())


def test_multihead_hinet_gradients_are_per_head():
    """d(stage-1 head k)/d(params) is the plain net's with head k's sam12.conv2; other heads get none."""
    net = _mh_hinet(num_heads=3, combine=False, seed=2).train()
    state = net.state_dict()
    x = torch.rand(2, 3, 8, 8)
    grad_out = torch.randn(2, 3, 8, 8)
    (net(x)[0][:, 1] * grad_out).sum().backward()
    plain = _plain(plain_state(state, {'sam12.conv2': 1, 'last': 0}, ['sam12.conv3'])).train()
    (plain(x)[0] * grad_out).sum().backward()
    conv2 = net.backbone.sam12.conv2
    torch.testing.assert_close(conv2.weight.grad[3:6], plain.sam12.conv2.weight.grad, rtol=1e-4, atol=1e-6)
    assert conv2.weight.grad[:3].abs().max() < 1e-6 and conv2.weight.grad[6:].abs().max() < 1e-6
    torch.testing.assert_close(net.backbone.conv_01.weight.grad, plain.conv_01.weight.grad, rtol=1e-4, atol=1e-6)
    assert net.backbone.last.weight.grad is None or torch.count_nonzero(net.backbone.last.weight.grad) == 0


def test_multihead_hinet_stage2_gradient_follows_reference_semantics():
    """Stage 2 of a combined head back-propagates into every stage-1 head through sam12.conv3, as in MHHINet."""
    k = 3
    net = _mh_hinet(num_heads=k, combine=True, seed=5).train()
    state = {key: value.detach().clone() for key, value in net.state_dict().items()}
    x = torch.rand(2, 3, 8, 8)
    grad_out = torch.randn(2, 3, 8, 8)
    (net(x)[1][:, 4] * grad_out).sum().backward()  # extended head 4 = heads (2, 1)

    keys = ('sam12.conv2.weight', 'sam12.conv2.bias', 'sam12.conv3.weight', 'sam12.conv3.bias')
    leaves = {key: state[key].clone().requires_grad_(True) for key in keys}
    oracles, total = [], 0
    for head in (2, 1):
        oracle = _plain(plain_state(state, {'sam12.conv2': 0, 'last': head}, ['sam12.conv3'])).train()
        oracle.sam12.forward = all_heads_sam(oracle.sam12, dict(state, **leaves), 'sam12.', k)
        oracles.append(oracle)
        total = total + 0.5 * oracle(x)[1]
    (total * grad_out).sum().backward()
    sam12 = net.backbone.sam12
    for key, param in (('sam12.conv2.weight', sam12.conv2.weight), ('sam12.conv2.bias', sam12.conv2.bias),
                       ('sam12.conv3.weight', sam12.conv3.weight), ('sam12.conv3.bias', sam12.conv3.bias)):
        assert torch.count_nonzero(leaves[key].grad) > 0, key
        torch.testing.assert_close(param.grad, leaves[key].grad, rtol=1e-4, atol=1e-6, msg=key)
    expected = oracles[0].conv_01.weight.grad + oracles[1].conv_01.weight.grad
    torch.testing.assert_close(net.backbone.conv_01.weight.grad, expected, rtol=1e-4, atol=1e-6)


def test_multihead_hinet_deepcopy_and_float64():
    net = _mh_hinet(num_heads=2, combine=True, seed=6)
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        expected = net(x)
    ema = copy.deepcopy(net)
    conv3 = ema.backbone.sam12.conv3
    assert conv3.producer is ema.backbone.sam12.conv2 and conv3.producer is not net.backbone.sam12.conv2
    assert 'producer' not in dict(conv3.named_children())
    double = copy.deepcopy(net).double()
    with torch.no_grad():
        for a, b, c in zip(ema(x), double(x.double()), expected):
            torch.testing.assert_close(a, c, rtol=0, atol=0)
            torch.testing.assert_close(b, c.double(), rtol=0, atol=1e-5)
        ema.backbone.sam12.conv2.weight.mul_(0.5)  # the copy is independent
        torch.testing.assert_close(net(x)[0], expected[0], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# same outputs as the published code (optional)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def reference():
    with load_reference('nafnet', ('local_arch', 'hinet_arch', 'mhhinet_arch'), package=True) as modules:
        yield modules


@pytest.mark.parametrize(
    'config, size', [(TINY, (2, 3, 24, 32)), (dict(wf=8, depth=4), (1, 3, 16, 24)),
                     (dict(wf=6, depth=2, hin_position_left=1, hin_position_right=1), (1, 3, 10, 6))],
    ids=['tiny', 'depth4', 'depth2'])
@pytest.mark.parametrize('local', [False, True], ids=['HINet', 'HINetLocal'])
def test_matches_reference(reference, config, size, local):
    torch.manual_seed(0)
    if local:
        config = dict(config, train_size=(1, 3, 16, 16))
        ref_net, net = reference['hinet_arch'].HINetLocal(**config), HINetLocal(**config)
    else:
        ref_net, net = reference['hinet_arch'].HINet(**config), HINet(**config)
    ref_net, net = randomize(ref_net, seed=1).eval(), net.eval()
    assert state_layout(net) == state_layout(ref_net)
    net.load_state_dict(ref_net.state_dict(), strict=True)
    x = torch.rand(size)
    with torch.no_grad():
        for a, b in zip(net(x), ref_net(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'no-combine'])
def test_reference_mhhinet_loads_strictly_and_matches(reference, combine):
    torch.manual_seed(0)
    ref_net = randomize(reference['mhhinet_arch'].MHHINet(**TINY, n_heads=3, combinate_heads=combine), seed=1).eval()
    net = _mh_hinet(num_heads=3, combine=combine)
    assert state_layout(net.state_dict()) == state_layout(ref_net)
    net.load_state_dict(ref_net.state_dict(), strict=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref_net.parameters())
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        for a, b in zip(net(x), ref_net(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
