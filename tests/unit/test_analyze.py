"""`basicsr-mh analyze`: heatmaps (Fig. 3/4), pairwise-head PSNR matrix (Fig. 6), win rates, rule table."""
import cv2
import json
import math
import os
import pytest
import torch
from conftest import srmodel_options, write_options

import basicsr_mh_cli as cli
from basicsr_mh.tools.common import build_net

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def _test_options(folder, pair_data, num_heads, combine):
    """A test option file of the conftest validation pairs and a MultiHeadArch NAFNet with distinct heads."""
    opt = srmodel_options(pair_data, f'analyze_{num_heads}_{combine}', num_heads=num_heads, combine=combine)
    del opt['datasets']['train']
    net, _ = build_net(opt)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    ckpt = os.path.join(folder, 'net_g.pth')
    torch.save(
        {
            'params': net.state_dict(),
            'params_ema': net.state_dict(),
            'multihead': {
                'num_heads': num_heads,
                'combine': combine,
                'best_head': 1
            }
        }, ckpt)
    opt['path']['pretrain_network_g'] = ckpt
    opt['is_train'] = False
    return write_options(os.path.join(folder, 'test.yml'), opt)


@pytest.fixture(scope='module')
def combined(pair_data, tmp_path_factory):
    root = tmp_path_factory.mktemp('analyze')
    opt = _test_options(str(root), pair_data, 3, True)
    out = root / 'out'
    assert cli.main(['analyze', '--opt', opt, '--out', str(out), '--quiet']) == 0
    return out, json.loads((out / 'table.json').read_text())


def test_pngs_readable_with_image_sizes(combined, pair_data):
    out, table = combined
    gt_names = sorted(os.listdir(pair_data['val'][0]))
    assert table['num_images'] == len(gt_names) == 2
    for name in gt_names:
        gt = cv2.imread(os.path.join(pair_data['val'][0], name))
        stem = os.path.splitext(name)[0]
        heat = cv2.imread(str(out / 'heatmaps' / f'{stem}_residual.png'))
        assert heat is not None and heat.shape == gt.shape
        diffs = [n for n in os.listdir(out / 'heatmaps') if n.startswith(f'{stem}_diff_')]
        assert len(diffs) == 1 and cv2.imread(str(out / 'heatmaps' / diffs[0])).shape == gt.shape
    for name in ('psnr_matrix.png', 'win_rates.png'):
        assert cv2.imread(str(out / name)) is not None
    assert (out / 'table.md').read_text().startswith('| rule | psnr | ssim |')


def test_table_numbers(combined):
    _, table = combined
    rows = table['rows']
    for m in ('psnr', 'ssim'):
        values = {name: row[m] for name, row in rows.items()}
        assert all(math.isfinite(v) for v in values.values())
        oracle, best, worst = (values['oracle (Eq. 7a)'], values['best single head (Eq. 7b)'],
                               values['worst head per image'])
        assert oracle >= best - 1e-9 and best >= worst - 1e-9
        for rule in ('select consensus', 'select sharpness', 'checkpoint best_head h1 (1+0)'):
            assert worst - 1e-9 <= values[rule] <= oracle + 1e-9  # picks one head per image
        assert math.isfinite(values['select mean'])
        assert best == pytest.approx(max(h[m] for h in table['heads'].values()))
    assert len(table['heads']) == 6
    assert sum(table['win_rates'].values()) == pytest.approx(1.0)


def test_matrix_is_k_by_k_with_heads_on_diagonal(combined):
    _, table = combined
    matrix = table['psnr_matrix']
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    heads = table['heads']
    for i, name in ((0, 'h0 (0+0)'), (1, 'h2 (1+1)'), (2, 'h5 (2+2)')):
        assert matrix[i][i] == pytest.approx(heads[name]['psnr'])
    assert matrix[2][1] == matrix[1][2] == pytest.approx(heads['h4 (2+1)']['psnr'])


def test_without_combine_and_max_images(pair_data, tmp_path):
    opt = _test_options(str(tmp_path), pair_data, 2, False)
    out = tmp_path / 'out'
    assert cli.main(['analyze', '--opt', opt, '--out', str(out), '--max-images', '1', '--pair', '1,0', '--quiet']) == 0
    table = json.loads((out / 'table.json').read_text())
    assert table['num_images'] == 1 and len(table['heads']) == 2
    matrix = table['psnr_matrix']
    assert len(matrix) == 2 and all(math.isfinite(v) for row in matrix for v in row)
    assert matrix[0][1] == matrix[1][0]
    assert len(os.listdir(out / 'heatmaps')) == 3  # Fig. 3, Fig. 4 and the figure with colour bars
    assert any('_diff_1-0' in n for n in os.listdir(out / 'heatmaps'))
    assert cli.main(['analyze', '--opt', opt, '--out', str(tmp_path / 'bad'), '--pair', '2,0', '--quiet']) == 1
