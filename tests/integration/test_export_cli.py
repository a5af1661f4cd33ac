"""`basicsr-mh export` on a trained model (subprocesses): a head loads into the stock backbone, best head, refusals."""
import os
import pytest
import subprocess
import sys
import torch
from basicsr.archs import build_network
from conftest import srmodel_options, write_options
from test_export import NAFNET

import basicsr_mh_cli as cli
from basicsr_mh.tools.common import build_net


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
