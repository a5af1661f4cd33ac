"""Tests for :mod:`basicsr_mh.archs.local_arch`: TLC local average pooling and :class:`NAFNetLocal`.

The pooling is checked against slow direct computations (explicit window loops, ``F.avg_pool2d``) written from the
published rules (megvii-research/NAFNet ``basicsr/models/archs/local_arch.py``): kernel ``h_t * base // H_t`` fixed at
the training size, global pooling where the map is no larger than the kernel, stride-1 windows inside the map,
replicate padding with the smaller half on top/left, and the subsampled ``fast_imp`` variant.

Optional tests compare with the published code itself: set ``BASICSR_MH_REFERENCE`` to a checkout of the
multi-output deblurring repository, e.g.::

    mkdir -p /tmp/mh_ref && git -C <repo> archive HEAD NAFNet-main Restormer-main MPRNet-main/Deblurring/MPRNet.py \\
        MPRNet-main/Deblurring/MHMPRNet.py | tar -x -C /tmp/mh_ref     # then BASICSR_MH_REFERENCE=/tmp/mh_ref

They are skipped otherwise.
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
# helpers of the NAFNet tests (pytest puts tests/ on sys.path: the folder has no __init__.py)
from conftest import load_reference, state_layout
from test_nafnet_arch import _randomize_block_scalars, reference_layout
from torch import nn as nn
from torch.nn import functional as F

from basicsr_mh.archs.local_arch import LocalAvgPool2d, LocalBase, NAFNetLocal, local_base_size, replace_global_pooling
from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.archs.nafnet_arch import NAFNet
from basicsr_mh.heads import extended_head_pairs

TINY = dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
TRAIN = (1, 3, 32, 32)

pytestmark = pytest.mark.usefixtures('one_thread')


# --------------------------------------------------------------------------------------------------------------------
# slow direct versions of the pooling
# --------------------------------------------------------------------------------------------------------------------
def _replicate_pad_loops(valid, h, w):
    """Pad (N, C, vh, vw) to (N, C, h, w) by copying the nearest valid element, (h - vh) // 2 rows on top."""
    vh, vw = valid.shape[-2:]
    top, left = (h - vh) // 2, (w - vw) // 2
    out = torch.empty(valid.shape[:2] + (h, w), dtype=valid.dtype)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = valid[:, :, min(max(i - top, 0), vh - 1), min(max(j - left, 0), vw - 1)]
    return out


def _local_pool_loops(x, kernel):
    """Published exact TLC pooling, computed window by window in float64."""
    h, w = x.shape[-2:]
    if kernel[0] >= h and kernel[1] >= w:
        return x.double().mean(dim=(-2, -1), keepdim=True)
    k1, k2 = min(h, kernel[0]), min(w, kernel[1])
    valid = torch.empty(x.shape[:2] + (h - k1 + 1, w - k2 + 1), dtype=torch.float64)
    for i in range(h - k1 + 1):
        for j in range(w - k2 + 1):
            valid[:, :, i, j] = x[:, :, i:i + k1, j:j + k2].double().mean(dim=(-2, -1))
    return _replicate_pad_loops(valid, h, w)


def _fast_pool_loops(x, kernel, max_r):
    """Published ``fast_imp`` pooling: subsample by r, average the k // r samples after each anchor, repeat r times."""
    h, w = x.shape[-2:]
    r1 = min(max_r[0], next(r for r in (5, 4, 3, 2, 1) if h % r == 0))
    r2 = min(max_r[1], next(r for r in (5, 4, 3, 2, 1) if w % r == 0))
    sub = x[:, :, ::r1, ::r2].double()
    sh, sw = sub.shape[-2:]
    k1, k2 = min(sh - 1, kernel[0] // r1), min(sw - 1, kernel[1] // r2)
    valid = torch.empty(x.shape[:2] + (sh - k1, sw - k2), dtype=torch.float64)
    for i in range(sh - k1):
        for j in range(sw - k2):
            valid[:, :, i, j] = sub[:, :, i + 1:i + 1 + k1, j + 1:j + 1 + k2].mean(dim=(-2, -1))
    upsampled = valid.repeat_interleave(r1, dim=-2).repeat_interleave(r2, dim=-1)
    return _replicate_pad_loops(upsampled, h, w)


# --------------------------------------------------------------------------------------------------------------------
# (a) the pooling layer
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('size, kernel', [((2, 3, 9, 13), (4, 5)), ((1, 2, 9, 13), (9, 3)), ((1, 2, 9, 13), (12, 5)),
                                          ((1, 2, 8, 7), (3, 40)), ((1, 2, 6, 6), (1, 1)), ((1, 2, 10, 11), (10, 11)),
                                          ((1, 1, 5, 4), (7, 30))])
def test_local_pool_matches_direct_loops(size, kernel):
    torch.manual_seed(0)
    x = 4 * torch.rand(size) - 1
    pool = LocalAvgPool2d(kernel_size=kernel)
    out = pool(x)
    expected = _local_pool_loops(x, kernel)
    assert out.shape == expected.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    if kernel[0] < size[2] or kernel[1] < size[3]:
        # the valid part is a stride-1 average pooling
        k1, k2 = min(size[2], kernel[0]), min(size[3], kernel[1])
        valid = F.avg_pool2d(x, (k1, k2), stride=1)
        top, left = (size[2] - valid.shape[-2]) // 2, (size[3] - valid.shape[-1]) // 2
        torch.testing.assert_close(
            out[..., top:top + valid.shape[-2], left:left + valid.shape[-1]], valid, rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(out, nn.AdaptiveAvgPool2d(1)(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize('size, kernel, max_r', [((1, 2, 20, 30), (8, 12), (5, 5)), ((2, 2, 24, 21), (9, 7), (2, 5)),
                                                 ((1, 1, 17, 16), (6, 8), (5, 1)), ((1, 2, 15, 12), (14, 9), (5, 5))])
def test_fast_pool_matches_direct_loops(size, kernel, max_r):
    torch.manual_seed(1)
    x = torch.rand(size)
    pool = LocalAvgPool2d(kernel_size=kernel, fast_imp=True)
    pool.max_r1, pool.max_r2 = max_r
    out = pool(x)
    assert out.shape == size
    torch.testing.assert_close(out.double(), _fast_pool_loops(x, kernel, max_r), rtol=0, atol=1e-5)


def test_fast_pool_falls_back_to_exact_when_its_window_is_empty():
    for size, kernel in [((1, 2, 1, 12), (4, 5)), ((1, 2, 15, 12), (14, 3))]:
        # one row, or a kernel narrower than the subsampling stride: the published fast window would hold no sample
        x = torch.rand(size)
        pool = LocalAvgPool2d(kernel_size=kernel, fast_imp=True)
        torch.testing.assert_close(pool(x).double(), _local_pool_loops(x, kernel), rtol=0, atol=1e-6)


def test_kernel_from_training_size_and_gradients():
    pool = LocalAvgPool2d(base_size=(48, 36), train_size=(1, 3, 32, 24))
    assert pool.kernel_size is None
    x = torch.rand(1, 2, 16, 12)  # the conversion pass: a level at half resolution
    torch.testing.assert_close(pool(x), x.mean(dim=(-2, -1), keepdim=True))  # 24 >= 16, 18 >= 12: global
    assert pool.kernel_size == (16 * 48 // 32, 12 * 36 // 24) == (24, 18)
    assert (pool.max_r1, pool.max_r2) == (2, 2)
    pool(torch.rand(1, 2, 40, 40))
    assert pool.kernel_size == (24, 18)  # fixed after the first pass
    assert LocalAvgPool2d(base_size=48, train_size=TRAIN).base_size == (48, 48)
    with pytest.raises(ValueError, match='kernel_size or a base_size'):
        LocalAvgPool2d()
    with pytest.raises(ValueError, match='train_size'):
        LocalAvgPool2d(base_size=48)

    for fast in (False, True):
        pool64 = LocalAvgPool2d(kernel_size=(2, 4), fast_imp=fast)
        x64 = torch.rand(1, 1, 4, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(pool64, (x64, ))


def test_replace_global_pooling_only_touches_global_average_pooling():
    net = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.AdaptiveAvgPool2d(2)),
        nn.AdaptiveMaxPool2d(1))
    assert replace_global_pooling(net, (48, 48), TRAIN) == 2
    assert isinstance(net[0], LocalAvgPool2d) and isinstance(net[1][0], LocalAvgPool2d)
    assert isinstance(net[1][1], nn.AdaptiveAvgPool2d) and isinstance(net[2], nn.AdaptiveMaxPool2d)
    assert local_base_size((1, 3, 256, 200)) == (384, 300)


# --------------------------------------------------------------------------------------------------------------------
# (b) NAFNetLocal
# --------------------------------------------------------------------------------------------------------------------
def _nafnet_pair(train_size=TRAIN, fast_imp=False, seed=0, config=TINY):
    """A NAFNetLocal and a NAFNet with the same (non-trivial) weights."""
    torch.manual_seed(seed)
    local = _randomize_block_scalars(NAFNetLocal(**config, train_size=train_size, fast_imp=fast_imp), seed=seed + 1)
    plain = NAFNet(**config)
    plain.load_state_dict(local.state_dict(), strict=True)
    return local.eval(), plain.eval()


def test_registered_same_keys_as_nafnet_and_kernels():
    assert ARCH_REGISTRY.get('NAFNetLocal') is NAFNetLocal
    from basicsr.archs import build_network
    net = build_network(dict(type='NAFNetLocal', **TINY, train_size=[1, 3, 32, 32]))
    assert isinstance(net, NAFNetLocal) and isinstance(net, LocalBase) and isinstance(net, NAFNet)
    assert net.training  # the conversion keeps the mode
    assert state_layout(net) == reference_layout(**TINY)
    assert not list(net.buffers())
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.modules())
    pools = [block.sca[0] for block in net.modules() if hasattr(block, 'sca')]
    assert len(pools) == 5 and all(isinstance(p, LocalAvgPool2d) for p in pools)
    # encoders at 32 and 16, middle at 8, decoders at 16 and 32 (creation order: encoders, decoders, middle)
    feature_sizes = [32, 16, 16, 32, 8]
    assert [p.kernel_size for p in pools] == [(s * 48 // 32, s * 48 // 32) for s in feature_sizes]

    # a training size that is no multiple of NAFNet's padder: the kernels follow the padded feature maps
    odd = NAFNetLocal(**TINY, train_size=(1, 3, 30, 26))
    pools = [block.sca[0] for block in odd.modules() if hasattr(block, 'sca')]
    assert pools[0].kernel_size == (32 * 45 // 30, 28 * 39 // 26)

    with torch.device('meta'):
        big = NAFNetLocal(
            img_channel=3, width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1])
    assert sum(p.numel() for p in big.parameters()) == 17111907
    assert big.encoders[3][0].sca[0].kernel_size == (48, 48)  # 256 / 8 * 384 // 256


def test_conversion_without_meta_support_runs_a_real_pass(monkeypatch):
    """Where the shape pass cannot run on the meta device, a real pass on zeros gives the same kernels."""
    expected = [m.kernel_size for m in NAFNetLocal(**TINY, train_size=TRAIN).modules() if isinstance(m, LocalAvgPool2d)]

    def no_meta(*args, **kwargs):
        raise NotImplementedError('no meta kernel')

    monkeypatch.setattr(torch.func, 'functional_call', no_meta)
    net = NAFNetLocal(**TINY, train_size=TRAIN)
    assert [m.kernel_size for m in net.modules() if isinstance(m, LocalAvgPool2d)] == expected


@pytest.mark.parametrize('fast_imp', [False, True], ids=['exact', 'fast'])
def test_global_up_to_the_kernel_local_beyond(fast_imp):
    local, plain = _nafnet_pair(fast_imp=fast_imp)
    with torch.no_grad():
        for size in [(2, 3, 32, 32), (1, 3, 44, 40), (1, 3, 13, 7)]:
            # training size, and up to 1.5x: every pooled map is no larger than its kernel -> exactly NAFNet
            x = torch.rand(size)
            torch.testing.assert_close(local(x), plain(x), rtol=0, atol=0)
        x = torch.rand(1, 3, 80, 96)
        out = local(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert (out - plain(x)).abs().max() > 1e-4


def test_train_size_equal_to_input_is_global():
    x = torch.rand(1, 3, 52, 60)
    local, plain = _nafnet_pair(train_size=tuple(x.shape))
    with torch.no_grad():
        torch.testing.assert_close(local(x), plain(x), rtol=0, atol=0)


def test_local_statistics_are_local():
    """Beyond the kernel, an output pixel does not depend on input pixels farther away than the receptive field."""
    local, _ = _nafnet_pair(
        config=dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[], dec_blk_nums=[]),
        train_size=(1, 3, 8, 8))
    x = torch.rand(1, 3, 48, 48)
    y = x.clone()
    y[:, :, 40:, 40:] += 1.0  # change the bottom-right corner only
    with torch.no_grad():
        diff = (local(x) - local(y)).abs()
    assert diff[:, :, 40:, 40:].max() > 1e-3
    assert diff[:, :, :16, :16].max() == 0  # kernel 12 + 3x3 convs: the top-left corner does not see the change


def test_gradient_flows_through_local_pooling():
    local, _ = _nafnet_pair()
    local.train()
    x = torch.rand(1, 3, 72, 64, requires_grad=True)
    local(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) > 0
    for name, param in local.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_multihead_over_nafnetlocal_heads_are_exact():
    torch.manual_seed(0)
    net = MultiHeadArch(
        backbone=dict(type='NAFNetLocal', **TINY, train_size=list(TRAIN)), num_heads=3, combine=True, probe_size=32)
    _randomize_block_scalars(net, seed=3)
    net.eval()
    assert net.head_layer_names == ['ending'] and net.head_input_layers == {}
    state = net.state_dict()
    assert list(state) == [k for k, _ in reference_layout(**TINY)]
    x = torch.rand(2, 3, 70, 57)  # beyond 1.5x the training size: local statistics
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 6, 3, 70, 57)
    plain_outs = []
    for k in range(3):
        plain = NAFNetLocal(**TINY, train_size=TRAIN).eval()
        head_state = dict(state)
        head_state['ending.weight'] = state['ending.weight'][3 * k:3 * k + 3]
        head_state['ending.bias'] = state['ending.bias'][3 * k:3 * k + 3]
        plain.load_state_dict(head_state, strict=True)
        with torch.no_grad():
            plain_outs.append(plain(x))
    for index, (i, j) in enumerate(extended_head_pairs(3, True)):
        torch.testing.assert_close(out[:, index], 0.5 * (plain_outs[i] + plain_outs[j]), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# (c) same outputs as the published code (optional)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def reference():
    with load_reference('nafnet', ('arch_util', 'local_arch', 'NAFNet_arch'), package=True) as modules:
        yield modules


@pytest.mark.parametrize('fast_imp', [False, True], ids=['exact', 'fast'])
@pytest.mark.parametrize('train_size, size', [((1, 3, 32, 32), (2, 3, 72, 64)), ((1, 3, 32, 48), (1, 3, 45, 77)),
                                              ((1, 3, 24, 24), (1, 3, 100, 30)), ((1, 3, 32, 32), (1, 3, 40, 44))])
def test_nafnetlocal_matches_reference(reference, fast_imp, train_size, size):
    torch.manual_seed(0)
    ref_net = _randomize_block_scalars(
        reference['NAFNet_arch'].NAFNetLocal(**TINY, train_size=train_size, fast_imp=fast_imp), seed=1)
    net = NAFNetLocal(**TINY, train_size=train_size, fast_imp=fast_imp).eval()
    net.load_state_dict(ref_net.state_dict(), strict=True)
    ref_pools = [m for m in ref_net.modules() if type(m).__name__ == 'AvgPool2d']
    pools = [m for m in net.modules() if isinstance(m, LocalAvgPool2d)]
    assert [tuple(p.kernel_size) for p in ref_pools] == [p.kernel_size for p in pools]
    assert [(p.max_r1, p.max_r2) for p in ref_pools] == [(p.max_r1, p.max_r2) for p in pools]
    x = torch.rand(size)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref_net(x), rtol=0, atol=1e-5)


def test_local_pool_matches_reference_layer(reference):
    torch.manual_seed(0)
    for fast in (False, True):
        for size in [(1, 4, 37, 50), (2, 2, 20, 15)]:
            ref_pool = reference['local_arch'].AvgPool2d(base_size=(48, 48), train_size=TRAIN, fast_imp=fast)
            pool = LocalAvgPool2d(base_size=(48, 48), train_size=TRAIN, fast_imp=fast)
            first = torch.rand(1, 4, 16, 16)
            ref_pool(first), pool(first)
            x = torch.rand(size)
            torch.testing.assert_close(pool(x), ref_pool(x), rtol=0, atol=1e-6)
