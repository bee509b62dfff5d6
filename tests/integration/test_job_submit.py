"""`ray job submit ... -- codistill run CONFIG --address auto`, the documented way to run on a cluster,
against a real three-node cluster started with `ray start` on loopback (127.0.0.2-4)."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from codistill.launch import driver
from codistill.region import checkpoint
from ray_cli_cluster import LOOPBACK, RayCliCluster, free_port, ray_cli_cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
# Ray's native log lines: "[2026-12-01 13:27:15,863 E 5010 5010] core_worker.cc:...": E is error level.
RAY_ERROR = re.compile(r"^\S*\[\d{4}-\d\d-\d\d [\d:,]+ [EF] \d+ \d+\]")
PYTHON_ERROR = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")
# Ray's CLI lines: "2026-12-01 15:03:46,273\tERR cli.py:74 -- Job 'x' failed".
RAY_CLI_ERROR = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+ERR\s")
JOB_TIMEOUT_S = 150
REGIONS = 4
STEPS = 40
# The quickstart, cut to a few steps of small regions: evaluations and exchange rounds, little compute.
OVERRIDES = {
    "regions.count": REGIONS, "regions.hidden": "[32]", "regions.num_cpus": 0.5, "regions.placement": "spread",
    "data.transfer_size": 200, "train.steps": STEPS, "train.eval_every": 20, "distill.burn_in": 10,
    "exchange.publish_interval": 10, "fault.checkpoint_every": 20,
}


def shipped_checkout(dest: Path) -> Path:
    """The repository's tracked files, as a fresh clone has them: what `--working-dir .` ships."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def cluster():
    with ray_cli_cluster() as c:
        yield c


def alarming(text: str) -> list[str]:
    return [line for line in text.splitlines() if RAY_ERROR.match(line) or RAY_CLI_ERROR.match(line) or PYTHON_ERROR.search(line)]


def submit(
    cluster: RayCliCluster, working_dir: Path, out: Path, job_id: str, overrides: dict = OVERRIDES, *flags: str,
) -> subprocess.CompletedProcess:
    """The documented command, typed in the checkout: ship it, run a config of it on the cluster.
    `flags`: more of `ray job submit`'s own (--no-wait)."""
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    return cluster.ray(
        "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".", "--submission-id", job_id, *flags,
        "--", "codistill", "run", "configs/quickstart.yaml", "--address", "auto", "--out", str(out), "--quiet", *sets,
        timeout=JOB_TIMEOUT_S, cwd=working_dir,
    )


def job_status(cluster: RayCliCluster, job_id: str) -> str:
    listed = cluster.ray("list", "jobs", "--address", cluster.dashboard_url, "--format", "json", "--filter", f"submission_id={job_id}")
    assert listed.returncode == 0, listed.stderr
    (job,) = json.loads(listed.stdout)
    return job["status"]


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory):
    """One run submitted as a Ray job; its submit output, status, logs, results and wall time."""
    home = tmp_path_factory.mktemp("head-home")
    working_dir = shipped_checkout(home / "checkout")
    # Laid out as on a `ray up` head, where the shipped Prometheus reads the current run's targets.
    out = home / "codistill-runs" / "current"
    job_id = f"codistill-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    res = submit(cluster, working_dir, out, job_id)
    wall = time.monotonic() - t0
    status = cluster.ray("job", "status", job_id, "--address", cluster.dashboard_url)
    listed = cluster.ray("list", "jobs", "--address", cluster.dashboard_url, "--format", "json", "--filter", f"submission_id={job_id}")
    logs = cluster.ray("job", "logs", job_id, "--address", cluster.dashboard_url)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    print(f"job {job_id}: submit-to-finish {wall:.1f}s")
    return {"res": res, "status": status, "listed": listed, "logs": logs, "results": results, "out": out, "home": home, "wall": wall}


def test_submitted_run_succeeds_and_spreads_regions_over_nodes(cluster, job):
    res = job["res"]
    assert res.returncode == 0, f"ray job submit exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}"
    assert job["listed"].returncode == 0, job["listed"].stderr
    (listed,) = json.loads(job["listed"].stdout)
    assert listed["status"] == "SUCCEEDED", listed
    results = job["results"]
    assert results is not None, f"no results.json in {job['out']}"
    regions = results["regions"]
    assert len(regions) == REGIONS
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in regions), [r.get("test_accuracy") for r in regions]
    assert all(r["steps"] == STEPS for r in regions)
    alive = {n["node_id"]: n["node_ip"] for n in cluster.alive_nodes()}
    placed = {r.get("node_id", "") for r in regions}
    # spread over a 3-node cluster: more than one node hosts regions, and each id is a real node.
    assert len(placed - {""}) >= 2, f"regions.placement=spread put every region on one node: {[r.get('node_id') for r in regions]}"
    assert placed <= set(alive), f"regions name nodes the cluster does not have: {placed - set(alive)}"
    assert all(r["node_ip"] == alive[r["node_id"]] for r in regions), [(r["node_id"][:8], r["node_ip"]) for r in regions]
    assert all(ipaddress.ip_address(r["node_ip"]) in LOOPBACK for r in regions)


def test_job_status_and_logs_show_no_error_line(job):
    assert job["logs"].returncode == 0, job["logs"].stderr
    assert job["logs"].stdout.strip(), "ray job logs printed nothing"
    for name in ("res", "status", "logs"):
        found = alarming(job[name].stdout + job[name].stderr)
        assert not found, f"ray job {name}: {found}"


def test_unauthenticated_job_api_is_refused(cluster):
    """Token auth is on: the job server answers no request without the cluster's token."""
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=10)
    assert err.value.code in (401, 403)


def test_head_prometheus_config_discovers_every_region_at_its_node_ip(cluster, job):
    """cluster/prometheus/prometheus.yml, placed as `ray up` places it, finds the run's regions by file_sd."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed (make system-deps)"
    assert job["results"] is not None, "the job wrote no results"
    config = job["home"] / "prometheus" / "prometheus.yml"
    config.parent.mkdir()
    shutil.copy(ROOT / "cluster" / "prometheus" / "prometheus.yml", config)
    port = free_port(cluster.head_ip)
    base = f"http://{cluster.head_ip}:{port}"
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={job['home'] / 'tsdb'}",
         f"--web.listen-address={cluster.head_ip}:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def region_targets() -> list[str] | None:
            with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as r:
                active = json.load(r)["data"]["activeTargets"]
            found = [t["labels"]["instance"] for t in active if t["labels"].get("role") == "region"]
            return found if len(found) == REGIONS else None

        found = wait_for(region_targets, 40, "the head's Prometheus to discover every region")
    finally:
        proc.terminate()
        proc.wait(10)
    ips = {addr.rsplit(":", 1)[0] for addr in found}
    assert ips == {r["node_ip"] for r in job["results"]["regions"]}, (found, [r["node_ip"] for r in job["results"]["regions"]])


def test_ray_job_stop_stops_the_run_as_ctrl_c_does_and_leaves_it_resumable(cluster, tmp_path):
    """`ray job stop` sends the driver SIGTERM, and SIGKILL RAY_JOB_STOP_WAIT_TIME_S (3 s by default) later."""
    working_dir = shipped_checkout(tmp_path / "checkout")
    out = tmp_path / "codistill-runs" / "stopped"
    job_id = f"codistill-{secrets.token_hex(4)}"
    steps, regions = 5000, 2  # far more steps than it gets to: stopped at its first checkpoints
    overrides = {**OVERRIDES, "regions.count": regions, "train.steps": steps, "fault.checkpoint_every": 10}
    res = submit(cluster, working_dir, out, job_id, overrides, "--no-wait")
    assert res.returncode == 0, res.stdout + res.stderr
    folders = [out / "checkpoints" / "codistill" / f"region-{i}" for i in range(regions)]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline and not all(any(f.glob("step-*.pt")) for f in folders):
        time.sleep(0.2)
    stop = cluster.ray("job", "stop", job_id, "--address", cluster.dashboard_url)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    logs = cluster.ray("job", "logs", job_id, "--address", cluster.dashboard_url).stdout
    assert job_status(cluster, job_id) == "STOPPED", logs[-3000:]
    lines = [line for line in logs.splitlines() if line.strip()]
    # Stopped as by Ctrl-C, within the job server's grace: one line to continue, no native stack dump.
    assert lines[-1] == f"codistill: stopped; continue with: codistill run --resume {out}", lines[-8:]
    assert sum("--resume" in line for line in lines) == 1, lines
    assert "*** SIGTERM received" not in logs and "PC: @" not in logs and "Traceback" not in logs, logs[-3000:]
    # What --resume reads first: the run's state, with this invocation's training time (written only by a
    # handled stop, never by a kill), and a checkpoint step every region holds.
    state = driver.load_state(out)
    assert list(state.pending) == ["codistill"] and state.spent["codistill"] > 0, state
    assert 0 < checkpoint.align(folders) < steps
    assert not (out / "results.json").exists()
    # The driver only joined the cluster: stopping it stopped none of the cluster's processes.
    assert {n["node_ip"] for n in cluster.alive_nodes()} == {n.ip for n in cluster.nodes}
