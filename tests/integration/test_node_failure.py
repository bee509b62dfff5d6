"""A worker node dies mid-run (its raylet and workers SIGKILLed): the run goes on and finishes.

Ray restarts the lost regions on the surviving worker; each restores its
newest checkpoint from the run's shared storage (not from the dead node's
disk), its peers find it at its new address, and it counts the restart.
"""

import json
import time
import urllib.request
from pathlib import Path

import pytest

from codistill import storage
from codistill.launch.monitor import targets_file
from codistill.region import checkpoint
from tests.integration.multinode import kill_node, loopback_cluster, results, start_codistill

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
REGIONS, STEPS, EVERY = 4, 600, 50
ROUND_TIMEOUT_S = 120
RUN = [
    "--set", f"regions.count={REGIONS}", "--set", "regions.num_cpus=0.5", "--set", "regions.hidden=[64]",
    "--set", f"train.steps={STEPS}", "--set", f"train.eval_every={EVERY}", "--set", f"fault.checkpoint_every={EVERY}",
    "--set", f"exchange.round_timeout_s={ROUND_TIMEOUT_S}", "--set", "regions.placement=spread", "--quiet",
]
# The head notices a dead node within seconds rather than the default quarter of a minute.
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 4}


def run_on_cluster(tmp_path: Path, name: str, kill: bool) -> tuple[dict, dict]:
    with loopback_cluster(workers=2, worker_cpus=4, system_config=FAST_HEALTH) as cluster:
        out, store = tmp_path / name, tmp_path / f"{name}-store"
        # Killed: the endpoints stay up a while after training, so the restarted regions' counters get read.
        linger = 30 if kill else 0
        proc = start_codistill("run", QUICKSTART, *RUN, "--set", f"storage=file://{store}", "--set", f"monitor.linger_s={linger}",
                               "--address", cluster.address, "--out", str(out))
        seen = {}
        try:
            if kill:
                seen.update(kill_a_worker_mid_run(cluster, out, store))
            output, _ = proc.communicate(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, output
        return results(out), seen


def region_folders(store: Path) -> dict[int, Path]:
    runs = list(store.glob("*/checkpoints/*/codistill"))
    return {i: runs[0] / f"region-{i}" for i in range(REGIONS)} if runs else {}


def kill_a_worker_mid_run(cluster, out: Path, store: Path) -> dict:
    """Once every region holds two checkpoints: SIGKILL one worker's raylet; watch for the restarts."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        folders = region_folders(store)
        if folders and all(len(checkpoint.checkpoints(f)) >= 2 for f in folders.values()):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("regions never held two checkpoints each")
    victim = cluster.workers[0]
    before = {i: checkpoint.step_of(checkpoint.checkpoints(f)[-1]) for i, f in folders.items()}
    killed = kill_node(victim)
    assert len(killed) >= 3, killed  # the raylet and the workers of its two regions
    restarts = watch_restart_counters(out, deadline=time.monotonic() + 300)
    return {"victim": victim.node_id, "survivor": cluster.workers[1].node_id, "before_kill": before, "restarts": restarts}


def watch_restart_counters(out: Path, deadline: float) -> dict[int, float]:
    """codistill_restarts_total of every region that reports one, read from the endpoints the targets file lists."""
    sd = targets_file(out / "prometheus", "codistill")
    while time.monotonic() < deadline:
        counts = {}
        try:
            groups = json.loads(sd.read_text())
        except (OSError, ValueError):  # not written yet, or being replaced
            groups = []
        for group in groups:
            if group["labels"]["role"] != "region":
                continue
            try:  # a lost region's old address answers nothing until the file lists its new one
                body = urllib.request.urlopen(f"http://{group['targets'][0]}/metrics", timeout=2).read().decode()
            except OSError:
                continue
            for line in body.splitlines():
                if line.startswith("codistill_restarts_total{"):
                    region = int(line.split('region="')[1].split('"')[0])
                    counts[region] = float(line.rsplit(" ", 1)[1])
        if any(v >= 1 for v in counts.values()):
            return counts
        time.sleep(0.5)
    raise AssertionError("no region reported codistill_restarts_total >= 1")


def test_a_killed_worker_node_costs_the_run_nothing(tmp_path):
    killed, seen = run_on_cluster(tmp_path, "killed", kill=True)
    whole, _ = run_on_cluster(tmp_path, "whole", kill=False)

    regions = {r["id"]: r for r in killed["regions"]}
    lost = sorted(i for i, r in regions.items() if r["restarts"] >= 1)
    assert len(lost) == 2, {i: (r["restarts"], r["node_id"][:8]) for i, r in regions.items()}  # spread: two regions per worker
    for i in lost:
        r = regions[i]
        assert r["node_id"] == seen["survivor"], (i, r["node_id"], seen)  # restarted on the node that is left
        assert r["resumed_from"] >= seen["before_kill"][i], (i, r["resumed_from"], seen["before_kill"])
        assert r["steps"] == STEPS
    # The restarted regions said so on their metrics endpoints while the run went on.
    assert {i for i, v in seen["restarts"].items() if v >= 1} <= set(lost) and seen["restarts"], seen["restarts"]
    assert all(r["node_id"] != seen["victim"] for r in killed["regions"])
    # Checkpoints went to the run's storage, not to the folder of the run on the driver.
    out, store = tmp_path / "killed", tmp_path / "killed-store"
    assert not (out / "checkpoints").exists()
    assert all(checkpoint.checkpoints(f) for f in region_folders(store).values())
    assert json.loads(storage.read_bytes(storage.location(f"file://{store}/killed/results.json")))["run_id"] == killed["run_id"]
    # No region sat out a round timeout: the restored ones asked their peers where they were
    # instead of waiting for rounds sent to their lost incarnations, and the peers found them.
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    waits = [e["round_seconds"] for e in events if e["kind"] == "publish"]
    assert waits and max(waits) < ROUND_TIMEOUT_S / 2, max(waits)
    # And it cost (almost) nothing: the same seed without the kill.
    assert abs(killed["mean_test_accuracy"] - whole["mean_test_accuracy"]) <= 0.02, (killed["mean_test_accuracy"], whole["mean_test_accuracy"])
