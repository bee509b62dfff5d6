"""Resource exhaustion: stalled request bodies and huge messages leave a region serving its honest peers."""

import socket
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from codistill import config
from codistill.region import client, serde
from codistill.region.messages import PredictionBatch
from codistill.region.node import RegionNode
from codistill.region.security import bearer, region_token
from codistill.records import RegionData
from codistill.v1 import region_pb2_grpc

pytestmark = pytest.mark.integration
C, M = 4, 20
STALLED = 32
SECRET = "s3cret"


def _node(cfg) -> RegionNode:
    rng = np.random.default_rng(0)
    data = RegionData(
        rng.random((20, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 20),
        rng.random((M, 1, 8, 8), dtype=np.float32), rng.random((5, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 5), C,
    )
    node = RegionNode(0, cfg, data, run_id="run-1")
    node.serve("127.0.0.1")
    node.prepare([1])
    return node


def _derived_cap(cfg) -> config.RunConfig:
    """exchange.max_message_bytes None: the region derives its cap from the message size."""
    cfg = cfg.model_copy(deep=True)
    cfg.exchange.max_message_bytes = None
    return cfg


def _honest(version: int = 0):
    b = PredictionBatch("run-1", 1, version, 0, torch.arange(M), 3.0, torch.full((M, C), 1 / C))
    return serde.predictions_to_proto(b, "float16")


# ------------------------------------------------- a raw HTTP/2 client
def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _header(name: str, value: str) -> bytes:
    """HPACK: a literal header field, not indexed, no Huffman coding."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def _read_frame(sock: socket.socket) -> tuple[int, int, int]:
    """(type, flags, stream) of the next frame; its payload is skipped."""
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))
        assert chunk, "server closed the connection"
        head += chunk
    length, kind, flags, stream = int.from_bytes(head[:3], "big"), head[3], head[4], int.from_bytes(head[5:], "big")
    while length:
        length -= len(sock.recv(length))
    return kind, flags, stream


def _answered(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server ends stream 1 (trailers or RST_STREAM) within the timeout."""
    sock.settimeout(timeout_s)
    try:
        while True:
            kind, flags, stream = _read_frame(sock)
            if stream == 1 and (kind == 3 or (kind == 1 and flags & 0x1)):
                return True
    except socket.timeout:
        return False


def _stall(port: int, metadata: tuple[tuple[str, str], ...] = ()) -> socket.socket:
    """Open a PushPredictions stream, send 100 of the 1,000 bytes it announces, and never finish."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0))
    while _read_frame(sock)[:2] != (4, 0):  # the server's SETTINGS, to acknowledge
        pass
    headers = [
        (":method", "POST"), (":scheme", "http"), (":path", "/codistill.v1.Region/PushPredictions"),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers"), *metadata,
    ]
    block = b"".join(_header(k, v) for k, v in headers)
    partial = b"\x00" + (1000).to_bytes(4, "big") + b"\x00" * 100
    sock.sendall(_frame(4, 1, 0) + _frame(1, 0x4, 1, block) + _frame(0, 0, 1, partial))
    return sock


@pytest.mark.parametrize("stalls_with", ["no credentials configured", "a valid token", "no token"])
def test_stalled_streams_leave_health_and_honest_pushes_answering(tiny_cfg, stalls_with):
    cfg = tiny_cfg.model_copy(deep=True)
    honest = None
    if stalls_with != "no credentials configured":
        cfg.security = config.SecurityConfig(token=SECRET)
        honest = bearer(region_token(SECRET, 1))
    node = _node(cfg)
    port = int(node.address.rsplit(":", 1)[1])
    stalled = []
    try:
        stalled = [_stall(port, honest if stalls_with == "a valid token" else ()) for _ in range(STALLED)]
        time.sleep(0.3)  # let the server take every stream in
        with client.open_channel(node.address, 1 << 22) as channel:
            started = time.monotonic()
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            assert region_pb2_grpc.RegionStub(channel).PushPredictions(_honest(), timeout=1, metadata=honest).accepted_version == 0
            assert time.monotonic() - started < 1
        # Without a token a stream is refused before its body is read; with one it is still waiting.
        assert _answered(stalled[0], timeout_s=1) is (stalls_with == "no token")
    finally:
        for sock in stalled:
            sock.close()
        node.close()
    assert node.inbox.counters[1].messages == 1


def _peak_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident size


# Another process builds and sends the message, so only the receiving region's memory is measured.
_SEND_HUGE_IDS = textwrap.dedent(
    """
    import sys, grpc
    address, count = sys.argv[1], int(sys.argv[2])
    varint = b"\\x80" * 8 + b"\\x01"  # 2**56: nine bytes on the wire
    ids = varint * count
    length, n = b"", len(ids)
    while True:
        length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    raw = b"\\x0a\\x05run-1" + b"\\x10\\x01" + b"\\x2a" + length + ids  # run_id, sender_id, sample_ids
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 2**31 - 1)])
    try:
        channel.unary_unary("/codistill.v1.Region/PushPredictions")(raw, timeout=30)
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name)
    """
)


def test_tens_of_megabytes_of_sample_ids_cost_bounded_memory(tiny_cfg):
    node = _node(_derived_cap(tiny_cfg))
    try:
        count = 30 * 1024 * 1024 // 9  # 30 MiB of ids
        _reset_peak_rss()
        before = _peak_rss_bytes()
        sent = subprocess.run(
            [sys.executable, "-c", _SEND_HUGE_IDS, node.address, str(count)], capture_output=True, text=True, timeout=60
        )
        growth = _peak_rss_bytes() - before
        assert growth < 50 * 1024 * 1024, f"the region grew by {growth / 2**20:.0f} MiB"
        assert sent.stdout.strip() == "RESOURCE_EXHAUSTED", sent.stdout + sent.stderr
        # And it still takes an honest message at once.
        with client.open_channel(node.address, 1 << 22) as channel:
            assert region_pb2_grpc.RegionStub(channel).PushPredictions(_honest(), timeout=1).accepted_version == 0
    finally:
        node.close()
