"""The failure model, exercised: crashes, hung peers and lying peers."""

import json
import os
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest
import ray

from codistill.launch import driver
from codistill.launch import ray_runner

pytestmark = pytest.mark.integration


def _crash_cfg(tiny_cfg):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.count = 4
    cfg.regions.num_cpus = 0.25
    cfg.exchange.transport = "grpc"
    cfg.exchange.round_timeout_s = 5
    cfg.train.steps = 400
    cfg.train.eval_every = 50
    cfg.fault.checkpoint_every = 40
    return cfg


def test_region_killed_mid_run_resumes_from_its_checkpoint(local_ray, tiny_cfg, tmp_path, monkeypatch):
    cfg = _crash_cfg(tiny_cfg)
    baseline = driver.run(cfg, tmp_path / "baseline")

    victim = 2
    killed = {}

    def kill_when_checkpointed(actors):
        def killer():
            folder = tmp_path / "crash" / "checkpoints" / "codistill" / f"region-{victim}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(folder.glob("step-*.pt"))) < 2:
                time.sleep(0.05)
            killed["checkpoints"] = sorted(p.name for p in folder.glob("step-*.pt"))
            pid = ray.get(actors[victim].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
            # The restarted region serves metrics on a new port; its restart counter reads 1.
            address = ray.get(actors[victim].metrics_address.remote(), timeout=60)
            body = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
            killed["metric"] = [line for line in body.splitlines() if line.startswith("codistill_restarts_total")]
            killed["new_pid"] = ray.get(actors[victim].pid.remote())

        threading.Thread(target=killer, daemon=True).start()

    class Watched(ray_runner.RayRunner):
        def start(self):
            super().start()
            kill_when_checkpointed(self.actors)

    monkeypatch.setattr(ray_runner, "RayRunner", Watched)
    crashed = driver.run(cfg, tmp_path / "crash")
    assert "pid" in killed, "the region was never killed"
    assert killed["new_pid"] != killed["pid"]
    assert len(killed["metric"]) == 1 and killed["metric"][0].endswith(" 1.0"), killed["metric"]

    region = crashed["regions"][victim]
    assert region["restarts"] == 1
    last_checkpoint = max(int(name[5:14]) for name in killed["checkpoints"])
    assert region["resumed_from"] >= last_checkpoint > 0
    assert region["steps"] == cfg.train.steps
    assert all(r["steps"] == cfg.train.steps for r in crashed["regions"])
    assert abs(crashed["mean_test_accuracy"] - baseline["mean_test_accuracy"]) <= 0.02
    records = [json.loads(line) for line in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    resumes = [r for r in records if r["kind"] == "resume"]
    assert [r["region"] for r in resumes] == [victim] and resumes[0]["from_step"] >= last_checkpoint
    # Peers found the restarted region at its new address and delivered to it again.
    after = [r for r in records if r["kind"] == "publish" and r["region"] != victim and r["time"] > resumes[0]["time"]]
    assert after and any(r["delivered"] == 3 for r in after)
    assert crashed["regions"][victim]["bytes_received"] > 0


def _evals(run_dir, region):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval" and r["region"] == region]


def _rate(evals, t_from=float("-inf"), t_to=float("inf")):
    inside = [r for r in evals if t_from <= r["time"] <= t_to]
    assert len(inside) >= 3, "too few evaluations in the window"
    return (inside[-1]["step"] - inside[0]["step"]) / (inside[-1]["time"] - inside[0]["time"])


def test_hung_peer_does_not_stall_the_others(local_ray, tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.count = 4
    cfg.exchange.transport = "grpc"
    cfg.exchange.mode = "async"
    cfg.exchange.rpc_timeout_s = 1.0
    cfg.exchange.publish_interval = 5
    cfg.train.steps = 2500
    cfg.train.eval_every = 50
    cfg.fault.checkpoint_every = 0
    normal = driver.run(cfg, tmp_path / "normal")
    hung_cfg = cfg.model_copy(deep=True)
    hung_cfg.chaos.hang_region = 3
    hung_cfg.chaos.hang_at_step = 300
    hung_cfg.chaos.hang_seconds = 8.0
    hung = driver.run(hung_cfg, tmp_path / "hung")

    # The hang starts when region 3 reaches step 300; measure once the deadline has passed.
    t_hang = next(r["time"] for r in _evals(tmp_path / "hung", 3) if r["step"] == 300)
    window = (t_hang + 2 * cfg.exchange.rpc_timeout_s, t_hang + hung_cfg.chaos.hang_seconds)
    for region in range(3):
        during = _rate(_evals(tmp_path / "hung", region), *window)
        usual = _rate(_evals(tmp_path / "normal", region))
        assert during >= 0.8 * usual, (region, during, usual)
        # Pushes to the hung region failed by deadline or were skipped, and were counted.
        assert hung["regions"][region]["publish_failures"] > 0
    assert hung["regions"][0]["messages_received"]["3"] < normal["regions"][0]["messages_received"]["3"]
    # Its staleness is visible: peer_age_steps feeds codistill_peer_prediction_age_steps.
    ages = [r["peer_age_steps"]["3"] for r in _evals(tmp_path / "hung", 0)]
    assert max(ages) > 10 * cfg.exchange.publish_interval, ages


def test_driver_killed_then_resumed(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "codistill", "run", str(root / "configs" / "quickstart.yaml"), "--out", str(out), "--quiet",
        "--set", "regions.count=4", "--set", "train.steps=1500", "--set", "fault.checkpoint_every=50",
        "--set", "train.eval_every=100",
    ]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    folders = [out / "checkpoints" / "codistill" / f"region-{i}" for i in range(4)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not all(len(list(f.glob("step-*.pt"))) >= 2 for f in folders):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run...
    proc.wait()
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # ...and so does the local Ray it started

    def newest():
        return {i: max(int(p.name[5:14]) for p in f.glob("step-*.pt")) for i, f in enumerate(folders)}

    # Orphaned workers may finish a step or two; wait until nothing writes any more.
    saved, quiet_since = newest(), time.monotonic()
    while time.monotonic() - quiet_since < 3:
        time.sleep(0.5)
        if newest() != saved:
            saved, quiet_since = newest(), time.monotonic()
    assert not (out / "results.json").exists()
    assert all(step < 1500 for step in saved.values())
    held = set.intersection(*({int(p.name[5:14]) for p in f.glob("step-*.pt")} for f in folders))

    res = subprocess.run([sys.executable, "-m", "codistill", "run", "--resume", str(out), "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    for r in doc["regions"]:
        assert r["steps"] == 1500
        # Every region resumed at the newest step all of them had checkpointed: no round is counted twice.
        assert r["resumed_from"] == max(held) > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["region"] for r in records if r["kind"] == "resume") == [0, 1, 2, 3]


def test_resume_needs_a_run_folder(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "codistill", "run", "--resume", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "not the folder of a started codistill run" in res.stdout
