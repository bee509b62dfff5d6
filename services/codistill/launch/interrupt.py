"""Ctrl-C while regions train: noted at once, acted on by the supervising loop.

Python's default handler raises KeyboardInterrupt wherever the main thread is. When
that is inside a destructor or a garbage-collector callback (torch, gRPC and Ray
all run some), the exception is reported as "ignored" and lost, and the run goes
on as if nothing was pressed. Here the first Ctrl-C only sets a flag that the
loop polls; a second one raises at once, for a user who wants out now.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Interrupts:
    """Whether Ctrl-C was pressed since the watch began."""

    def __init__(self) -> None:
        self._pressed = threading.Event()

    @property
    def requested(self) -> bool:
        return self._pressed.is_set()

    def check(self) -> None:
        """Raise KeyboardInterrupt here, at a point of the caller's choosing, if Ctrl-C was pressed."""
        if self._pressed.is_set():
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame: object) -> None:
        if self._pressed.is_set():  # the second press: out now
            raise KeyboardInterrupt
        self._pressed.set()


@contextmanager
def deferred_interrupts() -> Iterator[Interrupts]:
    """Within the block, Ctrl-C sets a flag instead of raising (only in the main thread, where signals land)."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts  # the caller's own thread: its handler stays as it is, the flag never sets
        return
    previous = signal.signal(signal.SIGINT, interrupts._handle)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)
