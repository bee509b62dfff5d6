"""A real co-distillation run scraped by a real Prometheus server.

Every PromQL expression of the Grafana dashboard is read from its JSON and
must return data, so a new panel is covered without touching this test.
"""

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from codistill.launch import driver
from codistill.launch.monitor import write_prometheus_config
from tests.conftest import make_tiny_cfg

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


def concrete(expr: str) -> str:
    return expr.replace("$__rate_interval", "10s").replace("$run", ".+").replace("$region", ".+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.fixture(scope="module")
def live_run(local_ray, tmp_path_factory):
    cfg = make_tiny_cfg()
    cfg.exchange.transport = "grpc"
    cfg.train.steps = 600
    cfg.train.eval_every = 20
    cfg.monitor.linger_s = 25
    out = tmp_path_factory.mktemp("live") / "run"
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("doc", driver.run(cfg, out)), daemon=True)
    thread.start()
    targets = wait_for(lambda: (out / "prometheus" / "targets.json").exists() and out / "prometheus" / "targets.json", 60, "file_sd")
    yield out, targets, cfg
    thread.join(180)
    assert "doc" in box, "the run did not finish"


@pytest.fixture(scope="module")
def prometheus(live_run, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prometheus")
    out, targets, _ = live_run
    config = write_prometheus_config(tmp_path / "prom", targets, interval="1s")
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 30, "prometheus ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def test_dashboard_queries_return_data_from_a_live_run(live_run, prometheus):
    out, targets, cfg = live_run
    n_targets = len(json.loads(targets.read_text()))
    assert n_targets == cfg.regions.count + 1  # every region and the driver

    def all_up():
        active = api(prometheus, "targets")["data"]["activeTargets"]
        return len(active) == n_targets and all(t["health"] == "up" for t in active)

    wait_for(all_up, 60, "every target up")

    missing = {}
    for expr in dashboard_exprs():
        q = concrete(expr)
        try:
            wait_for(lambda: api(prometheus, "query", query=q)["data"]["result"], 40, q)
        except AssertionError:
            missing[expr] = api(prometheus, "query", query=q)
    assert not missing, f"dashboard expressions without data: {list(missing)}"

    # Every region's attention over its peers is a distribution.
    sums = api(prometheus, "query", query="sum by (region) (codistill_attention_weight)")["data"]["result"]
    assert {s["metric"]["region"] for s in sums} == {str(i) for i in range(cfg.regions.count)}
    for s in sums:
        assert abs(float(s["value"][1]) - 1.0) < 0.02, s

    # Each region received from each of its peers.
    received = api(prometheus, "query", query="codistill_messages_received_total > 0")["data"]["result"]
    assert len(received) == cfg.regions.count * (cfg.regions.count - 1)


def test_promtool_accepts_a_real_scrape(live_run):
    _, targets, _ = live_run
    addresses = [a for group in json.loads(targets.read_text()) for a in group["targets"]]
    for address in addresses:
        body = wait_for(lambda: urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read(), 30, address)
        res = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr


def test_deploy_prometheus_config_is_valid():
    res = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
