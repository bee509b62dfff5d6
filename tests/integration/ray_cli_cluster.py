"""A real multi-node Ray cluster on loopback, started with the `ray start` CLI as users start one.

The head listens on 127.0.0.2 and each worker on its own 127.0.0.x, so every node is a
separate raylet with its own address. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 lets Ray run
several nodes on one machine; under it Ray rewrites 127.0.0.1 and `localhost` to the
machine's network address, so no node is ever given those. Token authentication is on
(RAY_AUTH_MODE=token with a fresh RAY_AUTH_TOKEN), as on a real cluster.

`ray stop` is not used to tear down: it kills every Ray process of this user on the
machine, including a Ray another test started. Every process of this cluster instead
carries a marker in its environment (Ray passes the environment on to everything it
starts) and lives in the session of the `ray start` that made it; teardown stops exactly
those processes and their descendants.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
HEAD_IP = "127.0.0.2"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
MARKER = "CODISTILL_RAY_CLI_CLUSTER"
# Ray's default per-node ports are fixed (52365 for the agent, 10001 for the client server):
# two nodes on one machine, or a Ray another test started, would clash on them.
NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)
START_TIMEOUT_S = 90.0

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The loopback cluster did not come up (or down) as expected; the message says what and where to look."""


@dataclass(frozen=True)
class NodeSpec:
    ip: str
    num_cpus: int
    resources: dict[str, float] | None = None


@dataclass(frozen=True)
class StartedNode:
    ip: str
    session: int  # session id of its `ray start`, shared by every process that start made
    log: Path


@dataclass(frozen=True)
class RayCliCluster:
    head_ip: str
    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    temp_dir: Path
    nodes: tuple[StartedNode, ...]

    @property
    def gcs_address(self) -> str:
        return f"{self.head_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{self.dashboard_port}"

    def ray(self, *args: str, timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """The `ray` CLI with this cluster's environment (token included)."""
        return subprocess.run([RAY, *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def alive_nodes(self) -> list[dict]:
        """`ray list nodes` as the state API reports them: node_id, node_ip, state, ..."""
        res = self.ray("list", "nodes", "--address", self.dashboard_url, "--format", "json", "--filter", "state=ALIVE")
        if res.returncode != 0:
            raise ClusterError(f"ray list nodes failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        return json.loads(res.stdout)

    def processes(self) -> list[psutil.Process]:
        return _cluster_processes(self.env[MARKER], {n.session for n in self.nodes})


def free_port(ip: str) -> int:
    """A port free on `ip` and on 127.0.0.1 (Ray's agent also listens there)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port))
            return port
    raise ClusterError(f"no free port found on {ip}")


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """check()'s first truthy value within timeout_s; else ClusterError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except (ClusterError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            last = exc
        time.sleep(1.0)
    raise ClusterError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def cluster_env(token: str, marker: str, temp_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # A cluster of its own: `ray start` on a worker and `ray` clients read no other cluster's address file.
        TMPDIR=str(temp_dir),
        PYTHONUNBUFFERED="1",
    )
    env[MARKER] = marker
    return env


def _start(args: list[str], env: dict[str, str], log: Path, sessions: set[int]) -> StartedNode:
    """Run one `ray start` in a session of its own (added to `sessions` at once, for teardown); returns once the node is up."""
    with log.open("w") as out:
        proc = subprocess.Popen([RAY, "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sessions.add(proc.pid)
        try:
            rc = proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
    ip = args[args.index("--node-ip-address") + 1]
    node = StartedNode(ip, proc.pid, log)
    if rc != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise ClusterError(f"`ray start` for {ip} {'timed out' if rc is None else f'exited {rc}'}; log {log}:\n{tail}")
    return node


def _node_args(spec: NodeSpec, temp_dir: Path) -> list[str]:
    args = ["--node-ip-address", spec.ip, f"--num-cpus={spec.num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    args += [f"{flag}={free_port(spec.ip)}" for flag in NODE_PORT_FLAGS]
    if spec.resources:
        args.append(f"--resources={json.dumps(spec.resources)}")
    return args


def _cluster_processes(marker: str, sessions: set[int]) -> list[psutil.Process]:
    """This cluster's live processes: its sessions and marked environments, and their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(proc.pid) in sessions or proc.environ().get(MARKER) == marker:
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.Error, OSError):
            continue
    return [p for p in found.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop(marker: str, sessions: set[int]) -> list[psutil.Process]:
    """What `ray stop --force` does, to this cluster's processes only: SIGKILL; returns any still alive.

    SIGTERM first buys nothing here: a raylet and the GCS each wait on the other to shut down
    gracefully, and a test's cluster has no state worth keeping.
    """
    for _ in range(3):  # again for a worker a raylet was starting while we killed it
        procs = _cluster_processes(marker, sessions)
        if not procs:
            return []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=5)
    return _cluster_processes(marker, sessions)


def check_on_loopback(cluster: RayCliCluster, expected_ips: set[str]) -> list[dict]:
    """Every node alive, at the address it was given, all inside 127.0.0.0/8; the nodes."""
    def all_alive() -> list[dict] | None:
        nodes = cluster.alive_nodes()
        return nodes if {n["node_ip"] for n in nodes} == expected_ips else None

    nodes = wait_for(all_alive, START_TIMEOUT_S, f"nodes {sorted(expected_ips)} alive in `ray list nodes`")
    outside = [x["node_ip"] for x in nodes if ipaddress.ip_address(x["node_ip"]) not in LOOPBACK]
    if outside:
        raise ClusterError(f"nodes advertise addresses outside 127.0.0.0/8: {outside}")
    status = cluster.ray("status", "--address", cluster.gcs_address)
    if status.returncode != 0:
        raise ClusterError(f"ray status failed: {status.stderr.strip()[-500:]}")
    return nodes


@contextlib.contextmanager
def ray_cli_cluster(
    head: NodeSpec = NodeSpec(HEAD_IP, 1),
    workers: tuple[NodeSpec, ...] = (NodeSpec("127.0.0.3", 2), NodeSpec("127.0.0.4", 2)),
) -> Iterator[RayCliCluster]:
    """A head and workers started with `ray start`, each node on its own loopback address; always torn down."""
    ips = [head.ip, *(w.ip for w in workers)]
    if any(ip in ("127.0.0.1", "localhost") or ipaddress.ip_address(ip) not in LOOPBACK for ip in ips):
        raise ClusterError(f"node addresses must be in 127.0.0.0/8 and not 127.0.0.1 (Ray rewrites that one): {ips}")
    # Short: Ray's unix sockets live under it, and a socket path is limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rcl-", dir="/tmp"))
    marker = secrets.token_hex(8)
    env = cluster_env(secrets.token_hex(32), marker, temp_dir)
    gcs_port, dashboard_port = free_port(head.ip), free_port(head.ip)
    sessions: set[int] = set()
    failed = False
    try:
        head_args = [
            "--head", f"--port={gcs_port}", f"--dashboard-host={head.ip}", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port(head.ip)}", *_node_args(head, temp_dir),
        ]
        started = [_start(head_args, env, temp_dir / "start-head.log", sessions)]
        for i, spec in enumerate(workers):
            args = [f"--address={head.ip}:{gcs_port}", *_node_args(spec, temp_dir)]
            started.append(_start(args, env, temp_dir / f"start-worker-{i}.log", sessions))
        cluster = RayCliCluster(head.ip, gcs_port, dashboard_port, env, temp_dir, tuple(started))
        check_on_loopback(cluster, set(ips))
        yield cluster
    except BaseException:
        failed = True
        raise
    finally:
        left = _stop(marker, sessions)
        if failed:  # Ray's own logs are under session_*/logs there
            print(f"loopback Ray cluster failed; its folder is kept: {temp_dir}", file=sys.stderr)
        else:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if left:
            raise ClusterError(f"processes of the loopback cluster survived teardown: {[p.pid for p in left]}")
