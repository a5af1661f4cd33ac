"""Preemption-safe training (subprocesses): SIGTERM stops a CPU training after the current step with a resumable state
and exit code 75, ``--auto_resume`` ends with the numbers of an uninterrupted run; all ranks agree on the stop."""
import os
import pytest
import re
import signal
import subprocess
import time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import write_options
from test_resume import TOTAL
from test_resume_runs import env, final_metrics, options, train_cmd

from basicsr_mh.preemption import PREEMPTED_EXIT_CODE, PreemptionWatch


def test_sigterm_leaves_a_state_that_resumes_to_the_uninterrupted_numbers(pair_data, tmp_path):
    opt = options(pair_data)
    opt['logger']['save_checkpoint_freq'] = 1000  # no regular checkpoint: the one written is the preemption's
    full, stopped = tmp_path / 'full', tmp_path / 'stopped'
    for workdir in (full, stopped):
        workdir.mkdir()
        write_options(workdir / 'train.yml', opt)
    reference = subprocess.Popen(
        train_cmd(full / 'train.yml'),
        cwd=full,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True)
    victim = subprocess.Popen(
        train_cmd(stopped / 'train.yml'),
        cwd=stopped,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True)
    exp = stopped / 'experiments' / 'resume_mhc'
    deadline = time.time() + 240
    while not list(exp.glob('train_resume_mhc_*.log')) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    log = next(iter(exp.glob('train_resume_mhc_*.log')))
    while not re.search(r'iter:\s+5,', log.read_text()) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)  # training has started (print_freq 5)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    states = sorted(exp.glob('training_states/*.state'))
    assert len(states) == 1, states
    stop_iter = int(states[0].stem)
    assert 5 <= stop_iter < TOTAL and (exp / 'models' / f'net_g_{stop_iter}.pth').is_file()
    assert f'Stopped by SIGTERM after iteration {stop_iter}' in log.read_text()
    assert 'training stopped by SIGTERM' in err
    resumed = subprocess.run(
        train_cmd(stopped / 'train.yml', '--auto_resume'),
        cwd=stopped,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-4000:]
    assert f'iter: {stop_iter}.' in sorted(exp.glob('train_resume_mhc_*.log'))[-1].read_text()
    want, got = final_metrics(full), final_metrics(stopped)
    assert set(want) == set(got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    a = torch.load(full / 'experiments' / 'resume_mhc' / 'models' / 'net_g_latest.pth', weights_only=True)
    b = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, atol=1e-5, rtol=1e-4)


def _rank(rank, store, results):
    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=2)
    with PreemptionWatch() as watch:
        first = watch.stop_requested(distributed=True)
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        second = watch.stop_requested(distributed=True)
        results[rank] = (first, second, watch.signal_name)
    dist.destroy_process_group()


def test_a_signal_on_one_rank_stops_every_rank(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(str(tmp_path / 'store'), results), nprocs=2, join=True)  # a file store: no port to pick
    assert dict(results) == {0: (False, True, 'another rank'), 1: (False, True, 'SIGUSR1')}
