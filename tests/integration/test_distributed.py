"""Two processes with gloo on the CPU: torchrun training works, and sharded validation equals a one-process run."""
import contextlib
import json
import os
import pytest
import socket
import subprocess
import sys
import time
from conftest import PHOTOS, srmodel_options, write_options

from basicsr_mh.data.example_pairs import make_pair_folder

pytestmark = pytest.mark.slow  # subprocess runs of training / the CLI


@contextlib.contextmanager
def busy_port():
    """A port on which this process listens while the context lasts (what another program may do at any time)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        yield sock.getsockname()[1]


def run(args, workdir, nproc=None, timeout=300, env_extra=None):
    """Run ``python -m <args>`` (under ``torchrun --standalone`` with ``nproc`` processes); returns the process.

    No port is chosen here: ``--standalone`` lets the rendezvous store bind a free port itself and hand it to the
    workers. (Picking a free port, closing it and passing it to torchrun raced with every program of the machine that
    bound a port meanwhile: torchrun then failed with EADDRINUSE.) The whole output is kept in ``workdir`` for a
    failure's diagnosis.
    """
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    cmd = [sys.executable, '-m']
    if nproc:
        cmd += ['torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc), '-m']
    proc = subprocess.run(cmd + args, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    log = workdir / f'{args[0]}_{nproc or 1}proc_{time.monotonic_ns()}.log'
    log.write_text(f'{cmd + args}\nreturn code {proc.returncode}\n{proc.stdout}\n----- stderr -----\n{proc.stderr}')
    assert proc.returncode == 0, f'{log}:\n' + proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope='module')
def ddp_run(pair_data, tmp_path_factory):
    """Train NAFNet width 8, K=4 combine, 6 iterations with 2 processes; 3 validation images (uneven shards)."""
    workdir = tmp_path_factory.mktemp('ddp')
    val3 = make_pair_folder(str(workdir / 'val3'), PHOTOS[3:6], (40, 36), seed=2)
    opt = srmodel_options(pair_data, 'ddp_mhc', total_iter=6, val_freq=3)
    opt['datasets']['val'].update(dataroot_gt=val3[0], dataroot_lq=val3[1])
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    opt['logger'].update(print_freq=2, save_checkpoint_freq=3)
    opt['val']['save_img'] = False
    opt_path = write_options(workdir / 'train.yml', opt)
    run(['basicsr_mh.train', '-opt', opt_path, '--launcher', 'pytorch'], workdir, nproc=2)
    return workdir, opt


def test_ddp_training_writes_one_experiment(ddp_run):
    workdir, _ = ddp_run
    exp = workdir / 'experiments' / 'ddp_mhc'
    assert [p.name for p in (workdir / 'experiments').iterdir()] == ['ddp_mhc']  # no rank archived another's
    for it in (3, 6, 'latest'):
        assert (exp / 'models' / f'net_g_{it}.pth').is_file()
    assert (exp / 'training_states' / '6.state').is_file()
    logs = list(exp.glob('train_ddp_mhc_*.log'))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert 'World size (gpu number): 2' in text and 'heads/win_h0' in text
    metrics = json.loads((exp / 'metrics.json').read_text())
    assert metrics['iter'] == 6 and 'psnr_overall' in metrics['datasets']['TinyVal']


def test_sharded_validation_equals_one_process(ddp_run):
    """Also: the 2-process run does not depend on a port being free (MASTER_PORT and torchrun's default port point
    at a port in use during it; a launch with ``--master_port`` on a port in use fails with EADDRINUSE)."""
    workdir, train_opt = ddp_run
    ckpt = str(workdir / 'experiments' / 'ddp_mhc' / 'models' / 'net_g_latest.pth')
    results = {}
    for nproc in (2, 1):
        opt = dict(train_opt, name=f'ddp_test_{nproc}')
        opt['datasets'] = {'val': dict(train_opt['datasets']['val'])}
        opt['path'] = dict(train_opt['path'], pretrain_network_g=ckpt, param_key_g='params_ema')
        opt_path = write_options(workdir / f'test_{nproc}.yml', opt)
        args = ['basicsr_mh.test', '-opt', opt_path] + (['--launcher', 'pytorch'] if nproc > 1 else [])
        with busy_port() as port:
            taken = {'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'PET_MASTER_PORT': str(port)}
            run(args, workdir, nproc=nproc if nproc > 1 else None, env_extra=taken)
        results[nproc] = json.loads((workdir / 'results' / opt['name'] / 'metrics.json').read_text())['TinyVal']
    assert set(results[2]) == set(results[1])
    assert {'psnr', 'psnr_overall', 'psnr_worst', 'psnr_h9', 'ssim', 'ssim_overall', 'best_head'} <= set(results[1])
    for key, value in results[1].items():
        assert results[2][key] == pytest.approx(value, abs=1e-6), key
