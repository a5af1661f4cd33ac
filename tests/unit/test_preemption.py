"""The preemption watch: a signal only sets a flag; handlers come back; distributed agreement is one all-reduce;
data loader workers survive the scheduler's signal to every process."""
import functools
import os
import pytest
import random
import signal
import subprocess
import threading
import time
import torch
from basicsr.data import worker_init_fn as basicsr_worker_init_fn
from torch.utils.data import DataLoader, Dataset

from basicsr_mh.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch, shield_data_loader_workers


def test_signals_are_recorded_not_acted_on_and_handlers_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        with PreemptionWatch() as watch:
            assert not watch.stop_requested()
            os.kill(os.getpid(), sig)  # the process survives: the handler only records
            assert watch.stop_requested() and watch.signal_name == sig.name
            assert watch.stop_requested(distributed=True)  # no process group: the local flag
        assert {s: signal.getsignal(s) for s in before} == before


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def worker():
        with PreemptionWatch() as watch:
            seen['handler'] = signal.getsignal(signal.SIGUSR1)
            seen['asked'] = watch.stop_requested()

    before = signal.getsignal(signal.SIGUSR1)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {'handler': before, 'asked': False}


def test_preempted_names_the_signal_the_iteration_and_the_state():
    stop = Preempted('SIGUSR1', 17, 'experiments/x/training_states/17.state')
    assert 'SIGUSR1 after iteration 17' in str(stop) and '--auto_resume' in str(stop)
    assert stop.current_iter == 17 and PREEMPTED_EXIT_CODE == 75


class _Numbers(Dataset):
    """Item i: ``[i, random.random()]`` (the worker's seeded stream), a little slowly, so signals land mid-epoch."""

    def __len__(self):
        return 24

    def __getitem__(self, index):
        time.sleep(0.01)
        return torch.tensor([float(index), random.random()], dtype=torch.float64)


def _loader():
    """Two workers seeded as BasicSR seeds them (``worker_init_fn`` with the run's seed)."""
    return DataLoader(
        _Numbers(),
        batch_size=2,
        num_workers=2,
        worker_init_fn=functools.partial(basicsr_worker_init_fn, num_workers=2, rank=0, seed=7))


def _signal_from_outside(pids, *signals):
    """Send ``signals`` to ``pids`` from another process (like slurmstepd or torchrun's agent: not the workers'
    parent)."""
    for sig in signals:
        subprocess.run(['kill', f'-{sig.name[3:]}', *map(str, pids)], check=True)


def test_shielded_workers_survive_the_schedulers_signals_and_keep_their_seeding():
    want = torch.cat(list(_loader()))
    batches = iter(shield_data_loader_workers(_loader()))
    got = [next(batches)]
    workers = list(batches._workers)
    _signal_from_outside([w.pid for w in workers], signal.SIGTERM, signal.SIGUSR1)
    time.sleep(0.3)
    assert all(w.is_alive() for w in workers)
    got += list(batches)
    assert torch.equal(torch.cat(got), want)  # every item, with BasicSR's per-worker seeding


def test_the_loaders_own_terminate_still_ends_a_shielded_worker():
    batches = iter(shield_data_loader_workers(_loader()))
    next(batches)
    worker = batches._workers[0]
    os.kill(worker.pid, signal.SIGTERM)  # from the main process: PyTorch's shutdown path
    worker.join(timeout=10)
    assert worker.exitcode == 0
    del batches


def test_unshielded_workers_die_of_a_signal_from_outside():
    """The failure the shield prevents (PyTorch's own workers end on a SIGTERM from anyone but their parent)."""
    batches = iter(_loader())
    next(batches)
    with pytest.raises(RuntimeError, match='DataLoader worker'):
        _signal_from_outside([w.pid for w in batches._workers], signal.SIGTERM)
        time.sleep(0.5)
        list(batches)
    del batches


def test_a_loader_without_workers_is_left_as_it_is():
    loader = DataLoader(_Numbers(), batch_size=2)
    assert shield_data_loader_workers(loader) is loader and loader.worker_init_fn is None
