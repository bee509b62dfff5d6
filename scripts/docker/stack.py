"""What each container of the compose stack runs (deploy/docker-compose.yml).

    init    make the secrets volume once: mutual-TLS certificates for the regions, the
            regions' shared secret and Ray's token (kept when present, so a second `up`
            finds the tokens the running nodes hold); clear an earlier run's targets
    head    a Ray head in the foreground, token auth on, no CPUs of its own for regions
    worker  a Ray worker that joins the head, in the foreground
    job     submit the run to the head (`ray job submit`) and follow it to the end
    run     inside the job, on the head: wait for the workers, then `codistill run`

Settings come from the environment (see Settings); the compose file sets them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

SECRETS = Path(os.environ.get("CODISTILL_SECRETS_DIR", "/secrets"))
CERTS = SECRETS / "certs"
REGION_TOKEN = SECRETS / "token"  # codistill's security.token_file: per-region tokens derive from it
RAY_TOKEN = SECRETS / "ray-token"  # Ray's own token auth (RAY_AUTH_MODE=token)
RUN_DIR = "/runs/current"  # what deploy/prometheus/prometheus.yml reads targets from
# Per-node ports Ray otherwise fixes (the agent's 52365, the client server's 10001) or picks
# itself; on a shared (host) network every node needs its own.
NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)
WAIT_S = 300.0


class StackError(RuntimeError):
    """A container of the stack cannot go on; the message says what it waited for."""


@dataclass(frozen=True)
class Settings:
    head_host: str  # where the head is reached: its service name, or its address on a shared network
    gcs_port: int
    dashboard_host: str  # the interface the head's dashboard (and job API) listens on
    dashboard_port: int
    node_ip: str | None  # this node's address; None lets Ray pick the container's own
    num_cpus: int | None  # None: the role's default (head 0, worker 2)
    num_gpus: int  # GPUs this node offers (the CUDA image; docs/compose.md)
    object_store_bytes: int
    pick_free_ports: bool  # on a shared network: give this node free ports of its own
    config: str
    compare: str  # strategies run after the config's own, for side-by-side panels
    extra_args: tuple[str, ...]
    workers: int  # the job waits for this many worker nodes
    linger_s: float
    cert_regions: int

    @staticmethod
    def from_env(env: Mapping[str, str] = os.environ) -> Settings:
        cpus = env.get("RAY_NUM_CPUS", "")
        return Settings(
            head_host=env.get("RAY_HEAD_HOST", "ray-head"),
            gcs_port=int(env.get("RAY_GCS_PORT", "6379")),
            dashboard_host=env.get("RAY_DASHBOARD_HOST", "0.0.0.0"),
            dashboard_port=int(env.get("RAY_DASHBOARD_PORT", "8265")),
            node_ip=env.get("RAY_NODE_IP") or None,
            num_cpus=int(cpus) if cpus else None,
            num_gpus=int(env.get("RAY_NUM_GPUS") or "0"),
            object_store_bytes=int(env.get("RAY_OBJECT_STORE_BYTES", str(512 * 1024 * 1024))),
            pick_free_ports=env.get("RAY_PICK_FREE_PORTS", "0") == "1",
            config=env.get("CODISTILL_CONFIG") or "configs/quickstart.yaml",
            compare=env.get("CODISTILL_COMPARE", "independent"),
            extra_args=tuple(shlex.split(env.get("CODISTILL_ARGS", ""))),
            workers=int(env.get("CODISTILL_WORKERS") or "1"),
            linger_s=float(env.get("CODISTILL_LINGER_S") or "60"),
            cert_regions=int(env.get("CODISTILL_CERT_REGIONS") or "64"),
        )

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_host}:{self.dashboard_port}"


def log(message: str) -> None:
    print(f"stack: {message}", flush=True)


def write_secret(path: Path, value: str) -> None:
    """Write `value` readable by the owner only, atomically, so no reader sees half a token."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def init(s: Settings) -> None:
    SECRETS.mkdir(parents=True, exist_ok=True)
    if not (CERTS / "ca.pem").exists():
        subprocess.run(["codistill", "certs", str(CERTS), "--regions", str(s.cert_regions), "--force"], check=True)
    for path, make in ((REGION_TOKEN, lambda: secrets.token_urlsafe(32)), (RAY_TOKEN, lambda: secrets.token_hex(32))):
        if not path.exists():
            write_secret(path, make())
    # Prometheus watches this folder from the start; an earlier run's targets would show as down.
    targets = Path(RUN_DIR) / "prometheus"
    targets.mkdir(parents=True, exist_ok=True)
    for stale in targets.glob("targets-*.json"):
        stale.unlink()
    log(f"secrets ready in {SECRETS} (certificates for regions 0..{s.cert_regions - 1}); {targets} ready")


def wait_for(check, what: str, timeout_s: float = WAIT_S):
    """check()'s first truthy value, polling; StackError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError as exc:
            last = exc
        time.sleep(1.0)
    raise StackError(f"gave up after {timeout_s:.0f}s waiting for {what} (last error: {last})")


def ray_env() -> dict[str, str]:
    """Ray with token auth, the token read from the secrets volume; several nodes on one machine allowed."""
    wait_for(RAY_TOKEN.exists, f"{RAY_TOKEN} (made by the init service)")
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(RAY_TOKEN), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
    env.pop("RAY_AUTH_TOKEN", None)
    return env


def free_port(ip: str) -> int:
    """A port free on `ip` and on 127.0.0.1 (Ray's agent listens on both)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((ip, 0))
            port = sock.getsockname()[1]
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            return port
    raise StackError(f"no free port on {ip}")


def node_args(s: Settings, default_cpus: int) -> list[str]:
    args = ["--block", "--disable-usage-stats", f"--num-cpus={default_cpus if s.num_cpus is None else s.num_cpus}",
            f"--num-gpus={s.num_gpus}", f"--object-store-memory={s.object_store_bytes}"]
    if s.node_ip:
        args.append(f"--node-ip-address={s.node_ip}")
    if s.pick_free_ports:
        args += [f"{flag}={free_port(s.node_ip or '127.0.0.1')}" for flag in NODE_PORT_FLAGS]
    return args


def head_args(s: Settings) -> list[str]:
    args = ["ray", "start", "--head", f"--port={s.gcs_port}", f"--dashboard-host={s.dashboard_host}",
            f"--dashboard-port={s.dashboard_port}", *node_args(s, default_cpus=0)]
    if s.pick_free_ports:
        args.append(f"--ray-client-server-port={free_port(s.node_ip or '127.0.0.1')}")
    return args


def worker_args(s: Settings) -> list[str]:
    return ["ray", "start", f"--address={s.head_host}:{s.gcs_port}", *node_args(s, default_cpus=2)]


def reachable(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=2):
        return True


def start_node(s: Settings, head: bool) -> None:
    env = ray_env()
    if not head:
        wait_for(lambda: reachable(s.head_host, s.gcs_port), f"the Ray head at {s.head_host}:{s.gcs_port}")
    args = head_args(s) if head else worker_args(s)
    log(" ".join(args))
    os.execvpe(args[0], args, env)


def dashboard_ready(s: Settings) -> bool:
    request = urllib.request.Request(f"{s.dashboard_url}/api/version", headers={"Authorization": f"Bearer {RAY_TOKEN.read_text().strip()}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def run_command(s: Settings) -> list[str]:
    """The entrypoint the job runs on the head: this script's `run`, with the job's settings on its command line."""
    return [
        "python3", str(Path(__file__).resolve()), "run", "--config", s.config, "--workers", str(s.workers),
        "--linger-s", str(s.linger_s), "--", *(["--compare", s.compare] if s.compare else []), *s.extra_args,
    ]


def submit(s: Settings) -> int:
    env = ray_env()
    wait_for(lambda: dashboard_ready(s), f"the Ray dashboard at {s.dashboard_url}")
    entrypoint = run_command(s)
    log(f"submitting to {s.dashboard_url}: {shlex.join(entrypoint)}")
    # Follows the job's log to its end; exits 1 when the job failed.
    return subprocess.run(["ray", "job", "submit", "--address", s.dashboard_url, "--", *entrypoint], env=env).returncode


def worker_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]


def run(config: str, workers: int, linger_s: float, extra: list[str]) -> None:
    """Wait until `workers` nodes with CPUs have joined (regions spread over them), then the run, in this process."""
    import ray

    ray.init(logging_level="WARNING", log_to_driver=False)
    try:
        nodes = wait_for(lambda: (lambda n: n if len(n) >= workers else None)(worker_nodes()), f"{workers} Ray worker node(s)")
        log(f"{len(nodes)} worker node(s): {', '.join(sorted(n['NodeManagerAddress'] for n in nodes))}")
    finally:
        ray.shutdown()
    args = [
        "codistill", "run", config, "--out", RUN_DIR, "--force", "--quiet",
        "--set", f"security.tls_dir={CERTS}", "--set", f"security.token_file={REGION_TOKEN}",
        "--set", f"monitor.linger_s={linger_s:g}", *extra,
    ]
    log(" ".join(args))
    os.chdir("/app")  # configs/ paths are relative to the image's working folder
    os.execvp(args[0], args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("init", "head", "worker", "job"):
        sub.add_parser(role)
    r = sub.add_parser("run")
    r.add_argument("--config", required=True)
    r.add_argument("--workers", type=int, required=True)
    r.add_argument("--linger-s", type=float, required=True)
    r.add_argument("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    s = Settings.from_env()
    try:
        if args.role == "init":
            init(s)
        elif args.role in ("head", "worker"):
            start_node(s, head=args.role == "head")
        elif args.role == "job":
            return submit(s)
        else:
            extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
            run(args.config, args.workers, args.linger_s, extra)
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
