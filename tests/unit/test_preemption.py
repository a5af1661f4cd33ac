"""The preemption watch: a signal only sets a flag; handlers come back; distributed agreement is one all-reduce."""
import os
import signal
import threading

from basicsr_mh.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionWatch


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
