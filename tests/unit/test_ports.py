"""Port ranges: parsed and checked in config; a region binds the first free port of its range."""

import random
import socket

import pytest

from codistill import config
from codistill.region.ports import PortRangeExhausted, bind_in_range


@pytest.mark.parametrize("text", ["50100", "50100-", "a-b", "50200-50100", "80-90", "60000-70000", "1-2-3"])
def test_bad_ranges_are_refused(text):
    with pytest.raises(config.ConfigError, match="exchange.port_range"):
        config.from_dict({"exchange": {"port_range": text}})


def test_a_good_range_parses():
    cfg = config.from_dict({"exchange": {"port_range": "50100-50199"}, "monitor": {"port_range": "50200-50200"}})
    assert config.port_range(cfg.exchange.port_range) == (50100, 50199)
    assert config.port_range(cfg.monitor.port_range) == (50200, 50200)
    assert config.port_range(None) is None


def listen(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def free_block(n: int) -> int:
    """The first port of n consecutive free ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        try:
            held = [listen(base + i) for i in range(n)]
        except OSError:
            continue
        for s in held:
            s.close()
        return base
    raise RuntimeError("no free block")


def test_binds_a_free_port_inside_the_range_skipping_taken_ones():
    base = free_block(3)
    taken = [listen(base), listen(base + 1)]
    try:
        sock = bind_in_range(listen, (base, base + 2), what="exchange.port_range", host="127.0.0.1", rng=random.Random(0))
        assert sock.getsockname()[1] == base + 2
        sock.close()
    finally:
        for s in taken:
            s.close()


def test_a_full_range_is_one_clear_error():
    base = free_block(2)
    taken = [listen(base), listen(base + 1)]
    try:
        with pytest.raises(PortRangeExhausted) as err:
            bind_in_range(listen, (base, base + 1), what="exchange.port_range", host="127.0.0.1")
        assert str(err.value) == f"exchange.port_range {base}-{base + 1}: all 2 ports are taken on 127.0.0.1; widen the range"
    finally:
        for s in taken:
            s.close()


def test_no_range_means_any_free_port():
    sock = bind_in_range(listen, None, what="exchange.port_range", host="127.0.0.1")
    assert sock.getsockname()[1] > 0
    sock.close()
