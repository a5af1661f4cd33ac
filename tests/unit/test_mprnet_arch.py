"""Tests for :mod:`basicsr_mh.archs.mprnet_arch` (MPRNet) and MultiHeadArch on MPRNet.

The parameter layout is checked against an independent listing written from the published deblurring MPRNet
(``MPRNet-main/Deblurring/MPRNet.py`` of Liu-SD/multi-output-deblur, from swz30/MPRNet). The multi-head MPRNet is
checked, stage by stage, against a functional oracle of the reference ``MHMPRNet.py``: the plain MPRNet with one head's
``sam12.conv2`` / ``sam23.conv2`` / ``tail`` weights, and multi-head SAMs (``conv3`` reading the K head images) for the
earlier stages. Optional tests run the published code (set ``BASICSR_MH_REFERENCE``, see ``test_local_arch.py``).
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
# helpers of the HINet tests (pytest puts tests/ on sys.path: the folder has no __init__.py)
from conftest import load_reference, state_layout
from test_hinet_arch import all_heads_sam, assert_pairs, plain_state, randomize
from torch import nn as nn

from basicsr_mh.archs.hinet_arch import pad_to_size
from basicsr_mh.archs.mprnet_arch import MPRNet
from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.archs.multihead_layers import MultiHeadConv2d, MultiHeadInputConv2d
from basicsr_mh.heads import extended_head_pairs

# channel counts chosen so that no conv other than the image convs has 3 output channels
TINY = dict(n_feat=8, scale_unetfeats=8, scale_orsnetfeats=8, num_cab=1)
DEFAULT_PARAMS = 20127073  # MPRNet() counted with the published code (one shared PReLU parameter)

pytestmark = pytest.mark.usefixtures('one_thread')


# --------------------------------------------------------------------------------------------------------------------
# layout of the published model
# --------------------------------------------------------------------------------------------------------------------
def reference_layout(in_c=3,
                     out_c=3,
                     n_feat=96,
                     scale_unetfeats=48,
                     scale_orsnetfeats=32,
                     num_cab=8,
                     kernel_size=3,
                     reduction=4,
                     bias=False):
    """``(key, shape)`` pairs of the published MPRNet's state_dict, in order, from its construction rules.

    A CAB registers its channel attention ``CA`` (``conv_du.0``: 1x1 down by ``reduction``, ``conv_du.2``: 1x1 up)
    before its ``body`` (conv, the PReLU, conv); one PReLU module (weight of shape (1,)) is shared by every CAB, and
    the state_dict lists it under each ``body.1``. Encoder/decoder levels have ``n``, ``n + s``, ``n + 2s`` channels
    (``s = scale_unetfeats``); ``DownSample``/``UpSample`` hold a bias-free 1x1 conv at ``down.1`` / ``up.1``; stage 2's
    encoder adds 1x1 ``csff_enc1..3`` and ``csff_dec1..3``. ORSNet works at ``n + scale_orsnetfeats`` channels; an ORB
    ends in a bias-free conv. The SAMs are 1x1 and image convs have 3 channels.
    """
    b = bias

    def conv(name, cin, cout, k, has_bias=b):
        return [(f'{name}.weight', (cout, cin, k, k))] + ([(f'{name}.bias', (cout, ))] if has_bias else [])

    def cab(prefix, c):
        squeeze = c // reduction
        return (conv(prefix + 'CA.conv_du.0', c, squeeze, 1) + conv(prefix + 'CA.conv_du.2', squeeze, c, 1) +
                conv(prefix + 'body.0', c, c, kernel_size) + [(prefix + 'body.1.weight',
                                                               (1, ))] + conv(prefix + 'body.2', c, c, kernel_size))

    s = scale_unetfeats
    chans = [n_feat, n_feat + s, n_feat + 2 * s]

    def encoder(prefix, csff):
        out = []
        for level, c in enumerate(chans, 1):
            out += cab(f'{prefix}encoder_level{level}.0.', c) + cab(f'{prefix}encoder_level{level}.1.', c)
        out += conv(prefix + 'down12.down.1', chans[0], chans[1], 1, False)
        out += conv(prefix + 'down23.down.1', chans[1], chans[2], 1, False)
        if csff:
            for kind in ('enc', 'dec'):
                for level, c in enumerate(chans, 1):
                    out += conv(f'{prefix}csff_{kind}{level}', c, c, 1)
        return out

    def decoder(prefix):
        out = []
        for level, c in enumerate(chans, 1):
            out += cab(f'{prefix}decoder_level{level}.0.', c) + cab(f'{prefix}decoder_level{level}.1.', c)
        out += cab(prefix + 'skip_attn1.', chans[0]) + cab(prefix + 'skip_attn2.', chans[1])
        out += conv(prefix + 'up21.up.1', chans[1], chans[0], 1, False)
        out += conv(prefix + 'up32.up.1', chans[2], chans[1], 1, False)
        return out

    width = n_feat + scale_orsnetfeats
    layout = []
    for i in (1, 2, 3):
        layout += conv(f'shallow_feat{i}.0', in_c, n_feat, kernel_size) + cab(f'shallow_feat{i}.1.', n_feat)
    layout += encoder('stage1_encoder.', False) + decoder('stage1_decoder.')
    layout += encoder('stage2_encoder.', True) + decoder('stage2_decoder.')
    for i in (1, 2, 3):
        for j in range(num_cab):
            layout += cab(f'stage3_orsnet.orb{i}.body.{j}.', width)
        layout += conv(f'stage3_orsnet.orb{i}.body.{num_cab}', width, width, kernel_size, False)
    layout += conv('stage3_orsnet.up_enc1.up.1', chans[1], chans[0], 1, False)
    layout += conv('stage3_orsnet.up_dec1.up.1', chans[1], chans[0], 1, False)
    for name in ('up_enc2', 'up_dec2'):
        layout += conv(f'stage3_orsnet.{name}.0.up.1', chans[2], chans[1], 1, False)
        layout += conv(f'stage3_orsnet.{name}.1.up.1', chans[1], chans[0], 1, False)
    for kind in ('enc', 'dec'):
        for i in (1, 2, 3):
            layout += conv(f'stage3_orsnet.conv_{kind}{i}', n_feat, width, 1)
    for sam in ('sam12', 'sam23'):
        layout += conv(f'{sam}.conv1', n_feat, n_feat, 1) + conv(f'{sam}.conv2', n_feat, 3, 1)
        layout += conv(f'{sam}.conv3', 3, n_feat, 1)
    layout += conv('concat12', 2 * n_feat, n_feat, kernel_size) + conv('concat23', 2 * n_feat, width, kernel_size)
    layout += conv('tail', width, out_c, kernel_size)
    return layout


def _unique_count(layout):
    """Parameters of a layout, counting the shared PReLU once."""
    shared = [key for key, shape in layout if key.endswith('body.1.weight') and shape == (1, )]
    return sum(torch.Size(shape).numel() for _, shape in layout) - len(shared) + 1


def test_published_layout_and_parameter_count():
    expected = reference_layout()
    assert _unique_count(expected) == DEFAULT_PARAMS
    with torch.device('meta'):
        model = MPRNet()
    assert state_layout(model) == expected
    assert sum(p.numel() for p in model.parameters()) == DEFAULT_PARAMS
    assert not list(model.buffers())


def test_small_layouts_registration_shared_prelu_and_strict_load():
    assert ARCH_REGISTRY.get('MPRNet') is MPRNet
    from basicsr.archs import build_network
    for config in (TINY,
                   dict(
                       n_feat=8,
                       scale_unetfeats=4,
                       scale_orsnetfeats=4,
                       num_cab=2,
                       bias=True,
                       kernel_size=5,
                       reduction=2)):
        net = build_network(dict(type='MPRNet', **config))
        layout = reference_layout(**config)
        assert state_layout(net) == layout
        assert sum(p.numel() for p in net.parameters()) == _unique_count(layout)
        prelus = {id(m) for m in net.modules() if isinstance(m, nn.PReLU)}
        assert len(prelus) == 1
        other = MPRNet(**config)
        other.load_state_dict(randomize(net).state_dict(), strict=True)


# --------------------------------------------------------------------------------------------------------------------
# behaviour
# --------------------------------------------------------------------------------------------------------------------
def _tiny(seed=0):
    torch.manual_seed(seed)
    return randomize(MPRNet(**TINY), seed=seed + 1).eval()


@pytest.mark.parametrize('size', [(2, 3, 13, 21), (1, 3, 5, 9), (1, 3, 1, 1), (1, 3, 16, 8)])
def test_any_size_forward(size):
    net = _tiny()
    with torch.no_grad():
        outs = net(torch.rand(size))
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.shape == size and torch.isfinite(o).all() for o in outs)
    assert MPRNet.final_output_index == 0  # [stage3, stage2, stage1], as published


def test_padding_is_right_bottom_reflection_then_crop():
    net = _tiny()
    x = torch.rand(1, 3, 13, 21)
    padded = pad_to_size(x, 16, 24)
    torch.testing.assert_close(padded[:, :, 13:, :21], x.flip(-2)[:, :, 1:4], rtol=0, atol=0)
    with torch.no_grad():
        for out, full in zip(net(x), net(padded)):
            torch.testing.assert_close(out, full[:, :, :13, :21], rtol=0, atol=0)


def test_sam12_runs_once_and_equals_per_half_calls():
    """One sam12 call on the full map gives what the published two calls on the halves give."""
    net = _tiny()
    calls = []
    handle = net.sam12.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        stage1 = net(x)[2]
    handle.remove()
    assert calls == [(2, 8, 16, 24)]
    assert all(conv.kernel_size == (1, 1) for conv in (net.sam12.conv1, net.sam12.conv2, net.sam12.conv3))
    feats = torch.randn(2, 8, 16, 24)
    with torch.no_grad():
        full_feats, full_img = net.sam12(feats, x)
        top, bot = net.sam12(feats[:, :, :8], x[:, :, :8]), net.sam12(feats[:, :, 8:], x[:, :, 8:])
    torch.testing.assert_close(full_feats, torch.cat([top[0], bot[0]], 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(full_img, torch.cat([top[1], bot[1]], 2), rtol=0, atol=1e-6)
    assert stage1.shape == x.shape


def test_gradient_reaches_every_parameter():
    net = _tiny().train()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    sum(o.square().mean() for o in net(x)).backward()
    assert torch.count_nonzero(x.grad) > 0
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if '.CA.' not in name:  # a tiny channel attention may sit behind a ReLU that is off for this input
            assert torch.count_nonzero(param.grad) > 0, name


# --------------------------------------------------------------------------------------------------------------------
# MultiHeadArch on MPRNet: all three stages get heads
# --------------------------------------------------------------------------------------------------------------------
def _mh_mprnet(num_heads=3, combine=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = MultiHeadArch(
        backbone=dict(type='MPRNet', **TINY), num_heads=num_heads, combine=combine, probe_size=32, **kwargs)
    return randomize(net, seed=seed + 1).eval()


def _plain(state, mh_state=None, sams=(), num_heads=0):
    """A plain MPRNet with ``state``; the SAMs named in ``sams`` run as reference multi-head SAMs of ``mh_state``."""
    net = MPRNet(**TINY).eval()
    net.load_state_dict(state, strict=True)
    for name in sams:
        sam = getattr(net, name)
        sam.forward = all_heads_sam(sam, mh_state, f'{name}.', num_heads)
    return net


@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'no-combine'])
def test_multihead_mprnet_all_stages_exact(combine):
    k = 3
    net = _mh_mprnet(num_heads=k, combine=combine)
    assert net.head_layer_names == ['tail', 'sam23.conv2', 'sam12.conv2']
    assert net.head_input_layers == {'sam23.conv3': 'sam23.conv2', 'sam12.conv3': 'sam12.conv2'}
    assert isinstance(net.backbone.tail, MultiHeadConv2d) and net.backbone.tail.detach_mean
    assert all(isinstance(getattr(net.backbone, s).conv3, MultiHeadInputConv2d) for s in ('sam12', 'sam23'))

    state = net.state_dict()
    plain_layout = dict(reference_layout(**TINY))
    assert list(state) == list(plain_layout)
    grown = {
        'tail.weight': (3 * k, 16, 3, 3),
        'sam12.conv2.weight': (3 * k, 8, 1, 1),
        'sam23.conv2.weight': (3 * k, 8, 1, 1),
        'sam12.conv3.weight': (8, 3 * k, 1, 1),
        'sam23.conv3.weight': (8, 3 * k, 1, 1)
    }
    assert {key: shape for key, shape in state_layout(state) if plain_layout[key] != shape} == grown
    extra = (k - 1) * (3 * 16 * 9 + 4 * 3 * 8)
    assert sum(p.numel() for p in net.parameters()) == _unique_count(plain_layout.items()) + extra

    x = torch.rand(2, 3, 13, 18)  # padded to 16 x 24 inside
    with torch.no_grad():
        outs = net(x)
    n_out = len(extended_head_pairs(k, combine))
    assert [o.shape for o in outs] == [(2, n_out, 3, 13, 18)] * 3

    in_layers = ['sam12.conv3', 'sam23.conv3']
    stage3, stage2, stage1 = [], [], []
    with torch.no_grad():
        for h in range(k):
            stage1.append(_plain(plain_state(state, {'sam12.conv2': h, 'sam23.conv2': 0, 'tail': 0}, in_layers))(x)[2])
            stage2.append(
                _plain(
                    plain_state(state, {
                        'sam12.conv2': 0,
                        'sam23.conv2': h,
                        'tail': 0
                    }, in_layers), state, ['sam12'], k)(x)[1])
            stage3.append(
                _plain(
                    plain_state(state, {
                        'sam12.conv2': 0,
                        'sam23.conv2': 0,
                        'tail': h
                    }, in_layers), state, ['sam12', 'sam23'], k)(x)[0])
    pairs = extended_head_pairs(k, combine)
    for name, out, plain_outs in (('stage 3', outs[0], stage3), ('stage 2', outs[1], stage2), ('stage 1', outs[2],
                                                                                               stage1)):
        assert_pairs(out, plain_outs, pairs, what=name)
        assert (plain_outs[0] - plain_outs[1]).abs().max() > 1e-3, name


def test_single_head_checkpoint_warm_starts_all_stages():
    plain = _tiny(seed=3)
    net = _mh_mprnet(num_heads=2, combine=True)
    net.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(1, 3, 8, 16)
    with torch.no_grad():
        outs, ref = net(x), plain(x)
    for out, expected in zip(outs, ref):
        for head in range(out.shape[1]):
            torch.testing.assert_close(out[:, head], expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# same outputs as the published code (optional)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def reference():
    with load_reference('mprnet', ('MPRNet', 'MHMPRNet')) as modules:
        yield modules


@pytest.mark.parametrize(
    'config, size', [(TINY, (2, 3, 24, 32)),
                     (dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=2, bias=True), (1, 3, 16, 8))],
    ids=['tiny', 'bias'])
def test_matches_reference(reference, config, size):
    torch.manual_seed(0)
    ref_net = randomize(reference['MPRNet'].MPRNet(**config), seed=1).eval()
    net = MPRNet(**config).eval()
    assert state_layout(net) == state_layout(ref_net)
    net.load_state_dict(ref_net.state_dict(), strict=True)
    x = torch.rand(size)
    with torch.no_grad():
        for a, b in zip(net(x), ref_net(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'no-combine'])
def test_reference_mhmprnet_loads_strictly_and_matches(reference, combine):
    torch.manual_seed(0)
    ref_net = randomize(reference['MHMPRNet'].MPRNet(**TINY, n_heads=3, combinate_heads=combine), seed=1).eval()
    net = _mh_mprnet(num_heads=3, combine=combine)
    assert state_layout(net.state_dict()) == state_layout(ref_net)
    net.load_state_dict(ref_net.state_dict(), strict=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref_net.parameters())
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        for a, b in zip(net(x), ref_net(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
