"""Ctrl-C or SIGTERM during a watch: the first is noted, not raised where it lands; a second one, or the
end of the grace period, raises at once."""

import os
import pickle
import signal
import sys
import threading
import time

import pytest

from codistill.launch.interrupt import GRACE_S, Interrupted, Interrupts, deferred_interrupts, keep_sigterm_handler, sigterm_as_ctrl_c


def press() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_first_press_is_noted_not_raised_and_check_raises_it():
    with deferred_interrupts() as interrupts:
        assert not interrupts.requested
        interrupts.check()  # nothing pressed: nothing raised
        press()
        assert interrupts.requested
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()


def test_a_press_inside_a_destructor_is_not_lost():
    # Python's own handler would raise inside __del__, where the exception is reported and dropped.
    class Slow:
        def __del__(self):
            press()

    with deferred_interrupts() as interrupts:
        Slow()
        assert interrupts.requested


def test_second_press_raises_at_once():
    with deferred_interrupts():
        press()
        with pytest.raises(KeyboardInterrupt):
            press()


def test_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupts():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_the_main_thread_signals_are_left_alone():
    seen = {}

    def watch():
        before = signal.getsignal(signal.SIGINT)
        with deferred_interrupts() as interrupts:
            seen["handler_kept"] = signal.getsignal(signal.SIGINT) is before
            seen["requested"] = interrupts.requested

    t = threading.Thread(target=watch)
    t.start()
    t.join()
    assert seen == {"handler_kept": True, "requested": False}


# SIGTERM: how `ray job stop`, `docker compose down`, Kubernetes and systemd stop a process.


@pytest.fixture
def sigterm_before():
    """A SIGTERM handler from before the block that records instead of killing the test session."""
    reached = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: reached.append(signum))
    yield reached
    signal.signal(signal.SIGTERM, before)


def terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_sets_the_same_flag_as_ctrl_c(sigterm_before):
    with deferred_interrupts() as interrupts:
        terminate()
        assert interrupts.requested and interrupts.signum == signal.SIGTERM
        with pytest.raises(Interrupted) as raised:
            interrupts.check()
    assert raised.value.signum == signal.SIGTERM
    assert isinstance(raised.value, KeyboardInterrupt)  # whatever catches Ctrl-C catches it
    assert sigterm_before == []


@pytest.mark.parametrize("first,second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)])
def test_a_second_stop_signal_of_either_kind_raises_at_once(sigterm_before, first, second):
    with deferred_interrupts() as interrupts:
        os.kill(os.getpid(), first)
        with pytest.raises(Interrupted) as raised:
            os.kill(os.getpid(), second)
    assert raised.value.signum == second and interrupts.signum == first


def wait_for_raise(seconds: float) -> float:
    """Sleep in short naps for up to `seconds`; return how long it took for something to raise (inf: nothing did)."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            time.sleep(0.01)
    except KeyboardInterrupt:
        return time.monotonic() - start
    return float("inf")


def test_a_stop_still_running_after_the_grace_period_is_forced(sigterm_before):
    with deferred_interrupts(grace_s=0.3):
        terminate()
        start = time.monotonic()
        with pytest.raises(Interrupted) as raised:
            while time.monotonic() - start < 10:  # a drain that never ends, and no second signal
                time.sleep(0.01)
    assert 0.3 <= time.monotonic() - start < 5
    assert raised.value.signum == signal.SIGTERM
    assert sigterm_before == []


def test_the_grace_period_is_thirty_seconds_unless_set():
    assert GRACE_S == 30
    assert Interrupts().grace_s == 30
    with deferred_interrupts() as interrupts:
        press()
        assert wait_for_raise(0.5) == float("inf")  # a short drain is left to finish
        assert interrupts.requested


def test_the_grace_period_ends_with_the_block(sigterm_before):
    with deferred_interrupts(grace_s=0.2):
        terminate()
    time.sleep(0.6)
    assert sigterm_before == []  # the timer did not fire into the handler put back


def test_previous_sigterm_handler_comes_back(sigterm_before):
    before = signal.getsignal(signal.SIGTERM)
    with deferred_interrupts():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_as_ctrl_c_raises_where_the_main_thread_is(sigterm_before):
    with sigterm_as_ctrl_c():
        with pytest.raises(Interrupted) as raised:
            terminate()
            wait_for_raise(5)
    assert raised.value.signum == signal.SIGTERM
    terminate()  # the handler from before is back
    assert sigterm_before == [signal.SIGTERM]


def ray_like_init() -> None:
    """What ray.init does to SIGTERM, as far as Python sees it: a handler that calls sys.exit."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def test_a_sigterm_handler_set_before_ray_init_is_put_back(sigterm_before):
    with sigterm_as_ctrl_c():
        ours = signal.getsignal(signal.SIGTERM)
        with keep_sigterm_handler():
            ray_like_init()
        assert signal.getsignal(signal.SIGTERM) is ours


def test_sigterm_while_ray_starts_is_interrupted_not_system_exit(sigterm_before):
    with sigterm_as_ctrl_c():
        with pytest.raises(Interrupted) as raised:
            with keep_sigterm_handler():
                ray_like_init()
                terminate()
                wait_for_raise(5)
    assert raised.value.signum == signal.SIGTERM


def test_without_a_handler_of_the_callers_ray_keeps_its_own():
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with keep_sigterm_handler():
            ray_like_init()
            rays = signal.getsignal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is rays
    finally:
        signal.signal(signal.SIGTERM, before)


def test_stop_exceptions_pickle():
    from codistill.launch.driver import Stopped

    again = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM)))
    assert again.signum == signal.SIGTERM
    stopped = pickle.loads(pickle.dumps(Stopped(12.5, signal.SIGTERM)))
    assert (stopped.seconds, stopped.signum) == (12.5, signal.SIGTERM)
