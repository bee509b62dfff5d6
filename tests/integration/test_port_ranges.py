"""Regions serve gRPC and /metrics only on the ports an operator opened (exchange/monitor.port_range)."""

import random
import socket

import numpy as np
import pytest

from codistill.records import RegionData
from codistill.region.node import RegionNode
from codistill.region.ports import PortRangeExhausted

pytestmark = pytest.mark.integration
C, M = 4, 20


def data() -> RegionData:
    rng = np.random.default_rng(0)
    x = lambda n: rng.random((n, 1, 8, 8), dtype=np.float32)  # noqa: E731
    return RegionData(x(30), rng.integers(0, C, 30), x(M), x(10), rng.integers(0, C, 10), C)


def free_block(n: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000)
        held = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                held.append(s)
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        if len(held) == n:
            return base
    raise RuntimeError("no free block of ports")


def test_regions_take_distinct_ports_of_the_range_and_the_next_one_is_refused(tiny_cfg):
    grpc_base, metrics_base = free_block(2), free_block(2)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.exchange.port_range = f"{grpc_base}-{grpc_base + 1}"
    cfg.monitor.port_range = f"{metrics_base}-{metrics_base + 1}"
    nodes = [RegionNode(i, cfg, data(), run_id="run-1") for i in range(3)]
    try:
        for n in nodes[:2]:
            n.serve("127.0.0.1")
        grpc_ports = sorted(int(n.address.rsplit(":", 1)[1]) for n in nodes[:2])
        metrics_ports = sorted(int(n.metrics_address.rsplit(":", 1)[1]) for n in nodes[:2])
        assert grpc_ports == [grpc_base, grpc_base + 1]  # two servers never share a port
        assert metrics_ports == [metrics_base, metrics_base + 1]
        with pytest.raises(PortRangeExhausted, match=f"exchange.port_range {grpc_base}-{grpc_base + 1}: all 2 ports are taken"):
            nodes[2].serve("127.0.0.1")
    finally:
        for n in nodes:
            n.close()
