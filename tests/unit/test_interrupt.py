"""Ctrl-C during a watch: the first press is noted, not raised where it lands; a second one raises at once."""

import os
import signal
import threading

import pytest

from codistill.launch.interrupt import deferred_interrupts


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
