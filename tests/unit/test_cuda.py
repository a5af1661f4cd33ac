"""The CUDA path: multi-head forward/backward equal the CPU's, and `basicsr train` runs with `num_gpu: 1`.

Skipped where no CUDA device is present (CI); run on a GPU machine with ``pytest tests/unit/test_cuda.py``.
"""
import copy
import glob
import os
import pytest
import subprocess
import sys
import torch
from basicsr.archs import build_network
from conftest import srmodel_options, write_options

from basicsr_mh.losses.min_head_loss import MinHeadLoss
from basicsr_mh.options import upgrade_network_options

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')

NAFNET_MHC = dict(
    type='NAFNet',
    img_channel=3,
    width=8,
    middle_blk_num=1,
    enc_blk_nums=[1, 1],
    dec_blk_nums=[1, 1],
    num_heads=4,
    combine=True)


def _build(net_opt):
    return build_network(upgrade_network_options(copy.deepcopy(net_opt))[0])


def _pair(seed, shape=(2, 3, 32, 32)):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)


@pytest.mark.parametrize('net_opt', [
    NAFNET_MHC,
    dict(type='HINet', wf=8, depth=3, num_heads=2, combine=True),
    dict(
        type='Restormer',
        dim=8,
        num_blocks=[1, 1, 1, 1],
        num_refinement_blocks=1,
        heads=[1, 1, 1, 1],
        num_heads=2,
        combine=False),
])
def test_forward_and_gradients_match_cpu(net_opt, monkeypatch):
    # TF32 convolutions/matmuls (the default on Ampere and later) round to 10 mantissa bits; compare in full FP32
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    torch.manual_seed(0)
    net_cpu = _build(net_opt).eval()
    net_gpu = copy.deepcopy(net_cpu).cuda()
    x, y = _pair(1)
    out_cpu, out_gpu = net_cpu(x), net_gpu(x.cuda())
    outs_cpu = out_cpu if isinstance(out_cpu, list) else [out_cpu]
    outs_gpu = out_gpu if isinstance(out_gpu, list) else [out_gpu]
    for a, b in zip(outs_cpu, outs_gpu):
        assert a.shape == b.shape and a.dim() == 5
        torch.testing.assert_close(b.cpu(), a, atol=2e-4, rtol=1e-3)
    loss = MinHeadLoss({'type': 'PSNRLoss'})
    result_cpu = loss.assign(outs_cpu[-1], y)
    result_cpu.loss.backward()
    result_gpu = loss.assign(outs_gpu[-1], y.cuda())
    result_gpu.loss.backward()
    assert torch.equal(result_gpu.winners.cpu(), result_cpu.winners)
    for (name, p_cpu), (_, p_gpu) in zip(net_cpu.named_parameters(), net_gpu.named_parameters()):
        if p_cpu.grad is None:
            assert p_gpu.grad is None or not p_gpu.grad.any(), name
            continue
        scale = float(p_cpu.grad.abs().max()) + 1e-8
        torch.testing.assert_close(p_gpu.grad.cpu() / scale, p_cpu.grad / scale, atol=5e-3, rtol=0, msg=name)


def test_only_the_winning_head_gets_gradient_on_cuda():
    torch.manual_seed(0)
    net = _build(dict(NAFNET_MHC, combine=False)).cuda()
    x, y = _pair(2, (1, 3, 32, 32))
    loss = MinHeadLoss({'type': 'L1Loss'})
    result = loss.assign(net(x.cuda()), y.cuda())
    result.loss.backward()
    winner = int(result.winners[0])
    grad = net.backbone.ending.weight.grad.view(4, 3, *net.backbone.ending.weight.shape[1:])
    for k in range(4):
        assert bool(grad[k].abs().sum() > 0) == (k == winner), k


def test_basicsr_train_runs_on_cuda(pair_data, tmp_path):
    opt = srmodel_options(pair_data, 'mhc_cuda', total_iter=10, val_freq=10)
    opt['num_gpu'] = 1
    opt_path = write_options(tmp_path / 'train_cuda.yml', opt)
    proc = subprocess.run([sys.executable, '-m', 'basicsr_mh.train', '-opt', opt_path],
                          cwd=tmp_path,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(glob.glob(str(tmp_path / 'experiments' / 'mhc_cuda' / 'train_mhc_cuda_*.log'))[0]).read()
    assert 'psnr_overall' in log and 'heads/win_h0' in log
    ckpt = torch.load(
        tmp_path / 'experiments' / 'mhc_cuda' / 'models' / 'net_g_10.pth', map_location='cpu', weights_only=True)
    assert ckpt['params']['ending.weight'].shape[0] == 4 * 3
    assert all(t.device.type == 'cpu' and torch.isfinite(t).all() for t in ckpt['params'].values())
    assert os.path.isfile(tmp_path / 'experiments' / 'mhc_cuda' / 'training_states' / '10.state')
