"""The compose stack (deploy/docker-compose.yml), started for real with a Docker engine.

The test installs what it lacks with apt (docker.io, docker-compose, debootstrap), starts a
`dockerd` of its own on a private socket and stops it at the end. With no image registry to
pull from, it builds a base image from Debian packages (scripts/docker/prepare-local-build.sh),
the codistill image on it with the machine's CPU torch wheel, and a Prometheus image from
Debian's package. deploy/docker-compose.test.yml puts every service on the host network,
each Ray node on its own loopback address (head 127.0.0.2, workers 127.0.0.3 and .4), and
leaves Grafana out (no Grafana image can be had here): instead every query of the Grafana
dashboard runs against the stack's Prometheus, and the files Grafana mounts are checked.

The job is the digits quickstart with 4 regions spread over the two workers,
co-distillation then `--compare independent`. Region 0 of each strategy holds still at a
known step for a while (chaos.hang_*), so Prometheus scrapes it mid-run however fast the
machine trains. Images and the base are cached in the engine's data root
(/var/lib/codistill-compose-test) between runs on one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = (DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.test.yml")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "codistill.json"
PREPARE = ROOT / "scripts" / "docker" / "prepare-local-build.sh"

PROJECT = "codistill-compose-test"
ENGINE_DIR = Path("/run/codistill-compose-test")  # socket, pid file, exec root: this engine only
DATA_ROOT = Path("/var/lib/codistill-compose-test")  # images and build cache, kept between runs
BASE_IMAGE = "codistill-base:bookworm"
CODISTILL_IMAGE = "codistill:compose-test"
PROMETHEUS_IMAGE = "codistill-prometheus:compose-test"
APT_FOR = {"dockerd": "docker.io", "docker": "docker.io", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}

HEAD_IP, WORKER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
REGIONS, STEPS, BATCH = 4, 3000, 128
STRATEGIES = ("codistill", "independent")  # the config's strategy, then CODISTILL_COMPARE
# How long a strategy trains depends on the machine (the one without exchange takes a few
# seconds), and Prometheus takes up to ~12 s to scrape a new target (file_sd, its 5 s discovery
# and scrape-reload throttles, then a 2 s interval). So one region of each strategy holds
# still at HOLD_AT steps for HOLD_S seconds: its targets file is written as training starts,
# and the hold outlasts discovery with room. In sync mode its peers wait for its round there.
# The deadlines are raised past the hold so that peers' pushes to the held region succeed and
# the run's figures stay those of a run without the hold.
HOLD_REGION, HOLD_AT, HOLD_S = 0, 1000, 20
JOB_ARGS = " ".join([
    f"--set regions.count={REGIONS} --set regions.placement=spread --set train.steps={STEPS} --set train.batch_size={BATCH} --set train.eval_every=250",
    f"--set chaos.hang_region={HOLD_REGION} --set chaos.hang_at_step={HOLD_AT} --set chaos.hang_seconds={HOLD_S}",
    f"--set exchange.rpc_timeout_s={3 * HOLD_S} --set exchange.round_timeout_s={6 * HOLD_S}",
])
LINGER_S = 10  # each strategy's endpoints outlive its training long enough for final scrapes
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval for a 2 s scrape interval, with room

# Setup (install, build, run) counts towards the first test; a fresh machine needs ~8 minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 1.0) -> T:
    """check()'s first truthy value; AssertionError naming `what` and the last value after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"`{' '.join(args[:6])} ...` exited {res.returncode}: {(res.stdout + res.stderr)[-3000:]}")
    return res


def free_port(ip: str) -> int:
    """A port free on `ip` and on 127.0.0.1, outside Ray's worker port range (10002-19999)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        if 10002 <= port <= 19999:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise AssertionError(f"no free port on {ip}")


# --- the engine -------------------------------------------------------------------------


def install_missing() -> None:
    missing = sorted({pkg for tool, pkg in APT_FOR.items() if shutil.which(tool) is None})
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env, timeout=300)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, timeout=600)


@dataclass(frozen=True)
class Engine:
    proc: subprocess.Popen
    env: dict[str, str]  # DOCKER_HOST pointing at this engine
    driver: str

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run(["docker", *args], env=self.env, timeout=timeout, check=check)

    def inventory(self) -> dict[str, set[str]]:
        """Every container, network and volume on this engine (a private one: only the test makes them)."""
        return {
            "containers": set(self.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()),
            "networks": set(self.docker("network", "ls", "--format", "{{.Name}}").stdout.split()) - {"host", "none", "bridge"},
            "volumes": set(self.docker("volume", "ls", "--format", "{{.Name}}").stdout.split()),
        }


def stop_dockerd(proc_or_pid: subprocess.Popen | int) -> None:
    pid = proc_or_pid.pid if isinstance(proc_or_pid, subprocess.Popen) else proc_or_pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(proc_or_pid, 60):
            os.kill(pid, signal.SIGKILL)
            wait_gone(proc_or_pid, 10)
    # The engine's network namespace handle outlives it.
    netns = ENGINE_DIR / "exec" / "netns" / "default"
    if os.path.ismount(netns):
        run(["umount", str(netns)], check=False)


def wait_gone(proc_or_pid: subprocess.Popen | int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if isinstance(proc_or_pid, subprocess.Popen):
            if proc_or_pid.poll() is not None:
                return True
        elif not Path(f"/proc/{proc_or_pid}").exists():
            return True
        time.sleep(0.5)
    return False


def stop_leftover_engine() -> None:
    """An engine an interrupted earlier run of this test left on its private socket."""
    pidfile = ENGINE_DIR / "dockerd.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip() or 0)
    cmdline = Path(f"/proc/{pid}/cmdline")
    if pid and cmdline.exists() and str(ENGINE_DIR).encode() in cmdline.read_bytes():
        stop_dockerd(pid)
    pidfile.unlink(missing_ok=True)


def start_dockerd(driver: str) -> Engine | None:
    """dockerd with `driver`, no bridge and no iptables (this machine has neither); None if it does not come up."""
    socket_path = ENGINE_DIR / "docker.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = f"unix://{socket_path}"
    log = (ENGINE_DIR / f"dockerd-{driver}.log").open("w")
    proc = subprocess.Popen(
        ["dockerd", f"--storage-driver={driver}", "--bridge=none", "--iptables=false", "-H", env["DOCKER_HOST"],
         f"--data-root={DATA_ROOT}", f"--exec-root={ENGINE_DIR / 'exec'}", f"--pidfile={ENGINE_DIR / 'dockerd.pid'}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        info = run(["docker", "info", "--format", "{{.Driver}}"], env=env, timeout=10, check=False)
        if info.returncode == 0 and info.stdout.strip() == driver:
            return Engine(proc, env, driver)
        time.sleep(0.5)
    stop_dockerd(proc)
    return None


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("needs root: installs docker.io with apt and runs a dockerd of its own (CI runs as root)")
    install_missing()
    ENGINE_DIR.mkdir(parents=True, exist_ok=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    stop_leftover_engine()
    # overlay2 builds the 2 GB image in a third of vfs's time; vfs works wherever overlay mounts do not.
    started = start_dockerd("overlay2") or start_dockerd("vfs")
    assert started, f"dockerd did not start; see {ENGINE_DIR}/dockerd-*.log"
    try:
        yield started
    finally:
        stop_dockerd(started.proc)


# --- images and the stack ---------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    engine: Engine
    env: dict[str, str]
    file: Path  # the merged compose file the stack runs from
    config: dict  # its services, volumes, ...
    dashboard_url: str
    prometheus_url: str
    before: dict[str, set[str]]  # the engine's containers, networks and volumes before `up`

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return compose(self.env, self.file, *args, timeout=timeout, check=check)

    def volume(self, name: str) -> Path:
        """Where the stack's named volume lies on this machine (the test runs as root beside the engine)."""
        return Path(self.engine.docker("volume", "inspect", f"{PROJECT}_{name}", "--format", "{{.Mountpoint}}").stdout.strip())


def compose(env: dict[str, str], file: Path, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    return run(["docker-compose", "-p", PROJECT, "-f", str(file), *args], env=env, timeout=timeout, check=check)


def stack_env(engine: Engine) -> tuple[dict[str, str], str, str]:
    """The compose environment: images, loopback addresses and free ports, the job's settings."""
    env = {k: v for k, v in engine.env.items() if not k.startswith(("CODISTILL_", "STACK_", "RAY_", "PROMETHEUS_", "GRAFANA_"))}
    gcs, dashboard, prometheus = free_port(HEAD_IP), free_port(HEAD_IP), free_port("127.0.0.1")
    env.update(
        CODISTILL_IMAGE=CODISTILL_IMAGE, CODISTILL_BASE_IMAGE=BASE_IMAGE, PROMETHEUS_IMAGE=PROMETHEUS_IMAGE,
        STACK_HEAD_IP=HEAD_IP, STACK_WORKER_1_IP=WORKER_IPS[0], STACK_WORKER_2_IP=WORKER_IPS[1],
        STACK_GCS_PORT=str(gcs), STACK_DASHBOARD_PORT=str(dashboard), STACK_PROMETHEUS=f"127.0.0.1:{prometheus}",
        CODISTILL_CONFIG="configs/quickstart.yaml", CODISTILL_COMPARE="independent", CODISTILL_ARGS=JOB_ARGS,
        CODISTILL_LINGER_S=str(LINGER_S), RAY_WORKER_CPUS="2",
    )
    return env, f"http://{HEAD_IP}:{dashboard}", f"http://127.0.0.1:{prometheus}"


def host_network_file(env: dict[str, str], out: Path) -> tuple[Path, dict]:
    """The base file merged with the test override by `docker-compose config`, published ports dropped.

    On the host network Docker discards published ports anyway, but docker-compose 1.29
    refuses to create such a container, and an override cannot remove a list entry.
    """
    files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
    merged = yaml.safe_load(run(["docker-compose", "-p", PROJECT, *files, "config"], env=env).stdout)
    for service in merged["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    out.write_text(yaml.safe_dump(merged, sort_keys=False))
    return out, merged


@pytest.fixture(scope="module")
def stack(engine: Engine, tmp_path_factory) -> Iterator[Stack]:
    env, dashboard_url, prometheus_url = stack_env(engine)
    prepare = run([str(PREPARE), BASE_IMAGE], env=dict(env, PYTHON=sys.executable), timeout=600, check=False)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
    build = run(["docker-compose", "-p", PROJECT, *files, "build", "codistill", "prometheus"], env=env, timeout=900, check=False)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    file, config = host_network_file(env, tmp_path_factory.mktemp("compose") / "docker-compose.yml")
    compose(env, file, "down", "-v", "--remove-orphans")  # whatever an interrupted earlier run left
    s = Stack(engine, env, file, config, dashboard_url, prometheus_url, engine.inventory())
    try:
        s.compose("up", "-d", "--no-build", "ray-head", "ray-worker", "ray-worker-2", "prometheus", "codistill")
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", check=False)


# --- watching the job ---------------------------------------------------------------------


def prometheus_api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a bad query: 400 with Prometheus' error in the body
        return json.loads(exc.read())


@dataclass(frozen=True)
class StrategyWatch:
    strategy: str
    regions: tuple[str, ...]  # the region addresses of its targets file
    health: dict[str, str]  # Prometheus' view of each of its targets once all were up (or at the deadline)


@dataclass(frozen=True)
class Job:
    t0: float
    t1: float
    watches: tuple[StrategyWatch, ...]
    exit_code: int
    log: str
    results: dict
    ray_nodes: tuple[dict, ...]


def job_state(s: Stack) -> tuple[str, int]:
    cid = s.compose("ps", "-q", "codistill").stdout.strip()
    state = s.engine.docker("inspect", cid, "--format", "{{.State.Status}} {{.State.ExitCode}}").stdout.split()
    return state[0], int(state[1])


def watch_strategy(s: Stack, targets_dir: Path, strategy: str) -> StrategyWatch:
    sd = targets_dir / f"targets-{strategy}.json"

    def groups():
        if sd.exists():
            return json.loads(sd.read_text())
        if job_state(s)[0] == "exited":
            raise AssertionError(f"the job ended before {sd.name} appeared:\n{s.compose('logs', 'codistill').stdout[-3000:]}")
        return None

    try:
        found = wait_for(groups, 300, sd.name)
    except AssertionError as exc:  # say where the job got to
        logs = s.compose("logs", "--no-color", "--tail", "30", "codistill", "ray-head", check=False)
        raise AssertionError(f"{exc}\n{(logs.stdout + logs.stderr)[-4000:]}") from None
    regions = tuple(a for g in found if g["labels"]["role"] == "region" for a in g["targets"])
    addresses = {a for g in found for a in g["targets"]}

    def health() -> dict[str, str]:
        active = prometheus_api(s.prometheus_url, "targets")["data"]["activeTargets"]
        return {t["labels"]["instance"]: t["health"] for t in active if t["labels"].get("strategy") == strategy}

    try:
        seen = wait_for(lambda: (lambda h: h if set(h) >= addresses and all(v == "up" for v in h.values()) else None)(health()), 60, f"every {strategy} target up")
    except AssertionError:
        try:
            seen = health()  # the test names what was not up
        except OSError:
            seen = {}  # Prometheus itself is not answering
    return StrategyWatch(strategy, regions, seen)


def ray_nodes(s: Stack) -> tuple[dict, ...]:
    res = s.compose(
        "exec", "-T", "-e", "RAY_AUTH_MODE=token", "-e", "RAY_AUTH_TOKEN_PATH=/secrets/ray-token", "ray-head",
        "ray", "list", "nodes", "--address", s.dashboard_url, "--format", "json", "--filter", "state=ALIVE", timeout=120,
    )
    return tuple(json.loads(res.stdout))


@pytest.fixture(scope="module")
def job(stack: Stack) -> Job:
    """The job watched while it runs (targets up, in each strategy's turn), then its results."""
    t0 = time.time()
    targets_dir = stack.volume("runs") / "current" / "prometheus"
    watches = tuple(watch_strategy(stack, targets_dir, strategy) for strategy in STRATEGIES)
    state = wait_for(lambda: (lambda st: st if st[0] == "exited" else None)(job_state(stack)), 300, "the job to finish")
    t1 = time.time()
    results = json.loads((stack.volume("runs") / "current" / "results.json").read_text()) if state[1] == 0 else {}
    return Job(t0, t1, watches, state[1], stack.compose("logs", "--no-color", "codistill").stdout, results, ray_nodes(stack))


def series_over(s: Stack, job: Job, query: str) -> dict:
    return prometheus_api(s.prometheus_url, "query_range", query=query, start=job.t0 - 60, end=job.t1 + 5, step="2s")


# --- the tests ----------------------------------------------------------------------------


def test_job_finishes_with_codistilled_regions_ahead_of_independent(job: Job):
    assert job.exit_code == 0, job.log[-4000:]
    runs = job.results["compare"]
    assert set(runs) == set(STRATEGIES), list(runs)
    assert all(len(runs[s]["regions"]) == REGIONS for s in STRATEGIES)
    co, alone = runs["codistill"]["mean_test_accuracy"], runs["independent"]["mean_test_accuracy"]
    # Same slices, seeds and steps: on this skewed split peers lift every region well clear.
    assert co > alone + 0.05, (co, alone)


def test_regions_ran_on_both_worker_nodes(job: Job):
    workers = {n["node_id"]: n["node_ip"] for n in job.ray_nodes if n["node_ip"] in WORKER_IPS}
    assert sorted(workers.values()) == sorted(WORKER_IPS), job.ray_nodes
    for strategy in STRATEGIES:
        regions = job.results["compare"][strategy]["regions"]
        placed = {r["id"]: (r["node_id"], r["node_ip"]) for r in regions}
        assert all(node_id in workers and workers[node_id] == ip for node_id, ip in placed.values()), (strategy, placed, workers)
        assert len({node_id for node_id, _ in placed.values()}) == 2, (strategy, placed)  # placement: spread


def test_prometheus_scraped_every_region_up_and_counting_steps(stack: Stack, job: Job):
    for w in job.watches:
        assert len(w.regions) == REGIONS, w
        assert {a: w.health.get(a) for a in w.regions} == dict.fromkeys(w.regions, "up"), w
        # Region targets sit on the worker nodes, each node's own address.
        assert {a.rsplit(":", 1)[0] for a in w.regions} == set(WORKER_IPS), w.regions
        res = series_over(stack, job, f'codistill_steps_total{{strategy="{w.strategy}"}}')
        assert res["status"] == "success", res
        series = {r["metric"]["region"]: [int(float(v)) for _, v in r["values"]] for r in res["data"]["result"]}
        assert sorted(series) == [str(i) for i in range(REGIONS)], series.keys()
        for region, values in series.items():
            # Rising, and scraped at the last step (the endpoints linger after training).
            assert values == sorted(values) and values[-1] == STEPS, (w.strategy, region, values)
        # Scraped mid-run at the step it holds at: the counter moves while the region trains.
        assert HOLD_AT in series[str(HOLD_REGION)], (w.strategy, HOLD_REGION, series[str(HOLD_REGION)])
        if w.strategy == "codistill":
            # Sync rounds: no peer passes the round it needs the held region's predictions for,
            # so every region is scraped short of its last step (and past its first).
            assert all(any(0 < v < STEPS for v in values) for values in series.values()), (w.strategy, series)


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and its variables' label_values()."""
    doc = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(doc["panels"])
    for var in doc["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: not a label_values() query: {query}"
        exprs.append(f"count by ({m.group(2)}) ({m.group(1)})")
    return exprs


def test_every_dashboard_query_runs_against_the_stacks_prometheus(stack: Stack, job: Job):
    queries = dashboard_queries()
    assert len(queries) > 20
    run_id = job.results["run_id"]
    assert re.fullmatch(r"[\w-]+", run_id), run_id  # a regex matching only itself, as Grafana's $run
    failed, empty = {}, []
    for expr in queries:
        # As Grafana sends them with every strategy and region selected.
        q = (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$run", run_id)
             .replace("$strategy", "|".join(STRATEGIES)).replace("$region", ".+"))
        res = series_over(stack, job, q)
        if res.get("status") != "success":
            failed[q] = res.get("error")
        elif not res["data"]["result"]:
            empty.append(q)
    assert not failed, failed
    assert not empty, f"queries without data: {empty}"


def test_the_files_grafana_mounts_exist_and_parse(stack: Stack):
    grafana = stack.config["services"]["grafana"]
    mounts = dict(reversed(v.split(":")[:2]) for v in grafana["volumes"])  # container path -> host path
    docs = {}
    for target, source in mounts.items():
        path = Path(source)
        assert path.exists(), f"grafana mounts {source} at {target}: missing"
        for f in [path] if path.is_file() else sorted(path.glob("*")):
            docs[f"{target}/{f.name}" if path.is_dir() else target] = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
    datasource = docs["/etc/grafana/provisioning/datasources/prometheus.yml"]["datasources"][0]
    assert urllib.parse.urlsplit(datasource["url"]).hostname == "prometheus"
    provider = docs["/etc/grafana/provisioning/dashboards/codistill.yml"]["providers"][0]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/") and docs[home]["uid"] == "codistill"


def test_down_removes_every_container_network_and_volume(stack: Stack, job: Job):
    assert stack.engine.inventory() != stack.before  # the stack is still there before `down`
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.engine.inventory() == stack.before
