"""A real `--compare independent` run scraped by a real Prometheus server.

Both strategies share one run id; their series must stay apart by the
`strategy` label, each with its own targets file. Every PromQL expression of
the Grafana dashboard is read from its JSON and must return data, so a new
panel is covered without touching this test.
"""

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from codistill.launch import driver
from codistill.launch.monitor import targets_file
from tests.conftest import make_tiny_cfg
from tests.integration.prometheus_server import api, running_prometheus, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "codistill.json"
pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus (make test installs it)")]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return exprs


def concrete(expr: str, strategy: str) -> str:
    return (
        expr.replace("$__rate_interval", "10s").replace("$run", ".+").replace("$region", ".+").replace("$strategy", strategy)
    )


STRATEGIES = ("codistill", "independent")  # cfg.strategy, then --compare independent


def parse_scrape(body: bytes) -> list[tuple[str, dict]]:
    return [(s.name, s.labels) for f in text_string_to_metric_families(body.decode()) for s in f.samples]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus reading the run's targets-*.json glob, started before any strategy's file exists."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    out = tmp_path_factory.mktemp("live") / "run"
    with running_prometheus(tmp_path, out) as base:
        yield base, out


@pytest.fixture(scope="module")
def live_run(local_ray, prometheus):
    """`codistill run --compare independent`: two strategies, one after the other, on one run id."""
    _, out = prometheus
    cfg = make_tiny_cfg()
    cfg.exchange.transport = "grpc"
    cfg.train.steps = 600
    cfg.train.eval_every = 20
    cfg.monitor.linger_s = 25  # each strategy's endpoints outlive it long enough to be scraped and checked
    box = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("doc", driver.run(cfg, out, compare=["independent"])), daemon=True
    )
    thread.start()
    t0 = time.time()

    def finished() -> dict:
        thread.join(240)
        assert "doc" in box, "the run did not finish"
        return box["doc"]

    yield out, cfg, t0, finished


def watch_strategy(base: str, out: Path, strategy: str) -> list[str]:
    """While `strategy` runs: its own targets file, every target up in Prometheus, every scraped series labeled with it."""
    sd = targets_file(out / "prometheus", strategy)
    groups = wait_for(lambda: sd.exists() and json.loads(sd.read_text()), 120, sd.name)
    assert {g["labels"]["strategy"] for g in groups} == {strategy}, groups
    addresses = [a for g in groups for a in g["targets"]]

    def all_up():
        mine = [t for t in api(base, "targets")["data"]["activeTargets"] if t["labels"].get("strategy") == strategy]
        return len(mine) == len(addresses) and all(t["health"] == "up" for t in mine)

    wait_for(all_up, 60, f"every {strategy} target up")
    for address in addresses:
        body = wait_for(lambda: urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read(), 30, address)
        res = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr
        # The endpoint itself names the strategy; not only the label Prometheus attaches from file_sd.
        series = [(name, labels) for name, labels in parse_scrape(body) if name.startswith("codistill_")]
        assert series and all(labels.get("strategy") == strategy for _, labels in series), (address, series[:3])
    return addresses


def series_over(base: str, query: str, t0: float) -> list[dict]:
    """Every series `query` had between t0 and now (a finished strategy's series are stale at 'now')."""
    return api(base, "query_range", query=query, start=t0, end=time.time(), step="1s")["data"]["result"]


def test_compared_strategies_are_apart_by_label_in_a_live_prometheus(live_run, prometheus):
    base, _ = prometheus
    out, cfg, t0, finished = live_run
    addresses = {s: watch_strategy(base, out, s) for s in STRATEGIES}
    assert len(addresses["codistill"]) == cfg.regions.count + 1  # every region and the driver
    assert set(addresses["codistill"]).isdisjoint(addresses["independent"])
    finished()

    # One run id, two strategies: the run-level series stay two lines, told apart by `strategy` alone.
    disagreement = series_over(base, "codistill_disagreement_ratio", t0)
    assert sorted(s["metric"]["strategy"] for s in disagreement) == sorted(STRATEGIES), disagreement
    assert len({s["metric"]["run"] for s in disagreement}) == 1
    assert not [s for s in disagreement if "exported_strategy" in s["metric"]]
    # Each line ends on its own strategy's last evaluation (metrics.jsonl), not the other's.
    last = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "run":
            last[rec["strategy"]] = rec["disagreement"]
    for s in disagreement:
        assert float(s["values"][-1][1]) == pytest.approx(last[s["metric"]["strategy"]]), (s["metric"], last)

    steps = series_over(base, "count by (strategy) (codistill_steps_total)", t0)
    # The most at once: the regions of a finished strategy go stale one by one as they close.
    assert {s["metric"]["strategy"]: max(int(float(v)) for _, v in s["values"]) for s in steps} == dict.fromkeys(STRATEGIES, cfg.regions.count)
    up = series_over(base, "count by (strategy) (up)", t0)
    assert {s["metric"]["strategy"] for s in up} == set(STRATEGIES)

    # Every dashboard panel has data for the exchanging strategy, selected through $strategy.
    missing = [expr for expr in dashboard_exprs() if not series_over(base, concrete(expr, "codistill"), t0)]
    assert not missing, f"dashboard expressions without data: {missing}"

    # Every codistill region's attention over its peers is a distribution; independent regions listen to no one.
    sums = series_over(base, "sum by (strategy, region) (codistill_attention_weight)", t0)
    assert {(s["metric"]["strategy"], s["metric"]["region"]) for s in sums} == {("codistill", str(i)) for i in range(cfg.regions.count)}
    for s in sums:
        assert abs(float(s["values"][-1][1]) - 1.0) < 0.02, s

    # Each codistill region received from each of its peers.
    received = series_over(base, 'codistill_messages_received_total{strategy="codistill"} > 0', t0)
    assert len(received) == cfg.regions.count * (cfg.regions.count - 1)


def test_deploy_prometheus_config_is_valid():
    res = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
