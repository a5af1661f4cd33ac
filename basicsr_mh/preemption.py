"""Preemption-safe training: SIGTERM or SIGUSR1 ends the run after the current step with a resumable state.

Cluster schedulers stop jobs with a signal: Slurm's ``#SBATCH --signal=USR1@90`` (or SIGTERM at the time limit and on
``scancel``/preemption), torchrun's elastic agent SIGTERM to its workers. :class:`PreemptionWatch` only records the
signal (nothing else runs inside a signal handler); the training loop asks :meth:`PreemptionWatch.stop_requested`
after each step, all ranks agree (one all-reduce), every rank takes part in writing the state (rank 0 writes the
files, atomically) and the process exits with :data:`PREEMPTED_EXIT_CODE`, so a job script can requeue itself and
continue with ``--auto_resume`` exactly as after a normal checkpoint.

Schedulers signal every process of the job, not only the training process: Slurm signals all processes of the job
step, torchrun's agent the process group of each worker. Data loader workers would die of it (PyTorch's workers end
on a SIGTERM, the main process then raises ``DataLoader worker ... is killed by signal``, and a worker started before
the watch dies of SIGUSR1's default action), so the training loader's workers are shielded
(:func:`shield_data_loader_workers`): they ignore the preemption signals and end when the loader shuts them down.
"""
import functools
import os
import signal
import threading
import torch

#: Exit code of a training that stopped for a preemption signal after writing its state (EX_TEMPFAIL: try again).
PREEMPTED_EXIT_CODE = 75
#: The signals that ask a training to stop after the current step.
PREEMPTION_SIGNALS = ('SIGTERM', 'SIGUSR1')


class Preempted(Exception):
    """Raised out of the training loop once the state of a preempted run is written.

    Attributes:
        signal_name (str): the signal that asked for the stop (``SIGTERM``, ``SIGUSR1``; ``another rank`` when only
            another process of a distributed run got it).
        current_iter (int): the last finished iteration, whose state was written.
        state_path (str): the training state to resume from.
    """

    def __init__(self, signal_name, current_iter, state_path):
        super().__init__(f'training stopped by {signal_name} after iteration {current_iter}; resumable state '
                         f'{state_path}. Continue with --auto_resume.')
        self.signal_name, self.current_iter, self.state_path = signal_name, current_iter, state_path


class PreemptionWatch:
    """Context manager: while inside, SIGTERM and SIGUSR1 only record that a stop was asked; the previous handlers
    are restored on exit. Outside the main thread (where Python cannot install handlers) it watches nothing.

    Example::

        with PreemptionWatch() as watch:
            for step in ...:
                train_step()
                if watch.stop_requested(distributed=True):
                    save(); raise Preempted(...)
    """

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.signal_name = None
        self._previous = {}

    def _record(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False

    def stop_requested(self, distributed=False):
        """Whether this process, or with ``distributed`` any process of the group, got a stop signal.

        With ``distributed`` every rank must call it at the same step (one all-reduce of a flag, MAX), so that all
        ranks stop after the same iteration.
        """
        asked = self.signal_name is not None
        if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = torch.device('cuda', torch.cuda.current_device()) if backend == 'nccl' else torch.device('cpu')
            flag = torch.tensor([1.0 if asked else 0.0], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if float(flag) > 0 and not asked:
                self.signal_name = 'another rank'
            asked = float(flag) > 0
        return asked


def _shield_this_process(signals):
    """Make this process ignore ``signals`` unless its parent sends them (then SIGTERM ends it at once, as PyTorch's
    own worker handler does on the loader's ``terminate``). The signals are blocked in every thread and taken by a
    daemon thread with ``sigwaitinfo``, which tells the sender; where ``sigwaitinfo`` is missing (macOS) only SIGUSR1
    is ignored."""
    if not hasattr(signal, 'sigwaitinfo'):
        if hasattr(signal, 'SIGUSR1'):
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # threads started from now on inherit the mask

    def take():
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_signo == signal.SIGTERM and info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=take, name='preemption-shield', daemon=True).start()


def shielded_worker_init(worker_id, init_fn=None, signals=PREEMPTION_SIGNALS):
    """A data loader ``worker_init_fn``: shield the worker from the preemption ``signals`` (names), then run the
    loader's own ``init_fn(worker_id)`` (BasicSR's seeding), if any."""
    _shield_this_process({getattr(signal, name) for name in signals if hasattr(signal, name)})
    if init_fn is not None:
        init_fn(worker_id)


def shield_data_loader_workers(loader):
    """Make the worker processes that ``loader`` (a ``torch.utils.data.DataLoader``) starts from now on ignore
    SIGTERM and SIGUSR1 sent by anyone but the main process: the scheduler's signal is the main process's business
    (:class:`PreemptionWatch`), and the workers end when the loader shuts them down. Returns ``loader``; one without
    worker processes is returned unchanged."""
    if getattr(loader, 'num_workers', 0) > 0:
        loader.worker_init_fn = functools.partial(shielded_worker_init, init_fn=loader.worker_init_fn)
    return loader
