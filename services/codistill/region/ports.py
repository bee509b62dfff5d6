"""Binding inside an operator's port range (exchange.port_range, monitor.port_range).

Between machines only the ports an operator opened are reachable, so a region
takes the first free one of the range. The scan starts at an offset drawn per
call: regions starting together on one node then rarely try the same port.
"""

from __future__ import annotations

import random
import socket
from typing import Callable, TypeVar

from codistill.errors import UserError

T = TypeVar("T")


class PortRangeExhausted(UserError):
    """Every port of a configured range is taken on this host."""


def bind_in_range(bind: Callable[[int], T], ports: tuple[int, int] | None, *, what: str, host: str, rng: random.Random | None = None) -> T:
    """`bind(port)` on the first port of `ports` that binds; `bind(0)` (any free port) when no range is set.

    `bind` raises OSError when its port is taken. `what` names the setting in the error.
    """
    if ports is None:
        return bind(0)
    low, high = ports
    count = high - low + 1
    start = (rng or random).randrange(count)
    for i in range(count):
        port = low + (start + i) % count
        if not _free(host, port):  # skip it quietly: a server's own failed bind logs an error line
            continue
        try:
            return bind(port)
        except OSError:  # taken in the meantime
            continue
    raise PortRangeExhausted(f"{what} {low}-{high}: all {count} ports are taken on {host}; widen the range")


def _free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
