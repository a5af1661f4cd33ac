"""Tests for :mod:`basicsr_mh.losses`: PSNRLoss and MinHeadLoss (the paper's Eq. 4-5).

Expected values are computed by hand here, sample by sample; ``MinHeadLoss(PSNRLoss)`` is compared with the formula of
the reference ``MultiHeadPSNRLoss`` (Liu-SD/multi-output-deblur, ``NAFNet-main/basicsr/models/losses/losses.py``):
``loss_weight * 10 / ln(10) * log(min_k mse[b, k] + 1e-8).mean()``.
"""
# isort: off
import basicsr_mh  # noqa: F401  (must come before basicsr)
# isort: on
import math
import pytest
import torch
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY

from basicsr_mh.losses import min_head_loss
from basicsr_mh.losses.min_head_loss import MinHeadLoss
from basicsr_mh.losses.psnr_loss import PSNRLoss

SCALE = 10 / math.log(10)
Y_COEF = torch.tensor([65.481, 128.553, 24.966]).reshape(1, 3, 1, 1)


def _data(b=4, k=5, c=3, h=6, w=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(b, c, h, w, generator=gen)
    # heads at different distances from the target, so the winners vary over the samples
    noise = torch.randn(b, k, c, h, w, generator=gen) * torch.rand(b, k, 1, 1, 1, generator=gen)
    return target.unsqueeze(1) + 0.3 * noise, target


def _to_y(x, channel_dim):
    coef = Y_COEF if channel_dim == 1 else Y_COEF.unsqueeze(0)
    return ((x * coef).sum(dim=channel_dim, keepdim=True) + 16.) / 255.


def _reference_multihead_psnr(pred, target, loss_weight=1.0, to_y=False):
    """The reference MultiHeadPSNRLoss.forward, written out."""
    if to_y:
        pred, target = _to_y(pred, 2), _to_y(target, 1)
    l2 = ((pred - target.unsqueeze(1))**2).mean(dim=(2, 3, 4))
    l2 = l2.min(dim=1)[0]
    return loss_weight * SCALE * torch.log(l2 + 1e-8).mean()


# --------------------------------------------------------------------------------------------------------------------
# PSNRLoss
# --------------------------------------------------------------------------------------------------------------------
def test_psnr_loss_by_hand():
    pred, target = _data(b=3, k=1)
    pred = pred[:, 0]
    expected = sum(SCALE * math.log(float(((pred[n] - target[n])**2).mean()) + 1e-8) for n in range(3)) / 3
    assert abs(float(PSNRLoss()(pred, target)) - expected) < 1e-5
    assert abs(float(PSNRLoss(loss_weight=0.5)(pred, target)) - 0.5 * expected) < 1e-5
    per_sample = PSNRLoss().per_sample(pred, target)
    assert per_sample.shape == (3, )
    # equal images: log(1e-8) * 10 / ln10 = -80 dB
    assert abs(float(PSNRLoss()(target, target)) + 80.0) < 1e-4


def test_psnr_loss_to_y():
    pred, target = _data(b=3, k=1, seed=1)
    pred = pred[:, 0]
    yp, yt = _to_y(pred, 1), _to_y(target, 1)
    assert yp.shape == (3, 1, 6, 7)
    expected = sum(SCALE * math.log(float(((yp[n] - yt[n])**2).mean()) + 1e-8) for n in range(3)) / 3
    assert abs(float(PSNRLoss(toY=True)(pred, target)) - expected) < 1e-5
    assert abs(float(PSNRLoss(toY=True)(pred, target)) - float(PSNRLoss()(pred, target))) > 1e-3


def test_psnr_loss_rejects_other_reductions():
    for reduction in ('sum', 'none'):
        with pytest.raises(ValueError, match='reduction'):
            PSNRLoss(reduction=reduction)
    with pytest.raises(ValueError):
        PSNRLoss().per_sample(torch.rand(2, 3, 4), torch.rand(2, 3, 4))


# --------------------------------------------------------------------------------------------------------------------
# MinHeadLoss
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('to_y', [False, True], ids=['rgb', 'y'])
def test_min_head_psnr_equals_reference_multihead_psnr(to_y):
    pred, target = _data(b=4, k=5, seed=2)
    loss = MinHeadLoss(loss={'type': 'PSNRLoss', 'loss_weight': 0.7, 'toY': to_y})
    value, _, losses = loss.assign(pred, target)
    expected = _reference_multihead_psnr(pred, target, loss_weight=0.7, to_y=to_y)
    assert abs(float(value) - float(expected)) < 1e-6 * max(1.0, abs(float(expected)))
    assert losses.shape == (4, 5)
    assert torch.equal(loss(pred, target), value)


@pytest.mark.parametrize('inner', ['L1Loss', 'MSELoss', 'CharbonnierLoss'])
@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_min_head_over_basicsr_losses(inner, reduction):
    pred, target = _data(b=4, k=3, seed=3)
    opt = {'type': inner, 'loss_weight': 2.0, 'reduction': reduction}
    single = LOSS_REGISTRY.get(inner)(loss_weight=2.0, reduction=reduction)
    table = torch.tensor([[float(single(pred[b:b + 1, k], target[b:b + 1])) for k in range(3)] for b in range(4)])
    loss = MinHeadLoss(loss=opt, loss_weight=0.5)
    value, winners, losses = loss.assign(pred, target)
    per_sample_min = table.min(dim=1).values
    expected = 0.5 * (per_sample_min.mean() if reduction == 'mean' else per_sample_min.sum())
    assert abs(float(value) - float(expected)) < 1e-5 * max(1.0, abs(float(expected)))
    assert losses.shape == (4, 3)
    torch.testing.assert_close(losses.float(), table, rtol=1e-5, atol=1e-6)
    assert winners.tolist() == table.argmin(dim=1).tolist()
    assert len(set(winners.tolist())) > 1  # the data make different heads win


@pytest.mark.parametrize('inner', ['PSNRLoss', 'L1Loss', 'MSELoss', 'CharbonnierLoss'])
def test_gradient_reaches_only_the_winning_head(inner):
    pred, target = _data(b=4, k=4, seed=4)
    pred = pred.detach().requires_grad_(True)
    loss = MinHeadLoss(loss={'type': inner})
    result = loss.assign(pred, target)
    result.loss.backward()
    winners = result.winners.tolist()
    assert len(set(winners)) > 1
    for b in range(4):
        for k in range(4):
            if k == winners[b]:
                assert torch.count_nonzero(pred.grad[b, k]) > 0, (b, k)
            else:
                assert torch.count_nonzero(pred.grad[b, k]) == 0, (b, k)
    # the winner's gradient is that of its own inner loss, divided by the batch size
    b = 0
    alone = pred[b:b + 1, winners[b]].detach().requires_grad_(True)
    (LOSS_REGISTRY.get(inner)()(alone, target[b:b + 1]) / 4).backward()
    torch.testing.assert_close(pred.grad[b, winners[b]], alone.grad[0], rtol=1e-5, atol=1e-7)


def test_four_dimensional_pred_passes_through():
    pred, target = _data(b=2, k=1, seed=5)
    pred = pred[:, 0]
    loss = MinHeadLoss(loss={'type': 'L1Loss', 'loss_weight': 3.0}, loss_weight=0.5)
    expected = 0.5 * LOSS_REGISTRY.get('L1Loss')(loss_weight=3.0)(pred, target)
    result = loss.assign(pred, target)
    assert torch.allclose(result.loss, expected, rtol=0, atol=1e-7)
    assert result.winners is None and result.losses is None


def test_wrong_shapes_raise():
    loss = MinHeadLoss(loss={'type': 'L1Loss'})
    target = torch.rand(2, 3, 6, 7)
    for pred in (torch.rand(3, 4, 3, 6, 7), torch.rand(2, 4, 1, 6, 7), torch.rand(2, 4, 3, 6, 8), torch.rand(2, 3, 6),
                 torch.rand(1, 2, 4, 3, 6, 7)):
        with pytest.raises(ValueError, match='MinHeadLoss'):
            loss(pred, target)


def test_bad_inner_loss_options_raise():
    with pytest.raises(ValueError, match='L1Loss'):
        MinHeadLoss(loss={'type': 'L1Los'})
    with pytest.raises(ValueError, match='PSNRLoss'):
        MinHeadLoss(loss={'type': 'PSNRLos'})
    with pytest.raises(ValueError):
        MinHeadLoss()
    with pytest.raises(ValueError):
        MinHeadLoss(loss={'type': 'MinHeadLoss', 'loss': {'type': 'L1Loss'}})
    with pytest.raises(ValueError):
        MinHeadLoss(loss={'loss_weight': 1.0})
    with pytest.raises(ValueError, match='L1Loss'):
        MinHeadLoss(loss={'type': 'L1Loss', 'no_such_option': 1})
    with pytest.raises(ValueError, match='reduction'):
        MinHeadLoss(loss={'type': 'L1Loss', 'reduction': 'none'})


def test_built_through_basicsr_build_loss():
    loss = build_loss({'type': 'MinHeadLoss', 'loss': {'type': 'L1Loss'}})
    assert isinstance(loss, MinHeadLoss)
    assert LOSS_REGISTRY.get('MinHeadLoss') is MinHeadLoss and LOSS_REGISTRY.get('PSNRLoss') is PSNRLoss
    pred, target = _data(b=3, k=2, seed=6)
    expected = torch.stack([(pred[:, k] - target).abs().mean(dim=(1, 2, 3)) for k in range(2)], 1).min(1).values.mean()
    assert abs(float(loss(pred, target)) - float(expected)) < 1e-6


@pytest.mark.parametrize('to_y', [False, True], ids=['rgb', 'y'])
def test_psnr_per_head_equals_per_sample_of_each_head(to_y):
    """MinHeadLoss's broadcast per-head PSNR losses are bit-identical to the per-sample ones on copied targets."""
    pred, target = _data(b=3, k=5, seed=7)
    loss = PSNRLoss(loss_weight=0.7, toY=to_y)
    expected = loss.per_sample(
        pred.reshape(15, *pred.shape[2:]),
        target.unsqueeze(1).expand_as(pred).reshape(15, *target.shape[1:])).view(3, 5)
    assert torch.equal(loss.per_head(pred, target), expected)
    assert torch.equal(
        MinHeadLoss(loss={
            'type': 'PSNRLoss',
            'loss_weight': 0.7,
            'toY': to_y
        }).per_head_losses(pred, target), expected)


@pytest.mark.parametrize('inner', ['L1Loss', 'CharbonnierLoss'])
def test_per_head_losses_in_chunks_equal_one_batch(inner, monkeypatch):
    """Large inputs are assigned a few heads at a time (min_head_loss.HEAD_CHUNK_ELEMENTS): the same table."""
    pred, target = _data(b=2, k=5, seed=8)
    loss = MinHeadLoss(loss={'type': inner})
    whole = loss.per_head_losses(pred, target)
    per_head = pred[:, 0].numel()
    for budget in (per_head, 2 * per_head, 3 * per_head):  # chunks of 1, 2 and 3 heads (the last one shorter)
        monkeypatch.setattr(min_head_loss, 'HEAD_CHUNK_ELEMENTS', budget)
        torch.testing.assert_close(loss.per_head_losses(pred, target), whole, rtol=0, atol=1e-7)
