"""Tests for :mod:`basicsr_mh.archs.multihead_arch` (MultiHeadArch) on NAFNet and on upstream BasicSR backbones.

The multi-head NAFNet is checked against an independent functional oracle of the reference ``MHNAFNet`` forward
(Liu-SD/multi-output-deblur, ``NAFNet-main/basicsr/models/archs/MHNAFNet_arch.py``): body features -> ``ending`` with
``img_channel * n_heads`` outputs -> ``view(B, K, C, H, W)`` -> optional pair combination in the order
``for i in range(K): for j in range(i + 1)`` -> ``+ inp`` -> crop. An optional test runs the reference code itself:
set ``BASICSR_MH_REFERENCE`` to a checkout of the multi-output deblurring repository; it is skipped otherwise.
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import copy
import pytest
import sys
import torch
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY
from collections import OrderedDict
# helpers of the NAFNet tests (pytest puts tests/ on sys.path: the folder has no __init__.py)
from conftest import REFERENCE_PACKAGE, load_reference, state_layout
from test_nafnet_arch import _randomize_block_scalars
from torch import nn as nn

from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.archs.multihead_layers import MultiHeadConv2d
from basicsr_mh.archs.nafnet_arch import NAFNet
from basicsr_mh.heads import extended_head_pairs, num_extended_heads
from basicsr_mh.losses.min_head_loss import MinHeadLoss
from basicsr_mh.losses.psnr_loss import PSNRLoss

TINY = dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
PAIRS_K4 = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)]


def _mh_nafnet(num_heads=4, combine=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    net = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=num_heads, combine=combine, **kwargs)
    _randomize_block_scalars(net, seed=seed + 1)
    _randomize_bias(net.backbone.ending, seed=seed + 2)
    return net


def _randomize_bias(conv, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=gen))


def _head_state(state_dict, layer, head, channels):
    """A copy of a multi-head state_dict whose ``layer`` keeps only head ``head`` (a plain backbone's layout)."""
    out = OrderedDict((k, v.clone()) for k, v in state_dict.items())
    for suffix in ('.weight', '.bias'):
        key = layer + suffix
        if key in out:
            out[key] = state_dict[key][head * channels:(head + 1) * channels].clone()
    return out


def _plain_heads(build_plain, mh_state, layer, channels, num_heads, x):
    """Outputs of the plain backbone run with each head's output-layer weights: list of K tensors."""
    outs = []
    for k in range(num_heads):
        plain = build_plain()
        plain.load_state_dict(_head_state(mh_state, layer, k, channels), strict=True)
        plain.eval()
        with torch.no_grad():
            outs.append(plain(x))
    return outs


def _assert_pairs(out, plain_outs, pairs, rel=1e-5):
    assert out.shape[1] == len(pairs)
    for index, (i, j) in enumerate(pairs):
        expected = 0.5 * (plain_outs[i] + plain_outs[j])
        atol = rel * max(float(expected.abs().max()), 1.0)
        torch.testing.assert_close(out[:, index], expected, rtol=0, atol=atol, msg=f'extended head {index} ({i}, {j})')


# --------------------------------------------------------------------------------------------------------------------
# 1-2. registries and head order
# --------------------------------------------------------------------------------------------------------------------
def test_registries():
    assert ARCH_REGISTRY.get('MultiHeadArch') is MultiHeadArch
    assert ARCH_REGISTRY.get('NAFNet') is NAFNet
    assert LOSS_REGISTRY.get('MinHeadLoss') is MinHeadLoss
    assert LOSS_REGISTRY.get('PSNRLoss') is PSNRLoss
    assert MODEL_REGISTRY.get('MultiHeadImageRestorationModel').__name__ == 'MultiHeadImageRestorationModel'


def test_extended_head_order():
    assert extended_head_pairs(4, True) == PAIRS_K4
    assert extended_head_pairs(4, False) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    for k in range(1, 8):
        pairs = extended_head_pairs(k, True)
        assert len(pairs) == num_extended_heads(k, True) == k * (k + 1) // 2
        assert len(set(pairs)) == len(pairs) and all(0 <= j <= i < k for i, j in pairs)
        assert num_extended_heads(k, False) == k


# --------------------------------------------------------------------------------------------------------------------
# 3. MH-C NAFNet: shapes, parameters, state_dict layout
# --------------------------------------------------------------------------------------------------------------------
def test_mhc_nafnet_shapes_params_and_keys():
    net = _mh_nafnet(num_heads=4, combine=True).eval()
    plain = NAFNet(**TINY)
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 10, 3, 37, 45)
    assert torch.isfinite(out).all()

    n_plain = sum(p.numel() for p in plain.parameters())
    n_ending = plain.ending.weight.numel() + plain.ending.bias.numel()
    assert sum(p.numel() for p in net.parameters()) == n_plain + 3 * n_ending

    state = net.state_dict()
    assert list(state.keys()) == list(plain.state_dict().keys())
    assert not any(key.startswith('backbone.') for key in state)
    assert state['ending.weight'].shape == (12, 8, 3, 3) and state['ending.bias'].shape == (12, )
    assert isinstance(net.backbone.ending, MultiHeadConv2d) and net.head_layer_names == ['ending']
    others = {k: v for k, v in state_layout(state) if not k.startswith('ending.')}
    assert others == {k: v for k, v in state_layout(plain.state_dict()) if not k.startswith('ending.')}

    # odd size (padding + crop): every extended head equals the plain NAFNet run with the pair's mean weights
    plain_outs = _plain_heads(lambda: NAFNet(**TINY), state, 'ending', 3, 4, x)
    _assert_pairs(out, plain_outs, PAIRS_K4)
    # the heads differ (fresh draws for heads 1..K-1)
    assert (out[:, 0] - out[:, 2]).abs().max() > 1e-3


def test_build_network_from_options():
    from basicsr.archs import build_network
    net = build_network(dict(type='MultiHeadArch', backbone=dict(type='NAFNet', **TINY), num_heads=3, combine=False))
    assert isinstance(net, MultiHeadArch) and net.num_outputs == 3
    assert net(torch.rand(1, 3, 16, 20)).shape == (1, 3, 3, 16, 20)


# --------------------------------------------------------------------------------------------------------------------
# 4. equivalence with the reference multi-head NAFNet
# --------------------------------------------------------------------------------------------------------------------
def _reference_mhnafnet_forward(net, inp, n_heads, combine):
    """Independent functional oracle of the reference MHNAFNet.forward, on a plain NAFNet's submodules whose ``ending``
    has ``img_channel * n_heads`` outputs. Valid only for H, W multiples of ``2 ** len(encoders)`` (as the reference:
    its ``view(B, K, C, H, W)`` uses the unpadded size)."""
    b, c, h, w = inp.shape
    x = net.intro(inp)
    encs = []
    for encoder, down in zip(net.encoders, net.downs):
        x = encoder(x)
        encs.append(x)
        x = down(x)
    x = net.middle_blks(x)
    for decoder, up, enc_skip in zip(net.decoders, net.ups, encs[::-1]):
        x = up(x)
        x = x + enc_skip
        x = decoder(x)
    x = net.ending(x)
    x = x.view(b, n_heads, c, h, w)
    if combine:
        x_ = []
        for i in range(n_heads):
            for j in range(i + 1):
                x_.append((x[:, i] + x[:, j]) / 2)
        x = torch.stack(x_, dim=1)
    x = x + inp.unsqueeze(1)
    return x[:, :, :, :h, :w]


def _reference_layout_net(n_heads, seed):
    """A plain NAFNet with random block scalars whose ``ending`` is a ``3 * n_heads``-output conv (reference layout)."""
    torch.manual_seed(seed)
    net = _randomize_block_scalars(NAFNet(**TINY), seed=seed + 1)
    net.ending = nn.Conv2d(TINY['width'], TINY['img_channel'] * n_heads, kernel_size=3, padding=1, bias=True)
    _randomize_bias(net.ending, seed=seed + 2)
    return net.eval()


@pytest.mark.parametrize('combine, n_out', [(True, 10), (False, 4)], ids=['combine', 'no-combine'])
def test_reference_checkpoint_loads_and_matches_oracle(combine, n_out):
    ref = _reference_layout_net(4, seed=3)
    ref_state = ref.state_dict()
    assert [k for k in ref_state] == [k for k in NAFNet(**TINY).state_dict()]
    assert not any(torch.count_nonzero(v) == 0 for k, v in ref_state.items() if k.endswith(('beta', 'gamma')))

    net = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=4, combine=combine).eval()
    assert state_layout(net.state_dict()) == state_layout(ref_state)
    net.load_state_dict(ref_state, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, ref_state[key]), key

    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        expected = _reference_mhnafnet_forward(ref, x, 4, combine)
        out = net(x)
    assert out.shape == expected.shape == (2, n_out, 3, 32, 48)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.fixture(scope='module')
def reference_mhnafnet():
    """The reference MHNAFNet class, loaded under a temporary fake ``basicsr.models.archs`` package."""
    files = ('arch_util', 'local_arch', 'NAFNet_arch', 'MHNAFNet_arch')
    package_before = sys.modules.get(REFERENCE_PACKAGE)
    with load_reference('nafnet', files, package=True) as modules:
        pass
    assert sys.modules.get(REFERENCE_PACKAGE) is package_before  # restored
    return modules['MHNAFNet_arch'].MHNAFNet


@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'no-combine'])
def test_matches_reference_code(reference_mhnafnet, combine):
    assert f'{REFERENCE_PACKAGE}.MHNAFNet_arch' not in sys.modules
    torch.manual_seed(5)
    ref = reference_mhnafnet(**TINY, n_heads=4, combinate_heads=combine)
    _randomize_block_scalars(ref, seed=6)
    _randomize_bias(ref.ending, seed=7)
    ref.eval()
    net = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=4, combine=combine).eval()
    assert state_layout(net.state_dict()) == state_layout(ref.state_dict())
    net.load_state_dict(ref.state_dict(), strict=True)

    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        expected = ref(x)
        out = net(x)
        oracle = _reference_mhnafnet_forward(_oracle_from_state(ref.state_dict()), x, 4, combine)
    assert out.shape == expected.shape == (2, 10 if combine else 4, 3, 32, 48)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(oracle, expected, rtol=0, atol=1e-5)

    # the other way: our randomized multi-head weights load strictly into the reference code
    ours = _mh_nafnet(num_heads=4, combine=combine, seed=11).eval()
    ref2 = reference_mhnafnet(**TINY, n_heads=4, combinate_heads=combine).eval()
    ref2.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref2(x), rtol=0, atol=1e-5)


def _oracle_from_state(state):
    net = _reference_layout_net(4, seed=0)
    net.load_state_dict(state, strict=True)
    return net


# --------------------------------------------------------------------------------------------------------------------
# 5-6. warm start, head-count mismatch, the single-head cases
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('combine', [True, False], ids=['combine', 'no-combine'])
def test_single_head_checkpoint_warm_starts_every_head(combine):
    torch.manual_seed(0)
    plain = _randomize_block_scalars(NAFNet(**TINY), seed=1).eval()
    _randomize_bias(plain.ending, seed=2)
    plain_state = plain.state_dict()
    net = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=4, combine=combine).eval()
    net.load_state_dict(plain_state, strict=True)
    assert plain.state_dict()['ending.weight'].shape == (3, 8, 3, 3)  # the caller's dict is not changed
    assert torch.equal(net.state_dict()['ending.weight'], plain_state['ending.weight'].repeat(4, 1, 1, 1))
    x = torch.rand(2, 3, 19, 26)
    with torch.no_grad():
        expected = plain(x)
        out = net(x)
    assert out.shape == (2, 10 if combine else 4, 3, 19, 26)
    for k in range(out.shape[1]):
        torch.testing.assert_close(out[:, k], expected, rtol=0, atol=1e-5)


def test_head_count_mismatch_raises():
    k3 = _mh_nafnet(num_heads=3, combine=True)
    k4 = _mh_nafnet(num_heads=4, combine=True)
    with pytest.raises(ValueError, match='num_heads') as info:
        k4.load_state_dict(k3.state_dict(), strict=True)
    assert '3' in str(info.value) and '4' in str(info.value)


def test_one_head_no_combine_is_plain_backbone():
    torch.manual_seed(0)
    net = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=1, combine=False)
    assert type(net) is NAFNet
    _randomize_block_scalars(net, seed=1)
    plain = NAFNet(**TINY)
    plain.load_state_dict(net.state_dict(), strict=True)
    assert list(net.state_dict()) == list(plain.state_dict())
    x = torch.rand(2, 3, 21, 18)
    with torch.no_grad():
        out = net.eval()(x)
        torch.testing.assert_close(out, plain.eval()(x), rtol=0, atol=0)
    assert out.shape == (2, 3, 21, 18)


def test_one_head_combine_is_five_dimensional():
    torch.manual_seed(0)
    net = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=1, combine=True).eval()
    assert isinstance(net, MultiHeadArch) and net.num_outputs == 1
    _randomize_block_scalars(net, seed=1)
    plain = NAFNet(**TINY).eval()
    plain.load_state_dict(net.state_dict(), strict=True)
    x = torch.rand(2, 3, 21, 18)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 1, 3, 21, 18)
        torch.testing.assert_close(out[:, 0], plain(x), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# 7. upstream BasicSR backbones
# --------------------------------------------------------------------------------------------------------------------
SWIN = dict(
    img_size=16,
    patch_size=1,
    in_chans=3,
    embed_dim=12,
    depths=[1],
    num_heads=[2],
    window_size=4,
    mlp_ratio=1.,
    img_range=1.,
    resi_connection='1conv')
UPSTREAM = {
    'MSRResNet-x4': (dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1,
                          upscale=4), 'conv_last', (2, 3, 10, 13), 4),
    'RRDBNet-x4': (dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=1,
                        num_grow_ch=4), 'conv_last', (2, 3, 9, 12), 4),
    'EDSR-x4': (dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4,
                     img_range=255.), 'conv_last', (2, 3, 10, 7), 4),
    'SwinIR-x1': (dict(type='SwinIR', upscale=1, upsampler='', **SWIN), 'conv_last', (2, 3, 16, 12), 1),
    'SwinIR-x4': (dict(type='SwinIR', upscale=4, upsampler='pixelshuffle', **SWIN), 'conv_last', (1, 3, 8, 12), 4),
}


@pytest.mark.parametrize('name', list(UPSTREAM))
def test_upstream_backbones_wrap_exactly(name):
    opt, layer, size, scale = UPSTREAM[name]
    torch.manual_seed(0)
    net = MultiHeadArch(backbone=opt, num_heads=3, combine=True, probe_size=32).eval()
    assert net.head_layer_names == [layer]
    grown = net._grown[layer]
    _randomize_bias(grown, seed=1)
    state = net.state_dict()
    assert not any(key.startswith('backbone.') for key in state)
    assert state[layer + '.weight'].shape[0] == 9

    plain_opt = {k: v for k, v in opt.items() if k != 'type'}
    build = lambda: ARCH_REGISTRY.get(opt['type'])(**plain_opt)  # noqa: E731
    assert list(state) == list(build().state_dict())

    x = torch.rand(size)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (size[0], 6, 3, size[2] * scale, size[3] * scale)
    plain_outs = _plain_heads(build, state, layer, 3, 3, x)
    assert (plain_outs[0] - plain_outs[1]).abs().max() > 1e-4 * plain_outs[0].abs().max()
    _assert_pairs(out, plain_outs, extended_head_pairs(3, True))


# --------------------------------------------------------------------------------------------------------------------
# 8. backbones that cannot be wrapped
# --------------------------------------------------------------------------------------------------------------------
class _TinyNonAdditive(nn.Module):
    """A tiny backbone whose output is a non-linear function of its output layer."""

    def __init__(self, tail):
        super().__init__()
        self.tail = tail
        self.conv_first = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_last = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        out = self.conv_last(torch.relu(self.conv_first(x)))
        return torch.sigmoid(out) if self.tail == 'sigmoid' else torch.clamp(out + x, 0, 1)


@pytest.mark.parametrize('tail', ['sigmoid', 'clamp'])
def test_non_additive_tail_raises_naming_layer(tail):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match='conv_last') as info:
        MultiHeadArch(backbone=_TinyNonAdditive(tail), num_heads=2, combine=False)
    assert 'not additive' in str(info.value)
    with pytest.raises(ValueError, match='conv_last'):
        MultiHeadArch(backbone=_TinyNonAdditive(tail), num_heads=2, combine=False, head_layers=['conv_last'])


def test_head_layers_naming_missing_or_unsuitable_layer_raises():
    with pytest.raises(ValueError, match='endin') as info:
        MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=2, head_layers='endin')
    assert 'ending' in str(info.value)  # a close name is offered
    with pytest.raises(ValueError, match='"intro"'):
        MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=2, head_layers='intro')
    with pytest.raises(ValueError, match='num_heads'):
        MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=0)
    with pytest.raises(ValueError, match='NAFNett'):
        MultiHeadArch(backbone=dict(type='NAFNett'), num_heads=2)


def test_explicit_head_layer_equals_found_one():
    torch.manual_seed(0)
    found = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=2, combine=True)
    torch.manual_seed(0)
    named = MultiHeadArch(backbone=dict(type='NAFNet', **TINY), num_heads=2, combine=True, head_layers=['ending'])
    assert named.head_layer_names == found.head_layer_names == ['ending']
    named.load_state_dict(found.state_dict(), strict=True)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(named(x), found(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# 9. gradients with MinHeadLoss
# --------------------------------------------------------------------------------------------------------------------
def _per_sample_winner_grads(net, x, gt, winners, loss):
    """Gradients of ``mean_b loss(out[b, winner_b], gt[b])``, one sample at a time (the Eq. 4-5 oracle)."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    for b, k in enumerate(winners):
        (loss(out[b:b + 1, k], gt[b:b + 1]) / len(winners)).backward(retain_graph=True)
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    'combine, wanted, dead', [(False, [2, 0, 2], [1, 3]), (True, [4, 0, 4], [3])], ids=['no-combine', 'combine'])
def test_min_head_loss_gradient_reaches_winners_only(combine, wanted, dead):
    net = _mh_nafnet(num_heads=4, combine=combine, seed=0).train()
    x = torch.rand(3, 3, 16, 20)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        out = net(x)
        gt = out[torch.arange(3), torch.tensor(wanted)] + 0.01 * torch.randn(3, 3, 16, 20, generator=gen)

    criterion = MinHeadLoss(loss={'type': 'L1Loss', 'loss_weight': 1.0})
    net.zero_grad(set_to_none=True)
    value, winners, _ = criterion.assign(net(x), gt)
    value.backward()
    assert winners.tolist() == wanted
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}

    weight_grad, bias_grad = grads['backbone.ending.weight'], grads['backbone.ending.bias']
    live = sorted({h for k in wanted for h in extended_head_pairs(4, combine)[k]})
    assert sorted(set(live) | set(dead)) == [0, 1, 2, 3] and not set(live) & set(dead)
    for head in dead:
        assert torch.count_nonzero(weight_grad[3 * head:3 * head + 3]) == 0, head
        assert torch.count_nonzero(bias_grad[3 * head:3 * head + 3]) == 0, head
    for head in live:
        assert weight_grad[3 * head:3 * head + 3].abs().sum() > 0, head

    expected = _per_sample_winner_grads(net, x, gt, wanted, LOSS_REGISTRY.get('L1Loss')())
    assert set(expected) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_each_head_gradient_is_its_own():
    """d(head k output)/d(parameters) equals the plain net's with head k's weights (no cross-head leakage)."""
    net = _mh_nafnet(num_heads=3, combine=False, seed=4).train()
    state = net.state_dict()
    x = torch.rand(2, 3, 13, 17)
    grad_out = torch.randn(2, 3, 13, 17)
    (net(x)[:, 1] * grad_out).sum().backward()
    plain = NAFNet(**TINY).train()
    plain.load_state_dict(_head_state(state, 'ending', 1, 3), strict=True)
    (plain(x) * grad_out).sum().backward()
    ending = net.backbone.ending
    torch.testing.assert_close(ending.weight.grad[3:6], plain.ending.weight.grad, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(ending.weight.grad[:3]) == 0 and torch.count_nonzero(ending.weight.grad[6:]) == 0
    torch.testing.assert_close(net.backbone.intro.weight.grad, plain.intro.weight.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# 10. modes, copies, dtypes
# --------------------------------------------------------------------------------------------------------------------
def test_no_grad_train_mode_deepcopy_and_float64():
    net = _mh_nafnet(num_heads=4, combine=True, seed=2)
    x = torch.rand(2, 3, 15, 22)
    with torch.no_grad():
        eval_out = net.eval()(x)
        train_out = net.train()(x)
    assert not eval_out.requires_grad
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=1e-6)
    out = net(x)  # train mode with autograd; the stash is cleared after each forward
    assert out.requires_grad and all(layer._stash is None for layer in net._grown.values())

    ema = copy.deepcopy(net).eval()
    assert ema._grown['ending'] is ema.backbone.ending and ema._grown['ending'] is not net.backbone.ending
    with torch.no_grad():
        torch.testing.assert_close(ema(x), eval_out, rtol=0, atol=0)
        ema.backbone.ending.weight.mul_(0.5)  # the copy is independent
        torch.testing.assert_close(net.eval()(x), eval_out, rtol=0, atol=0)

    double = copy.deepcopy(net).to(torch.float64).eval()
    with torch.no_grad():
        out64 = double(x.double())
    assert out64.dtype == torch.float64 and out64.shape == (2, 10, 3, 15, 22)
    torch.testing.assert_close(out64, eval_out.double(), rtol=0, atol=1e-5)
