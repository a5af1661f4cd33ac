"""Resume after SIGKILL (subprocesses): --auto_resume ends with the numbers of an uninterrupted run."""
import json
import os
import pytest
import signal
import subprocess
import sys
import time
import torch
from conftest import srmodel_options, write_options
from test_resume import FREQ, TOTAL


def options(pair_data):
    """Tiny NAFNet MH-C (width 8, K=4 combine), EMA, 30 iterations, checkpoints and validation every 10."""
    opt = srmodel_options(pair_data, 'resume_mhc', total_iter=TOTAL, val_freq=FREQ)
    opt['datasets']['train']['num_worker_per_gpu'] = 0
    # 4 images x 3 = 12 batches per epoch: the 20-iteration checkpoint falls mid-epoch (epoch 1, batch 8)
    opt['datasets']['train'].update(batch_size_per_gpu=1, dataset_enlarge_ratio=3)
    opt['logger'].update(print_freq=5, save_checkpoint_freq=FREQ, use_tb_logger=False)
    opt['val']['save_img'] = False
    return opt


def train_cmd(opt_path, *extra):
    return [sys.executable, '-m', 'basicsr_mh.train', '-opt', str(opt_path), *extra]


def env():
    return dict(os.environ, OMP_NUM_THREADS='1')


def final_metrics(workdir):
    data = json.loads((workdir / 'experiments' / 'resume_mhc' / 'metrics.json').read_text())
    assert data['iter'] == TOTAL
    return data['datasets']['TinyVal']


def start(workdir, **popen):
    """Start the training of ``workdir/train.yml`` (stdout dropped, stderr kept as text; ``popen`` overrides)."""
    popen = dict(dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), **popen)
    return subprocess.Popen(train_cmd(workdir / 'train.yml'), cwd=workdir, env=env(), **popen)


def resume(workdir):
    """Run the training of ``workdir/train.yml`` with ``--auto_resume`` to its end; asserts it succeeds."""
    resumed = subprocess.run(
        train_cmd(workdir / 'train.yml', '--auto_resume'),
        cwd=workdir,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return resumed


def assert_same_end(full, resumed):
    """The runs in ``full`` and ``resumed`` end with the same metrics and the same weights (network and EMA)."""
    want, got = final_metrics(full), final_metrics(resumed)
    assert set(want) == set(got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    a, b = (
        torch.load(w / 'experiments' / 'resume_mhc' / 'models' / 'net_g_latest.pth', weights_only=True)
        for w in (full, resumed))
    for key in ('params', 'params_ema'):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(pair_data, tmp_path):
    opt = options(pair_data)
    full, killed = tmp_path / 'full', tmp_path / 'killed'
    for workdir in (full, killed):
        workdir.mkdir()
        write_options(workdir / 'train.yml', opt)
    reference, victim = start(full), start(killed, stderr=subprocess.DEVNULL)
    state = killed / 'experiments' / 'resume_mhc' / 'training_states' / '20.state'
    deadline = time.time() + 240
    while not state.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert state.exists()
    exp = killed / 'experiments' / 'resume_mhc'
    # had the run got further before the kill, make it stop right after the 20-iteration state all the same
    for path in [exp / 'training_states' / '30.state'] + list((exp / 'models').glob('net_g_[3l]*.pth')):
        path.unlink(missing_ok=True)
    (exp / 'training_states' / '30.state.tmp').write_bytes(b'half a checkpoint')  # a crash mid-write
    resume(killed)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-4000:]
    logs = sorted(exp.glob('train_resume_mhc_*.log'))
    assert 'Resuming training from epoch: 1, iter: 20' in logs[-1].read_text()
    assert_same_end(full, killed)  # EMA, optimizer and final weights equal too
