"""Regions across machines: a run joins a real 3-node Ray cluster and its regions spread, pack or pin.

Every region serves gRPC on its own node, so predictions that arrive from a
peer on another node crossed between raylets; a real Prometheus scrapes every
region through the run's file_sd targets while it trains.
"""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from codistill.launch.monitor import targets_file
from tests.integration.multinode import codistill, loopback_cluster, results, start_codistill
from tests.integration.prometheus_server import api, running_prometheus, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus (make test installs it)")]

ROOT = Path(__file__).resolve().parents[2]
REGIONS = 4
SMALL = [
    "--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=1200", "--set", "data.transfer_size=300",
    "--set", "data.test_size=300", "--set", f"regions.count={REGIONS}", "--set", "regions.hidden=[32]",
    "--set", "regions.num_cpus=0.5", "--set", "train.steps=400", "--set", "train.eval_every=50",
    "--set", "distill.burn_in=20", "--set", "exchange.publish_interval=20", "--set", "exchange.mode=sync",
    "--set", "exchange.transport=grpc", "--set", "fault.checkpoint_every=0",
]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def cluster():
    # Room for every region on one worker: Ray's default scheduling would keep them together, spread must not.
    with loopback_cluster(workers=2, worker_cpus=4) as c:
        yield c


def test_spread_regions_run_on_several_nodes_exchange_across_them_and_are_scraped(cluster, tmp_path):
    out = tmp_path / "run"
    with running_prometheus(tmp_path, out) as base:
        run = start_codistill(
            "run", QUICKSTART, *SMALL, "--set", "regions.placement=spread", "--set", "monitor.linger_s=8",
            "--quiet", "--address", cluster.address, "--out", str(out),
        )
        sd = targets_file(out / "prometheus", "codistill")
        groups = wait_for(lambda: sd.exists() and json.loads(sd.read_text()), 180, sd.name)
        regions = [g for g in groups if g["labels"]["role"] == "region"]

        def every_region_up():
            active = [t for t in api(base, "targets")["data"]["activeTargets"] if t["labels"].get("role") == "region"]
            return len(active) == REGIONS and all(t["health"] == "up" for t in active) and active

        up = wait_for(every_region_up, 120, "every region target up in Prometheus")
        # While they train: each region's steps, scraped from its own node, labelled with that node.
        steps = wait_for(lambda: len(api(base, "query", query="codistill_steps_total > 0")["data"]["result"]) == REGIONS
                         and api(base, "query", query="codistill_steps_total > 0")["data"]["result"], 60, "steps of every region")
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output

    doc = results(out)
    by_region = {r["id"]: r for r in doc["regions"]}
    nodes = {r["id"]: r["node_id"] for r in doc["regions"]}
    workers = set(cluster.node_ids()) - {cluster.cluster.head_node.node_id}
    assert set(nodes.values()) <= workers, nodes  # the head offers no CPUs for regions
    assert sorted(Counter(nodes.values()).values()) == [2, 2], nodes  # spread: both workers host regions, evenly
    assert all(r["node_ip"] == "127.0.0.1" for r in doc["regions"])
    # Per-peer counters: each region heard from every peer, those on the other node included.
    crossed = [(i, int(p)) for i, r in by_region.items() for p, n in r["messages_received"].items() if n > 0 and nodes[int(p)] != nodes[i]]
    assert len(crossed) >= 2 * 2, crossed  # with 2+2 regions on two nodes: 8 cross-node pairs, at least half seen
    assert all(r["test_accuracy"] > 0.5 for r in doc["regions"])
    # Prometheus scraped every region, at the address the targets file named on the region's node.
    assert {s["metric"]["region"] for s in steps} == {str(i) for i in range(REGIONS)}
    assert {s["metric"]["node_ip"] for s in steps} == {"127.0.0.1"}
    assert {a for g in regions for a in g["targets"]} == {t["scrapeUrl"].split("/")[2] for t in up}
    assert all(g["labels"]["node_ip"] == g["targets"][0].rpartition(":")[0] for g in regions)


def test_pack_puts_regions_on_one_node_and_pins_choose_theirs(cluster, tmp_path):
    out = tmp_path / "run"
    # Region 3 pinned to the second worker; the other three packed onto one node.
    pins = '[{region: 3, resources: {node_2: 0.1}}]'
    res = codistill(
        "run", QUICKSTART, *SMALL, "--set", "train.steps=100", "--set", "regions.placement=pack", "--set", f"regions.pins={pins}",
        "--set", "monitor.metrics=false", "--quiet", "--address", cluster.address, "--out", str(out),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    nodes = {r["id"]: r["node_id"] for r in results(out)["regions"]}
    named = cluster.node_ids()
    assert named[nodes[3]] == "node_2", (nodes, named)
    packed = Counter(nodes[i] for i in range(3))
    assert len(packed) == 1, packed


def test_a_pin_no_node_can_host_fails_before_any_region_starts(cluster, tmp_path):
    out = tmp_path / "run"
    res = codistill(
        "run", QUICKSTART, *SMALL, "--set", "regions.pins=[{region: 2, resources: {zone_x: 1}}]",
        "--quiet", "--address", cluster.address, "--out", str(out),
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip() and not line.startswith("20")]
    error = [line for line in lines if line.startswith("codistill: error")]
    assert len(error) == 1 and "region 2" in error[0] and "zone_x=1" in error[0], lines
    assert "Traceback" not in res.stdout + res.stderr
    assert not (out / "checkpoints").exists() and not (out / "results.json").exists()
