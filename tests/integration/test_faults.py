"""The failure model, exercised: crashes, hung peers and lying peers."""

import json
import os
import signal
import threading
import time

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

        threading.Thread(target=killer, daemon=True).start()

    original = ray_runner.run_on_ray
    monkeypatch.setattr(
        ray_runner, "run_on_ray", lambda *a, **k: original(*a, **{**k, "on_started": kill_when_checkpointed})
    )
    crashed = driver.run(cfg, tmp_path / "crash")
    assert "pid" in killed, "the region was never killed"

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


def test_hung_peer_does_not_stall_the_others(local_ray, tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.count = 4
    cfg.exchange.transport = "grpc"
    cfg.exchange.mode = "async"
    cfg.exchange.rpc_timeout_s = 1.0
    cfg.exchange.publish_interval = 5
    cfg.train.steps = 300
    cfg.train.eval_every = 50
    cfg.fault.checkpoint_every = 0
    normal = driver.run(cfg, tmp_path / "normal")
    hung_cfg = cfg.model_copy(deep=True)
    hung_cfg.chaos.hang_region = 3
    hung_cfg.chaos.hang_at_step = 20
    hung_cfg.chaos.hang_seconds = 15.0
    hung = driver.run(hung_cfg, tmp_path / "hung")

    def rate(doc, region):
        r = doc["regions"][region]
        return r["steps"] / r["train_seconds"]

    for region in range(3):
        assert rate(hung, region) >= 0.8 * rate(normal, region), (rate(hung, region), rate(normal, region))
        # Pushes to the hung region failed by deadline or were skipped, and were counted.
        assert hung["regions"][region]["publish_failures"] > 0
    # The others saw the hung region's predictions go stale: none arrived while it slept.
    records = [json.loads(line) for line in (tmp_path / "hung" / "metrics.jsonl").read_text().splitlines()]
    assert hung["regions"][0]["messages_received"]["3"] < normal["regions"][0]["messages_received"]["3"]
    assert any(r["kind"] == "publish" and r["region"] == 0 and 3 in r["failed"] for r in records)
    ages = [r["peer_age_steps"]["3"] for r in records if r["kind"] == "eval" and r["region"] == 0]
    assert max(ages) > 10 * cfg.exchange.publish_interval, ages
