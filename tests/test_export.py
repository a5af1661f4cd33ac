"""`basicsr-mh export`: one head as a plain backbone checkpoint that the stock architecture loads strictly."""
import os
import pytest
import subprocess
import sys
import torch
from basicsr.archs import build_network
from conftest import srmodel_options, write_options

import basicsr_mh_cli as cli
from basicsr_mh.tools.common import ToolError, build_net, parse_head
from basicsr_mh.tools.export import build_plain, plain_state_dict

NAFNET = dict(type='NAFNet', img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
BACKBONES = {
    'NAFNet': NAFNET,
    'Restormer': dict(type='Restormer', dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]),
    'EDSR-x2': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2, img_range=255.),
    'MSRResNet-x2': dict(type='MSRResNet', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2),
}
HINET = dict(type='HINet', wf=8, depth=3, hin_position_left=1, hin_position_right=2)


def _perturb(net, seed=1, std=0.05):
    """Make every head different (a fresh net's extra heads share biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return net


def _final(out, index=-1):
    return out[index] if isinstance(out, (list, tuple)) else out


def _assert_every_head_exports(net_opt, size=32, index_of_final=-1):
    net, long_opt = build_net({'network_g': net_opt})
    _perturb(net)
    x = torch.rand(2, 3, size, size + 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        heads = _final(net(x), index_of_final)
        for k in range(net.num_outputs):
            plain, _ = build_plain(long_opt)
            plain.load_state_dict(plain_state_dict(net, k), strict=True)
            torch.testing.assert_close(_final(plain(x), index_of_final), heads[:, k], rtol=0, atol=1e-5)


@pytest.mark.parametrize('combine', [True, False])
@pytest.mark.parametrize('name', list(BACKBONES))
def test_every_head_exports_exactly(name, combine):
    _assert_every_head_exports(dict(BACKBONES[name], num_heads=3, combine=combine))


def test_hinet_without_feed_all_heads_exports_exactly():
    _assert_every_head_exports(dict(HINET, num_heads=2, combine=True, feed_all_heads=False))


def test_hinet_feed_all_heads_refused_when_heads_differ_exact_when_equal():
    net, _ = build_net({'network_g': dict(HINET, num_heads=2, combine=True)})
    assert net.head_input_layers, 'HINet should have a conv that reads all stage-1 heads'
    # fresh: the stage-input conv starts as W / K for every head image, so the plain conv sum_k W_k is exact
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        heads = net(x)[-1]
        for k in range(net.num_outputs):
            plain, _ = build_plain({'type': 'MultiHeadArch', 'backbone': HINET})
            plain.load_state_dict(plain_state_dict(net, k), strict=True)
            torch.testing.assert_close(plain(x)[-1], heads[:, k], rtol=0, atol=1e-5)
    _perturb(net)
    with pytest.raises(ToolError, match='feed_all_heads'):
        plain_state_dict(net, 0)


def test_parse_head():
    net, _ = build_net({'network_g': dict(NAFNET, num_heads=3, combine=True)})
    ckpt = {'multihead': {'best_head': 5}}
    assert parse_head('best', net, ckpt) == 5
    assert parse_head('h4', net, ckpt) == parse_head('4', net, ckpt) == parse_head('2+1', net, ckpt) == 4
    assert parse_head('1+2', net, ckpt) == 4
    with pytest.raises(ToolError, match='does not exist'):
        parse_head('6', net, ckpt)
    with pytest.raises(ToolError, match='best_head'):
        parse_head('best', net, {})
    plain_heads, _ = build_net({'network_g': dict(NAFNET, num_heads=3, combine=False)})
    assert parse_head('2+2', plain_heads, ckpt) == 2
    with pytest.raises(ToolError, match='combine: false'):
        parse_head('2+1', plain_heads, ckpt)


@pytest.fixture(scope='module')
def trained(pair_data, tmp_path_factory):
    """`basicsr train`: NAFNet width 8, K=4 combine (K'=10), 4 iterations, validated and saved at 4."""
    workdir = tmp_path_factory.mktemp('export_run')
    opt = srmodel_options(pair_data, 'mhc_export', total_iter=4, val_freq=4)
    opt['logger'].update(save_checkpoint_freq=4, use_tb_logger=False)
    opt_path = write_options(workdir / 'train.yml', opt)
    exe = os.path.join(os.path.dirname(sys.executable), 'basicsr')
    proc = subprocess.run([exe, 'train', '-opt', opt_path], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, opt_path, str(workdir / 'experiments' / 'mhc_export' / 'models' / 'net_g_4.pth')


@pytest.mark.slow
def test_done_when_head_2_plus_1_loads_into_stock_nafnet(trained, pair_data):
    workdir, opt_path, ckpt = trained
    out = str(workdir / 'h4.pth')
    exe = os.path.join(os.path.dirname(sys.executable), 'basicsr-mh')
    proc = subprocess.run([exe, 'export', '--ckpt', ckpt, '--opt', opt_path, '--head', '2+1', '--out', out],
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'h4 (2+1)' in proc.stdout
    exported = torch.load(out, map_location='cpu', weights_only=True)
    assert set(exported) == {'params', 'params_ema', 'exported_from'}
    assert exported['exported_from']['head'] == 4 and exported['exported_from']['pair'] == [2, 1]
    source = torch.load(ckpt, map_location='cpu', weights_only=True)
    multi, _ = build_net({'network_g': srmodel_options(pair_data, 'x')['network_g']})
    x = torch.rand(1, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    for key in ('params', 'params_ema'):
        stock = build_network(dict(NAFNET)).eval()
        stock.load_state_dict(exported[key], strict=True)
        assert exported[key]['ending.weight'].shape[0] == 3
        multi.load_state_dict(source[key], strict=True)
        with torch.no_grad():
            torch.testing.assert_close(stock(x), multi(x)[:, 4], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_best_head_and_refusals(trained, tmp_path, capsys):
    _, opt_path, ckpt = trained
    out = str(tmp_path / 'best.pth')
    assert cli.main(['export', '--ckpt', ckpt, '--opt', opt_path, '--out', out]) == 0
    best = torch.load(ckpt, map_location='cpu', weights_only=True)['multihead']['best_head']
    assert torch.load(out, map_location='cpu', weights_only=True)['exported_from']['head'] == best
    before = os.path.getmtime(out)
    assert cli.main(['export', '--ckpt', ckpt, '--opt', opt_path, '--head', '0', '--out', out]) == 1
    assert 'never overwrites' in capsys.readouterr().err
    assert os.path.getmtime(out) == before
    bad = str(tmp_path / 'x.pth')
    assert cli.main(['export', '--ckpt', ckpt, '--opt', opt_path, '--head', '10', '--out', bad]) == 1
    assert 'h0..h9' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'x.pth')
