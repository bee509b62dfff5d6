"""Ctrl-C or SIGTERM while regions train: noted at once, acted on by the supervising loop.

Python's default handler raises KeyboardInterrupt wherever the main thread is. When
that is inside a destructor or a garbage-collector callback (torch, gRPC and Ray
all run some), the exception is reported as "ignored" and lost, and the run goes
on as if nothing was pressed. Here the first Ctrl-C only sets a flag that the
loop polls; a second one raises at once, for a user who wants out now.

SIGTERM is how `ray job stop`, `docker compose down`, Kubernetes and systemd ask a
process to stop, so it is handled exactly as Ctrl-C. Those callers send SIGKILL
after a grace period of their own, and a user who sent `kill PID` may not think of
sending it twice: a stop still running `grace_s` after the first signal is forced,
as by a second one.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Kubernetes' default termination grace period: a stop that takes longer would be SIGKILLed there anyway.
GRACE_S = 30.0


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised where the caller chose (or at once, when forced); `signum` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


class Interrupts:
    """Whether a stop signal arrived since the watch began, and which one came first."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self._pressed = threading.Event()
        self._closed = threading.Event()
        self._wake = threading.Event()  # the first signal, or the end of the watch
        self._lock = threading.Lock()  # the grace timer never signals once the watch has ended

    @property
    def requested(self) -> bool:
        return self._pressed.is_set()

    def check(self) -> None:
        """Raise Interrupted here, at a point of the caller's choosing, if a stop signal arrived."""
        if self._pressed.is_set():
            raise Interrupted(self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: object) -> None:
        if self._closed.is_set():  # the watch is ending, its handlers with it: nothing is left to cut short
            return
        if self._pressed.is_set():  # the second signal, or the grace period is over: out now
            raise Interrupted(signum)
        self.signum = signum
        self._pressed.set()
        self._wake.set()

    def _force_after_grace(self, main_thread: int) -> None:
        """A stop still running `grace_s` after the first signal gets that signal again, as a second one."""
        self._wake.wait()
        if self._closed.wait(self.grace_s):
            return
        with self._lock:
            if not self._closed.is_set():
                # To the main thread itself, so that a blocking call there returns to run the handler.
                signal.pthread_kill(main_thread, self.signum or signal.SIGINT)

    def _open(self) -> None:
        # Started here, not in the handler: a handler that starts a thread can deadlock on a lock the
        # main thread held where the signal landed.
        threading.Thread(target=self._force_after_grace, args=(threading.main_thread().ident,), daemon=True).start()

    def _close(self) -> None:
        with self._lock:
            self._closed.set()
        self._wake.set()


@contextmanager
def deferred_interrupts(grace_s: float = GRACE_S) -> Iterator[Interrupts]:
    """Within the block, Ctrl-C and SIGTERM set a flag instead of raising; a second one, or `grace_s`
    after the first, raises Interrupted (only in the main thread, where signals land)."""
    interrupts = Interrupts(grace_s)
    if threading.current_thread() is not threading.main_thread():
        yield interrupts  # the caller's own thread: its handlers stay as they are, the flag never sets
        return
    interrupts._open()
    previous = {signum: signal.signal(signum, interrupts._handle) for signum in STOP_SIGNALS}
    try:
        yield interrupts
    finally:
        interrupts._close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block, SIGTERM raises Interrupted wherever the main thread is, as Ctrl-C raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Put back, after the block, a SIGTERM handler the caller had set before it.

    `ray.init` replaces it twice: first with a Python handler that calls sys.exit(SIGTERM),
    then (below Python) with Ray's native failure handler, which prints a stack dump
    ("*** SIGTERM received ... PC: @") before passing the signal on. Setting the handler
    again replaces both for SIGTERM; the native one stays for real crashes (SIGSEGV,
    SIGABRT). A SIGTERM that Ray's handler turned into SystemExit inside the block (Ray
    takes seconds to start) is raised as the caller's handler would have: Interrupted.
    With no handler of the caller's (the default action), Ray's stay.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as exc:
        if callable(before) and exc.code == signal.SIGTERM:
            raise Interrupted(signal.SIGTERM) from None
        raise
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)
