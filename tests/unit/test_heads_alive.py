"""Issue 10: identity start, relaxed/annealed assignment, dead-head warning, the exact `mean` head, and a checkpoint
that records the best head of its own iteration."""
import json
import logging
import math
import pytest
import torch
from conftest import srmodel_options, write_options

from basicsr_mh.archs.multihead_arch import MultiHeadArch
from basicsr_mh.heads import extended_head_pairs
from basicsr_mh.losses.min_head_loss import MinHeadLoss, assignment_weights
from basicsr_mh.metrics import per_head
from basicsr_mh.tools.common import build_net
from basicsr_mh.tools.export import build_plain, export_head
from basicsr_mh.train import train_pipeline

BACKBONES = {
    'NAFNet': dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'HINet': dict(type='HINet', wf=8, depth=3),
    'Restormer': dict(type='Restormer', dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]),
    'MPRNet': dict(type='MPRNet', n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4),
}
PSNR = {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}


def _final(net, out):
    if isinstance(out, list):
        out = out[getattr(getattr(net, 'backbone', net), 'final_output_index', -1)]
    return out if out.dim() == 5 else out.unsqueeze(1)


@pytest.mark.parametrize('name', sorted(BACKBONES))
@pytest.mark.parametrize('num_heads,combine', [(4, True), (1, False)])
def test_identity_start_every_head_is_its_input(name, num_heads, combine):
    torch.manual_seed(0)
    net, _ = build_net({'network_g': dict(BACKBONES[name], num_heads=num_heads, combine=combine, head_init='identity')})
    x = torch.rand(2, 3, 48, 64)  # real-photo-like range, another size than the build probe
    with torch.no_grad():
        heads = _final(net, net(x)).clamp(0, 1)
    psnr = per_head(heads, x, PSNR)  # (B, K')
    assert float(psnr.min()) >= 35.0
    k = heads.shape[1]
    assert k == (10 if combine else 1)
    for i in range(k):
        for j in range(i):
            assert not torch.equal(heads[:, i], heads[:, j])  # distinct: no ties in the min-head assignment


def _built(net_opt, seed=0):
    torch.manual_seed(seed)
    return build_net({'network_g': net_opt})[0]


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_default_start_is_identity_where_possible_else_backbone_and_checkpoints_load_across():
    nafnet = dict(BACKBONES['NAFNet'], num_heads=4, combine=True)
    default = _built(nafnet)
    assert default.head_init == 'identity'
    assert _same_weights(default, _built(dict(nafnet, head_init='identity')))
    backbone = _built(dict(nafnet, head_init='backbone'))
    assert backbone.head_init == 'backbone' and not _same_weights(default, backbone)
    # no global residual (super-resolution): the default keeps the backbone's start, an explicit identity is refused
    msrresnet = dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4, num_heads=2)
    fallback = _built(msrresnet)
    assert fallback.head_init == 'backbone' and _same_weights(fallback, _built(dict(msrresnet, head_init='backbone')))
    # a plain backbone (K = 1) keeps its own start unless identity is asked for
    plain = dict(BACKBONES['NAFNet'])
    assert _same_weights(_built(plain), _built(dict(plain, num_heads=1, combine=False)))
    # only the start differs: a checkpoint of either loads into the other and gives the same outputs
    default.load_state_dict(backbone.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(default(x), backbone(x))


def test_identity_refused_without_global_residual_and_bad_value_named():
    msrresnet = dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=4)
    with pytest.raises(
            ValueError, match='head_init: identity needs a backbone whose output is its input.*head_init: '
            'backbone'):
        build_net({'network_g': dict(msrresnet, num_heads=2, combine=False, head_init='identity')})
    with pytest.raises(ValueError, match=r'network_g.head_init must be one of backbone, identity, got .zero.'):
        build_net({'network_g': dict(BACKBONES['NAFNet'], num_heads=2, head_init='zero')})


# ---------------------------------------------------------------- assignment
def _losses(b=5, k=6, seed=0):
    return torch.rand(b, k, generator=torch.Generator().manual_seed(seed)) * 3 - 1


@pytest.mark.parametrize('assignment,kwargs', [('hard', {}), ('relaxed', dict(epsilon=0.05)),
                                               ('relaxed', dict(epsilon=0.3)), ('annealed', dict(temperature=2.0)),
                                               ('annealed', dict(temperature=0.1))])
def test_weights_sum_to_one_and_favour_the_winner(assignment, kwargs):
    losses = _losses()
    w = assignment_weights(losses, assignment, **kwargs)
    assert torch.allclose(w.sum(dim=1), torch.ones(5), atol=1e-6)
    assert bool((w >= 0).all())
    assert torch.equal(w.argmax(dim=1), losses.argmin(dim=1))
    if assignment == 'relaxed':
        eps = kwargs['epsilon']
        assert torch.allclose(w.max(dim=1).values, torch.full((5, ), 1 - eps))
        assert torch.allclose(w.min(dim=1).values, torch.full((5, ), eps / 5))
    if assignment == 'annealed':  # softmin of the losses: a larger loss never gets a larger weight
        order = losses.argsort(dim=1)
        assert bool((w.gather(1, order).diff(dim=1) <= 1e-7).all())


def test_relaxed_and_annealed_reduce_to_hard():
    losses = _losses()
    hard = assignment_weights(losses, 'hard')
    assert torch.equal(hard.sum(dim=1), torch.ones(5)) and torch.equal(hard.max(dim=1).values, torch.ones(5))
    assert torch.equal(assignment_weights(losses, 'relaxed', epsilon=0.0), hard)
    assert torch.equal(assignment_weights(losses, 'annealed', temperature=0.0), hard)
    loss = MinHeadLoss(loss={'type': 'L1Loss'}, assignment='annealed', temperature=1.0, anneal_iters=100)
    assert loss.temperature_at(1) == 1.0 and loss.temperature_at(51) == pytest.approx(0.5)
    assert loss.temperature_at(100) == 0.0 and loss.temperature_at(5000) == 0.0 and loss.temperature_at(None) == 0.0
    pred, gt = torch.rand(3, 4, 3, 8, 8), torch.rand(3, 3, 8, 8)
    hard_loss = MinHeadLoss(loss={'type': 'L1Loss'})
    assert torch.equal(loss(pred, gt, current_iter=100), hard_loss(pred, gt))


@pytest.mark.parametrize('assignment,kwargs', [('relaxed', dict(epsilon=0.2)), ('annealed', dict(temperature=1.0))])
def test_gradient_to_each_head_is_exactly_its_weight(assignment, kwargs):
    torch.manual_seed(0)
    pred = torch.rand(4, 6, 3, 8, 8, requires_grad=True)
    gt = torch.rand(4, 3, 8, 8)
    loss = MinHeadLoss(loss={'type': 'MSELoss'}, assignment=assignment, anneal_iters=10, **kwargs)
    total = loss(pred, gt, current_iter=1)
    total.backward()
    losses = loss.per_head_losses(pred.detach(), gt)
    weights = loss.weights(losses, current_iter=1)
    # d MSE(p, g) / d p = 2 (p - g) / N per element; the sample mean divides by B
    n = gt[0].numel()
    want = weights[:, :, None, None, None] * 2 * (pred.detach() - gt.unsqueeze(1)) / n / pred.shape[0]
    assert torch.allclose(pred.grad, want, atol=1e-7, rtol=1e-5)
    assert torch.allclose(total, (weights * losses).sum(dim=1).mean(), atol=1e-6)
    assert bool((pred.grad.flatten(2).abs().sum(dim=2) > 0).all())  # every head learns from every sample


def test_bad_assignment_options_named():
    with pytest.raises(ValueError, match='train.pixel_opt.assignment must be one of hard, relaxed, annealed'):
        MinHeadLoss(loss={'type': 'L1Loss'}, assignment='soft')
    with pytest.raises(ValueError, match=r'train.pixel_opt.epsilon must be a number in \[0.0, 0.999\]'):
        MinHeadLoss(loss={'type': 'L1Loss'}, assignment='relaxed', epsilon=1.5)


# ---------------------------------------------------------------- training: short form, dead heads, best head
def _train(pair_data, tmp_path, monkeypatch, name, total_iter=20, on_validation=None, **train):
    monkeypatch.chdir(tmp_path)
    opt = srmodel_options(pair_data, name, total_iter=total_iter, val_freq=10)
    opt['logger'].update(use_tb_logger=False, save_checkpoint_freq=10)
    opt['val']['save_img'] = False
    for key, value in train.items():
        if isinstance(value, dict):
            opt['train'].setdefault(key, {}).update(value)
        else:
            opt['train'][key] = value
    path = write_options(tmp_path / f'{name}.yml', opt)
    return train_pipeline(str(tmp_path), ['-opt', path], on_validation=on_validation), opt


def test_assignment_keys_next_to_a_plain_loss_and_dead_head_warning(pair_data, tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        model, _ = _train(
            pair_data,
            tmp_path,
            monkeypatch,
            'relaxed',
            pixel_opt={
                'assignment': 'relaxed',
                'epsilon': 0.1
            },
            dead_head_iters=3)
    assert model.cri_pix.assignment == 'relaxed' and model.cri_pix.epsilon == 0.1
    assert type(model.cri_pix.inner).__name__ == 'L1Loss'
    dead = [r.getMessage() for r in caplog.records if 'has won no training sample' in r.getMessage()]
    # with 2 samples a step and 4 base heads, some base head goes 3 iterations without a win
    assert dead and all('assignment: relaxed' in m and 'dead_head_iters' in m for m in dead)


def test_checkpoint_of_a_validating_iteration_has_its_best_head(pair_data, tmp_path, monkeypatch):
    _train(pair_data, tmp_path, monkeypatch, 'best_head')
    exp = tmp_path / 'experiments' / 'best_head'
    metrics = json.loads((exp / 'metrics.json').read_text())
    assert metrics['iter'] == 20
    best = int(metrics['datasets']['TinyVal']['best_head'])
    for name in ('net_g_20.pth', 'net_g_latest.pth'):
        assert torch.load(exp / 'models' / name, weights_only=True)['multihead']['best_head'] == best
    assert torch.load(exp / 'training_states' / '20.state', weights_only=True)['best_head'] == best


# ---------------------------------------------------------------- the mean head
@pytest.mark.parametrize('name', ['NAFNet', 'Restormer', 'HINet'])
def test_mean_head_exports_exactly_into_the_plain_backbone(name, tmp_path):
    torch.manual_seed(0)
    net_opt = dict(BACKBONES[name], num_heads=3, combine=True)
    if name == 'HINet':
        net_opt['feed_all_heads'] = False
    net, long_opt = build_net({'network_g': net_opt})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = tmp_path / 'mh.pth'
    torch.save({'params': net.state_dict(), 'multihead': {'num_heads': 3, 'combine': True, 'best_head': 1}}, ckpt)
    out = tmp_path / 'mean.pth'
    saved = export_head(str(ckpt), {'network_g': net_opt}, 'mean', str(out))
    assert saved['exported_from']['head'] == 'mean' and saved['exported_from']['pair'] is None
    plain, _ = build_plain(long_opt)
    plain.load_state_dict(torch.load(out, weights_only=True)['params'], strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = _final(net, net(x)).mean(dim=1)
        got = _final(plain, plain(x))[:, 0]
    assert float((got - want).abs().max()) <= 1e-5
    assert isinstance(net, MultiHeadArch) and len(extended_head_pairs(3, True)) == 6


def test_infer_heads_mean_writes_the_mean(tmp_path):
    import cv2
    import numpy as np

    import basicsr_mh_cli as cli
    torch.manual_seed(0)
    net_opt = dict(BACKBONES['NAFNet'], num_heads=3, combine=True)
    net, _ = build_net({'network_g': net_opt})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save({'params': net.state_dict()}, tmp_path / 'mh.pth')
    opt = write_options(tmp_path / 'test.yml', {
        'network_g': net_opt,
        'path': {
            'pretrain_network_g': str(tmp_path / 'mh.pth')
        }
    })
    (tmp_path / 'in').mkdir()
    img = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), img)
    for spec, folder in (('mean', 'mean'), ('all', 'all')):
        argv = ['infer', '--opt', opt, '--input', str(tmp_path / 'in'), '--output', str(tmp_path / folder), '--quiet']
        assert cli.main(argv + ['--heads', spec]) == 0
    mean = cv2.imread(str(tmp_path / 'mean' / 'a.png')).astype(np.float64)
    with torch.no_grad():
        x = torch.from_numpy(img[..., ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None]
        want = net(x)[0].mean(dim=0).clamp(0, 1).permute(1, 2, 0).numpy()[..., ::-1] * 255
    assert float(np.abs(mean - np.round(want)).max()) <= 1.0 and not math.isnan(float(mean.mean()))


def test_validation_records_carry_the_last_window_win_rates(pair_data, tmp_path, monkeypatch):
    """A validation right after a log line (which resets the counts) still reports the win rates, not zeros (the
    demo's report.json read all zeros)."""
    records = []
    _train(pair_data, tmp_path, monkeypatch, 'win_records', on_validation=records.append)  # validation after a log
    assert [r['iter'] for r in records] == [10, 20]
    for record in records:
        rates = [record[f'win_h{k}'] for k in range(10)]
        assert sum(rates) == pytest.approx(1.0) and max(rates) > 0
