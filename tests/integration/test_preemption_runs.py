"""Preemption-safe training (subprocesses): SIGTERM stops a CPU training after the current step with a resumable state
and exit code 75, ``--auto_resume`` ends with the numbers of an uninterrupted run (one process, and two under torchrun
with the signal to one rank only); all ranks agree on the stop; data loader workers survive a signal to every process;
a signal after the last iteration lets the run end."""
import os
import pytest
import re
import signal
import subprocess
import sys
import time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import srmodel_options, write_options
from test_resume import TOTAL
from test_resume_runs import assert_same_end, env, final_metrics, options, resume, start

from basicsr_mh.preemption import PREEMPTED_EXIT_CODE, PreemptionWatch


def wait_for_iteration_5(exp, proc, timeout=240):
    """Wait until the training log in ``exp`` shows iteration 5 (print_freq 5: training has started), ``proc`` has
    ended, or ``timeout`` seconds have passed."""
    deadline = time.time() + timeout
    while not re.search(r'iter:\s+5,', ''.join(p.read_text() for p in exp.glob('train_resume_mhc_*.log'))) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)


def test_sigterm_leaves_a_state_that_resumes_to_the_uninterrupted_numbers(pair_data, tmp_path):
    opt = options(pair_data)
    opt['logger']['save_checkpoint_freq'] = 1000  # no regular checkpoint: the one written is the preemption's
    full, stopped = tmp_path / 'full', tmp_path / 'stopped'
    for workdir in (full, stopped):
        workdir.mkdir()
        write_options(workdir / 'train.yml', opt)
    reference, victim = start(full), start(stopped)
    exp = stopped / 'experiments' / 'resume_mhc'
    wait_for_iteration_5(exp, victim)
    log = next(iter(exp.glob('train_resume_mhc_*.log')))
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    states = sorted(exp.glob('training_states/*.state'))
    assert len(states) == 1, states
    stop_iter = int(states[0].stem)
    assert 5 <= stop_iter < TOTAL and (exp / 'models' / f'net_g_{stop_iter}.pth').is_file()
    assert f'Stopped by SIGTERM after iteration {stop_iter}' in log.read_text()
    assert 'training stopped by SIGTERM' in err
    resume(stopped)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-4000:]
    assert f'iter: {stop_iter}.' in sorted(exp.glob('train_resume_mhc_*.log'))[-1].read_text()
    assert_same_end(full, stopped)


@pytest.mark.parametrize('sig, persistent', [(signal.SIGTERM, False), (signal.SIGUSR1, True)])
def test_a_signal_to_every_process_stops_a_run_with_loader_workers(pair_data, tmp_path, sig, persistent):
    """Slurm signals every process of the step and torchrun's agent a worker's process group: the data loader
    workers get the signal too (from outside, not from their parent) and must not take the run down. Persistent
    workers are started before the watch, with the default handlers."""
    opt = options(pair_data)
    opt['datasets']['train'].update(num_worker_per_gpu=2, persistent_workers=persistent)
    opt['logger']['save_checkpoint_freq'] = 1000
    write_options(tmp_path / 'train.yml', opt)
    victim = start(tmp_path, start_new_session=True)  # its own process group: it and its workers only
    exp = tmp_path / 'experiments' / 'resume_mhc'
    wait_for_iteration_5(exp, victim)
    os.killpg(victim.pid, sig)  # this process is not the workers' parent, as slurmstepd or the agent
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert 'DataLoader worker' not in err
    states = sorted(exp.glob('training_states/*.state'))
    assert len(states) == 1 and 5 <= int(states[0].stem) < TOTAL, states
    resume(tmp_path)
    assert f'Resuming training from epoch: {int(states[0].stem) // 12}, iter: {states[0].stem}' in \
        sorted(exp.glob('train_resume_mhc_*.log'))[-1].read_text()
    assert final_metrics(tmp_path)  # the validation of iteration TOTAL
    assert (exp / 'models' / 'net_g_latest.pth').is_file()


def test_a_signal_during_the_last_validation_lets_the_run_end(pair_data, tmp_path, monkeypatch):
    """After the last iteration the run is done: a signal during the final validation must neither kill it (SIGUSR1's
    default action) nor reach the handler it had before (the sentinel here); the latest model is written."""
    from basicsr_mh.train import train_pipeline
    monkeypatch.chdir(tmp_path)
    opt = srmodel_options(pair_data, 'last_val', total_iter=3, val_freq=1000)  # one validation: after the loop
    leaked = []

    def sentinel(signum, frame):
        leaked.append(signum)

    before = signal.signal(signal.SIGUSR1, sentinel)
    try:
        model = train_pipeline(
            str(tmp_path), ['-opt', write_options(tmp_path / 'o.yml', opt)],
            on_validation=lambda record: os.kill(os.getpid(), signal.SIGUSR1))
        assert signal.getsignal(signal.SIGUSR1) is sentinel  # restored when training ended
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert leaked == [] and model is not None
    exp = tmp_path / 'experiments' / 'last_val'
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert 'SIGUSR1 came after the last iteration' in next(exp.glob('train_last_val_*.log')).read_text()


def _worker_pid(agent_pid, rank):
    """The pid of torchrun's worker process of ``rank`` (a child of the agent with ``RANK=<rank>``), or None."""
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{entry}/environ', 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:  # gone meanwhile, or not ours
            continue
        if ppid == agent_pid and f'RANK={rank}'.encode() in environ:
            return int(entry)
    return None


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the worker of rank 1 in /proc')
def test_ddp_a_signal_to_one_rank_stops_both_and_resumes_to_the_uninterrupted_numbers(pair_data, tmp_path):
    """torchrun, two processes (gloo): SIGUSR1 to rank 1 only. Rank 0 learns of it by the all-reduce, both stop
    after the same iteration, one state with both ranks' RNG is written; --auto_resume ends with the numbers of an
    uninterrupted two-process run."""
    opt = options(pair_data)  # 12 samples per epoch: 6 iterations per epoch on 2 ranks
    opt['logger']['save_checkpoint_freq'] = 1000
    full, stopped = tmp_path / 'full', tmp_path / 'stopped'
    for workdir in (full, stopped):
        workdir.mkdir()
        write_options(workdir / 'train.yml', opt)

    def torchrun(workdir, *extra):
        cmd = [
            sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m',
            'basicsr_mh.train', '-opt',
            str(workdir / 'train.yml'), '--launcher', 'pytorch', *extra
        ]
        return subprocess.Popen(
            cmd, cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    reference, victim = torchrun(full), torchrun(stopped)
    exp = stopped / 'experiments' / 'resume_mhc'
    wait_for_iteration_5(exp, victim)
    os.kill(_worker_pid(victim.pid, 1), signal.SIGUSR1)
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode != 0 and re.search(rf'exitcode\s*:\s*{PREEMPTED_EXIT_CODE}\b', out), out[-3000:]
    states = sorted(exp.glob('training_states/*.state'))
    assert len(states) == 1, states
    stop_iter = int(states[0].stem)
    assert len(torch.load(states[0], weights_only=True)['rng']) == 2
    assert f'Stopped by another rank after iteration {stop_iter}' in next(exp.glob('train_*.log')).read_text()
    resumed = torchrun(stopped, '--auto_resume')
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-4000:]
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-4000:]
    assert_same_end(full, stopped)


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
