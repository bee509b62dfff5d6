"""Many regions per process (regions.per_process): grouped on Ray, each region still its own gRPC endpoint."""

import json
import os
import signal
import threading
import time
import urllib.request

import pytest
import ray

from codistill.launch import driver
from codistill.launch import ray_runner

pytestmark = pytest.mark.integration


def _grouped_cfg(tiny_cfg, steps):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.count = 6
    cfg.regions.per_process = 3
    cfg.regions.num_cpus = 0.25
    cfg.exchange.transport = "grpc"
    cfg.exchange.round_timeout_s = 5
    cfg.train.steps = steps
    return cfg


def _restarts_line(address: str) -> str:
    body = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    (line,) = [line for line in body.splitlines() if line.startswith("codistill_restarts_total")]
    return line


def test_a_killed_process_restarts_all_its_regions_from_their_checkpoints(local_ray, tiny_cfg, tmp_path, monkeypatch):
    cfg = _grouped_cfg(tiny_cfg, steps=300)
    cfg.train.eval_every = 50
    cfg.fault.checkpoint_every = 30
    unkilled = driver.run(cfg, tmp_path / "unkilled")

    victims = (3, 4, 5)  # the second process
    seen = {}

    def kill_when_checkpointed(runner):
        def killer():
            folders = {i: tmp_path / "crash" / "checkpoints" / "codistill" / f"region-{i}" for i in victims}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(len(list(f.glob("step-*.pt"))) >= 2 for f in folders.values()):
                time.sleep(0.05)
            seen["pids"] = runner.region_pids()
            seen["metrics"] = ray.get([runner.actors[i].metrics_address.remote(i) for i in range(6)])
            seen["last"] = {i: max(int(p.name[5:14]) for p in f.glob("step-*.pt")) for i, f in folders.items()}
            os.kill(seen["pids"][victims[0]], signal.SIGKILL)
            seen["killed"] = True
            seen["new_pids"] = ray.get([runner.actors[i].pid.remote() for i in victims], timeout=60)
            # Each restarted region serves its own /metrics on a new port, its own restart counted there.
            seen["new_metrics"] = {i: _restarts_line(ray.get(runner.actors[i].metrics_address.remote(i), timeout=60)) for i in victims}

        threading.Thread(target=killer, daemon=True).start()

    class Watched(ray_runner.RayRunner):
        def start(self):
            super().start()
            kill_when_checkpointed(self)

    monkeypatch.setattr(ray_runner, "RayRunner", Watched)
    crashed = driver.run(cfg, tmp_path / "crash")
    assert seen.get("killed"), "the process was never killed"
    # Two processes hosted the six regions, three each, in order.
    pids = seen["pids"]
    assert len(set(pids)) == 2 and len(set(pids[:3])) == 1 and len(set(pids[3:])) == 1, pids
    assert len(set(seen["new_pids"])) == 1 and seen["new_pids"][0] != pids[victims[0]]
    assert len(set(seen["metrics"])) == 6, seen["metrics"]  # one endpoint per region, not per process
    for i in victims:
        assert f'region="{i}"' in seen["new_metrics"][i] and seen["new_metrics"][i].endswith(" 1.0"), seen["new_metrics"]

    regions = crashed["regions"]
    assert all(r["steps"] == cfg.train.steps for r in regions)
    for i in victims:
        assert regions[i]["restarts"] == 1, (i, regions[i]["restarts"])
        assert regions[i]["resumed_from"] >= seen["last"][i] > 0, (i, regions[i]["resumed_from"], seen["last"][i])
    assert all(regions[i]["restarts"] == 0 for i in range(3)), [r["restarts"] for r in regions]
    records = [json.loads(line) for line in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["region"] for r in records if r["kind"] == "resume") == list(victims)
    assert abs(crashed["mean_test_accuracy"] - unkilled["mean_test_accuracy"]) <= 0.02


def test_grouped_regions_give_the_same_numbers_as_one_per_process(local_ray, tiny_cfg, tmp_path):
    grouped_cfg = _grouped_cfg(tiny_cfg, steps=60)
    alone_cfg = grouped_cfg.model_copy(deep=True)
    alone_cfg.regions.per_process = 1
    grouped = driver.run(grouped_cfg, tmp_path / "grouped")
    alone = driver.run(alone_cfg, tmp_path / "alone")
    assert [r["test_accuracy"] for r in grouped["regions"]] == [r["test_accuracy"] for r in alone["regions"]]
    assert [r["bytes_sent"] for r in grouped["regions"]] == [r["bytes_sent"] for r in alone["regions"]]
    assert all(len(r["messages_received"]) == 5 for r in grouped["regions"])  # every peer reached, in its process or not
