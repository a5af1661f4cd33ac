"""Learned head scores (network_g.head_scores): shapes, the training signal, checkpoints, export, infer --select
scores|scored-mean, and analyze's rows and calibration."""
import copy
import cv2
import json
import numpy as np
import os
import pytest
import torch
from conftest import in_process_training, srmodel_options, write_options

import basicsr_mh_cli as cli
from basicsr_mh.archs.multihead_layers import image_scores
from basicsr_mh.inference import InferenceRunner
from basicsr_mh.tools.common import build_net
from basicsr_mh.tools.export import build_plain, export_head
from basicsr_mh.tools.selection import select
from basicsr_mh.train import train_pipeline

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def scored_net(backbone=NAFNET, seed=0, **extra):
    torch.manual_seed(seed)
    net, net_opt = build_net({'network_g': dict(backbone, num_heads=3, combine=True, head_scores=True, **extra)})
    with torch.no_grad():  # distinct heads and non-uniform scores
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net, net_opt


@pytest.mark.parametrize('backbone', [NAFNET, dict(type='HINet', wf=8, depth=3)], ids=['NAFNet', 'HINet'])
def test_shapes_and_heads_unchanged_by_the_branch(backbone):
    net, _ = scored_net(backbone)
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        heads, scores = net(x, return_scores=True)
        plain = net(x)
    final = heads[-1] if isinstance(heads, list) else heads
    assert scores.shape == (2, 6, 32, 40) and final.shape == (2, 6, 3, 32, 40)
    assert image_scores(scores).shape == (2, 6)
    assert torch.equal(final, plain[-1] if isinstance(plain, list) else plain)
    # the same weights without the branch give the same heads; the branch adds only score_branch.* keys
    torch.manual_seed(0)
    bare, _ = build_net({'network_g': dict(backbone, num_heads=3, combine=True)})
    state = net.state_dict()
    extra = sorted(k for k in state if k not in bare.state_dict())
    assert extra and all(k.startswith('score_branch.') for k in extra)
    bare.load_state_dict({k: v for k, v in state.items() if k not in extra}, strict=True)
    with torch.no_grad():
        other = bare(x)
    assert torch.equal(other[-1] if isinstance(other, list) else other, final)


def test_fresh_branch_scores_every_head_equally_and_needs_the_flag():
    torch.manual_seed(0)
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=3, combine=True, head_scores=True)})
    _, scores = net(torch.rand(1, 3, 16, 16), return_scores=True)
    assert float(scores.abs().max()) == 0.0
    bare, _ = build_net({'network_g': dict(NAFNET, num_heads=3, combine=True)})
    with pytest.raises(ValueError, match='head_scores: true'):
        bare(torch.rand(1, 3, 16, 16), return_scores=True)


def _model(pair_data, tmp_path, score_to_backbone=False, total_iter=4):
    from basicsr.models import build_model

    from basicsr_mh.options import upgrade_options
    opt = srmodel_options(pair_data, 'scores', total_iter=total_iter, val_freq=10**6)
    opt['network_g'].update(head_scores=True, score_to_backbone=score_to_backbone)
    opt['train'].update(ema_decay=0, score_weight=1.0)
    upgrade_options(in_process_training(opt, tmp_path))
    return build_model(opt)


def test_score_loss_gradient_reaches_the_branch_and_the_backbone_only_when_asked(pair_data, tmp_path):
    torch.manual_seed(0)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for to_backbone in (False, True):
        model = _model(pair_data, tmp_path, to_backbone)
        net = model.get_bare_model(model.net_g)
        with torch.no_grad():
            net.score_branch[2].weight.normal_(0, 0.1)
        model.gt = gt
        heads, scores = net(lq, return_scores=True)
        winners = torch.tensor([1, 4])
        model.score_loss(scores, winners).backward()
        branch = [p.grad for n, p in net.named_parameters() if n.startswith('score_branch')]
        backbone = [p.grad for n, p in net.named_parameters() if not n.startswith('score_branch')]
        assert all(g is not None and float(g.abs().sum()) > 0 for g in branch)
        reached = any(g is not None and float(g.abs().sum()) > 0 for g in backbone)
        assert reached == to_backbone


def test_score_loss_learns_which_head_wins(pair_data, tmp_path):
    """On a fixed batch, a few steps on the branch alone lower the loss and rank each sample's winner first."""
    torch.manual_seed(0)
    model = _model(pair_data, tmp_path)
    net = model.get_bare_model(model.net_g)
    lq = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for name, p in net.named_parameters():  # heads far apart
            if not name.startswith('score_branch'):
                p.add_(0.05 * torch.randn_like(p))
        heads = net(lq)
        # labels that are heads 2 and 5 of the two samples, up to a little noise
        model.gt = torch.stack((heads[0, 2], heads[1, 5])) + 0.001 * torch.randn(2, 3, 32, 32)
    winners = model.cri_pix.per_head_losses(heads, model.gt).argmin(dim=1)
    assert winners.tolist() == [2, 5]
    optimizer = torch.optim.Adam(net.score_branch.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        heads, scores = net(lq, return_scores=True)
        loss = model.score_loss(scores, winners)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert image_scores(scores).argmax(dim=1).tolist() == [2, 5]


def test_training_logs_the_score_loss_and_checkpoints_carry_the_branch(pair_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = srmodel_options(pair_data, 'scored_run', total_iter=10, val_freq=10)
    opt['network_g'].update(head_scores=True)
    opt['logger'].update(use_tb_logger=False, print_freq=5)
    opt['val']['save_img'] = False
    model = train_pipeline(str(tmp_path), ['-opt', write_options(tmp_path / 'train.yml', opt)])
    assert 'l_score' in model.log_dict and float(model.log_dict['l_score']) > 0
    ckpt = torch.load(tmp_path / 'experiments' / 'scored_run' / 'models' / 'net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        assert any(k.startswith('score_branch.') for k in ckpt[key])
    net, _ = build_net(opt)
    net.load_state_dict(ckpt['params'], strict=True)
    trained = model.get_bare_model(model.net_g)
    assert torch.equal(net.score_branch[2].weight, trained.score_branch[2].weight.detach().cpu())


def test_select_rules_on_scores():
    heads = torch.rand(6, 3, 8, 8)
    scores = torch.randn(6, 8, 8)
    index, image = select(heads, 'scores', scores)
    assert index == int(scores.mean(dim=(1, 2)).argmax()) and torch.equal(image, heads[index])
    index, image = select(heads, 'scored-mean', scores)
    weights = torch.exp(scores) / torch.exp(scores).sum(dim=0, keepdim=True)
    assert index == -1 and torch.allclose(image, (weights.unsqueeze(1) * heads).sum(dim=0), atol=1e-6)
    with pytest.raises(ValueError, match='head_scores: true'):
        select(heads, 'scores')


@pytest.fixture(scope='module')
def scored_files(tmp_path_factory, pair_data):
    root = tmp_path_factory.mktemp('scored')
    net, net_opt = scored_net()
    ckpt = root / 'net_g.pth'
    torch.save({'params': net.state_dict(), 'multihead': {'num_heads': 3, 'combine': True, 'best_head': 1}}, ckpt)
    opt = srmodel_options(pair_data, 'scored_test', num_heads=3, combine=True)
    del opt['datasets']['train']
    opt['network_g'].update(head_scores=True)
    opt['path']['pretrain_network_g'] = str(ckpt)
    opt['is_train'] = False
    (root / 'in').mkdir()
    img = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(root / 'in' / 'a.png'), img)
    return root, net, write_options(root / 'test.yml', opt), img


def test_infer_select_scores_and_scored_mean(scored_files):
    root, net, opt, img = scored_files
    x = torch.from_numpy(img[..., ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        heads, scores = net(x, return_scores=True)
    want = {'scores': select(heads[0], 'scores', scores[0]), 'scored-mean': select(heads[0], 'scored-mean', scores[0])}
    for rule in ('scores', 'scored-mean'):
        out = root / f'out_{rule}'
        assert cli.main([
            'infer', '--opt', opt, '--input',
            str(root / 'in'), '--output',
            str(out), '--quiet', '--select', rule, '--tile', '0'
        ]) == 0
        got = cv2.imread(str(out / 'a.png')).astype(np.float64)
        expected = want[rule][1].clamp(0, 1).permute(1, 2, 0).numpy()[..., ::-1] * 255
        assert float(np.abs(got - np.round(expected)).max()) <= 1.0
        rows = (out / 'selection.csv').read_text().splitlines()
        assert rows[1].startswith(f'a.png,{rule},')
        if rule == 'scores':
            assert rows[1].endswith(f'h{want[rule][0]} ({"+".join(map(str, net.head_pairs[want[rule][0]]))})')
        else:
            assert rows[1].endswith('scored-mean')
    # tiled: the logits are blended as the heads; the result stays close to the whole-image one
    runner = InferenceRunner.for_images(net, 'cpu', tile=32, overlap=8, with_scores=True)
    tiled_heads, tiled_scores = runner(x)
    whole_heads, whole_scores = InferenceRunner.for_images(net, 'cpu', with_scores=True)(x)
    assert tiled_scores.shape == whole_scores.shape == (1, 6, 40, 52)
    assert float((tiled_heads - whole_heads).abs().mean()) < 0.05


def test_scored_rules_refused_without_a_score_branch(tmp_path, capsys):
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=2, combine=True)})
    torch.save({'params': net.state_dict()}, tmp_path / 'plain.pth')
    opt = write_options(tmp_path / 't.yml', {
        'network_g': dict(NAFNET, num_heads=2, combine=True),
        'path': {
            'pretrain_network_g': str(tmp_path / 'plain.pth')
        }
    })
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), np.zeros((16, 16, 3), np.uint8))
    assert cli.main([
        'infer', '--opt', opt, '--input',
        str(tmp_path / 'in'), '--output',
        str(tmp_path / 'o'), '--select', 'scored-mean'
    ]) == 1
    assert 'needs a model trained with network_g.head_scores: true' in capsys.readouterr().err


def test_export_drops_the_branch(scored_files, tmp_path):
    root, net, opt_path, _ = scored_files
    import yaml
    opt = yaml.safe_load(open(opt_path))
    out = tmp_path / 'plain.pth'
    export_head(str(root / 'net_g.pth'), opt, 'mean', str(out))
    plain, _ = build_plain(build_net(opt)[1])
    state = torch.load(out, weights_only=True)['params']
    assert not any(k.startswith('score_branch') for k in state)
    plain.load_state_dict(state, strict=True)


def test_analyze_reports_scored_rules_and_calibration(scored_files):
    root, _, opt, _ = scored_files
    out = root / 'analysis'
    assert cli.main(['analyze', '--opt', opt, '--out', str(out), '--quiet']) == 0
    table = json.loads((out / 'table.json').read_text())
    assert {'select scores', 'select scored-mean'} <= set(table['rows'])
    cal = table['score_calibration']
    assert 0.0 <= cal['top_is_oracle'] <= 1.0 and 0.0 < cal['oracle_probability'] < 1.0
    assert cal['chance'] == pytest.approx(1 / 6)
    per_image = table['images']
    assert cal['top_is_oracle'] == pytest.approx(np.mean([r['scores'] == r['oracle_head'] for r in per_image]))
    assert 'Score calibration' in (out / 'table.md').read_text()
    assert os.path.isfile(out / 'psnr_matrix.png') and copy.deepcopy(table)['num_images'] == 2


def test_python_api_build_network_short_form():
    import basicsr_mh
    torch.manual_seed(0)
    net = basicsr_mh.build_network(dict(NAFNET, num_heads=4, combine=True, head_scores=True))
    heads, scores = net.eval()(torch.rand(1, 3, 24, 24), return_scores=True)
    assert heads.shape == (1, 10, 3, 24, 24) and scores.shape == (1, 10, 24, 24)
    plain = basicsr_mh.build_network(NAFNET)
    assert plain(torch.rand(1, 3, 24, 24)).shape == (1, 3, 24, 24)


@pytest.mark.parametrize(
    'extra, message', [(dict(num_heads=1, head_scores=True), 'two or more heads'),
                       (dict(num_heads=3, score_to_backbone=True), 'add `head_scores: true`'),
                       (dict(num_heads=3, head_scores='yes'), 'must be true or false')],
    ids=['one-output', 'backbone-without-scores', 'not-bool'])
def test_score_keys_refused_where_they_would_be_dropped(extra, message):
    """head_scores on a one-output network would silently build the plain backbone; score_to_backbone alone does
    nothing: both fail with the key named, in the short form, the long form and the Python constructor."""
    from basicsr_mh.archs.multihead_arch import MultiHeadArch
    from basicsr_mh.options import upgrade_network_options
    with pytest.raises(ValueError, match=message):
        upgrade_network_options(dict(NAFNET, **extra))
    long_form = dict(type='MultiHeadArch', backbone=dict(NAFNET), **extra)
    with pytest.raises(ValueError, match=f'network_g.*{message}'):
        upgrade_network_options(long_form)
    with pytest.raises(ValueError, match=message):
        MultiHeadArch(backbone=dict(NAFNET), **extra)


@pytest.mark.parametrize('weight', [-1, 'high', True, float('nan'), float('inf')])
def test_bad_score_weight_refused_before_training(weight):
    from basicsr_mh.options import check_score_weight, upgrade_options
    opt = {'network_g': dict(NAFNET, num_heads=2, head_scores=True), 'train': {'score_weight': weight}}
    with pytest.raises(ValueError, match='train.score_weight must be a finite number >= 0'):
        upgrade_options(opt, notes=[])
    assert check_score_weight(0) == 0.0 and check_score_weight(2) == 2.0
