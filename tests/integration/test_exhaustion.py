"""Resource exhaustion: stalled request bodies and huge messages leave a region serving its honest peers."""

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

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
from codistill.region.server import MAX_WATCHES
from codistill.records import RegionData
from codistill.v1 import region_pb2_grpc

pytestmark = pytest.mark.integration
C, M = 4, 20
STALLED = 32
SECRET = "s3cret"


def _node_data() -> RegionData:
    rng = np.random.default_rng(0)
    return RegionData(
        rng.random((20, 1, 8, 8), dtype=np.float32), rng.integers(0, C, 20),
        rng.random((M, 1, 8, 8), dtype=np.float32), rng.random((5, 1, 8, 8), dtype=np.float32),
        rng.integers(0, C, 5), C,
    )


def _node(cfg) -> RegionNode:
    node = RegionNode(0, cfg, _node_data(), run_id="run-1")
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


# Messages under a 64 MiB cap whose counts no region of C classes and M transfer examples takes:
# the receiver must refuse them from their declared sizes, before building anything from them.
_SEND_OVERSIZED_COUNTS = textwrap.dedent(
    """
    import sys, grpc
    from codistill.v1 import region_pb2 as pb
    address, kind = sys.argv[1], sys.argv[2]
    head = pb.PushPredictionsRequest(run_id="run-1", sender_id=1, temperature=3.0)
    if kind == "ids":  # sixty million ids, each a one-byte zero: 60 MB packed
        n, length = 60_000_000, b""
        while True:
            length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                break
        raw = head.SerializeToString() + b"\\x2a" + length + bytes(60_000_000)
    else:  # 20 rows of three million classes, in 8 bits: 60 MB
        head.sample_ids.extend(range(20))
        head.uint8.shape.extend([20, 3_000_000])
        head.uint8.data = bytes(60_000_000)
        raw = head.SerializeToString()
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 2**31 - 1)])
    print("SENDING", len(raw), flush=True)
    try:
        channel.unary_unary("/codistill.v1.Region/PushPredictions")(raw, timeout=60)
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name, exc.details())
    """
)


def _send_and_measure(address: str, kind: str) -> tuple[str, int, int]:
    """(the sender's answer, the wire size, this process's peak resident growth meanwhile)."""
    _reset_peak_rss()
    before = _peak_rss_bytes()
    sender = subprocess.Popen([sys.executable, "-c", _SEND_OVERSIZED_COUNTS, address, kind], stdout=subprocess.PIPE, text=True)
    wire_bytes = int(sender.stdout.readline().split()[1])
    answer = sender.communicate(timeout=120)[0].strip()
    return answer, wire_bytes, _peak_rss_bytes() - before


@pytest.mark.parametrize("kind", ["ids", "uint8"])
def test_a_message_with_oversized_counts_is_refused_before_it_is_built(tiny_cfg, kind):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.exchange.max_message_bytes = 64 * 1024 * 1024
    # Pushes of every version are taken, whatever the region's round, up to the run's last.
    cfg.exchange.mode, cfg.train.steps = "async", 100_000
    # What receiving the bytes costs before any code of the region runs (gRPC's buffers and the
    # bytes handed to the handler, together about three times the wire size): a region not yet
    # wired to its peers refuses every push before looking at it.
    unwired = RegionNode(0, cfg, _node_data(), run_id="run-1")
    unwired.serve("127.0.0.1")
    try:
        answer, _, receiving = _send_and_measure(unwired.address, kind)
        assert answer.startswith("FAILED_PRECONDITION"), answer
    finally:
        unwired.close()

    node = _node(cfg)
    waits: list[float] = []
    done = threading.Event()

    def push_honestly() -> None:
        with client.open_channel(node.address, 1 << 22) as channel:
            stub, version = region_pb2_grpc.RegionStub(channel), 0
            while not done.is_set():
                started = time.monotonic()
                assert stub.PushPredictions(_honest(version), timeout=5).accepted_version == version
                waits.append(time.monotonic() - started)
                version += 1
                time.sleep(0.05)

    honest = threading.Thread(target=push_honestly, daemon=True)
    honest.start()
    try:
        answer, wire_bytes, growth = _send_and_measure(node.address, kind)
    finally:
        done.set()
        honest.join(30)
        node.close()
    assert answer.startswith("INVALID_ARGUMENT"), answer
    beyond = growth - receiving
    assert beyond < 50 * 2**20, (
        f"the region grew by {growth / 2**20:.0f} MiB for {wire_bytes / 1e6:.0f} MB, {beyond / 2**20:.0f} MiB more than receiving them costs"
    )
    assert len(waits) >= 5 and max(waits) < 1, waits
    reason = "bad_shape" if kind == "ids" else "bad_class_count"
    assert node.inbox.rejections[reason] == 1, dict(node.inbox.rejections)


WATCH_CONNECTIONS, WATCHES_PER_CONNECTION = 30, 10  # 300 streams, more than the region's call slots


def test_token_less_health_watches_cannot_take_the_slots_peers_push_through(tiny_cfg):
    cfg = _derived_cap(tiny_cfg)
    cfg.security = config.SecurityConfig(token=SECRET)
    node = _node(cfg)
    honest = bearer(region_token(SECRET, 1))
    # A local subchannel pool: one connection a channel (channels to one address share one otherwise).
    channels = [grpc.insecure_channel(node.address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(WATCH_CONNECTIONS)]
    watches, answers = [], Counter()
    try:
        rss_before = _resident_bytes()
        for channel in channels:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(WATCHES_PER_CONNECTION):
                watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
                watches.append(watch)
                try:
                    answers[health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status)] += 1
                except grpc.RpcError as exc:
                    answers[exc.code().name] += 1
        with client.open_channel(node.address, 1 << 22) as channel:
            started = time.monotonic()
            assert region_pb2_grpc.RegionStub(channel).PushPredictions(_honest(), timeout=1, metadata=honest).accepted_version == 0
            assert region_pb2_grpc.RegionStub(channel).GetStatus(serde.status_request(), timeout=1, metadata=honest).region_id == 0
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            assert time.monotonic() - started < 1
        growth = _resident_bytes() - rss_before
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            channel.close()
        node.close()
    # The watches that fit stay open and are told the status; the rest are refused at once.
    assert answers == {"SERVING": MAX_WATCHES, "RESOURCE_EXHAUSTED": WATCH_CONNECTIONS * WATCHES_PER_CONNECTION - MAX_WATCHES}, answers
    assert growth < 64 * 2**20, f"300 watch attempts grew the process by {growth / 2**20:.0f} MiB"


def _resident_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
