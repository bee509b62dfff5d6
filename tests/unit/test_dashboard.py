"""The Grafana dashboard lets one select and compare the strategies of a run (--compare)."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "codistill.json"
DEPLOY_PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def _doc() -> dict:
    return json.loads(DASHBOARD.read_text())


def _targets(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.extend(t for t in p.get("targets", []) if t.get("expr"))
        out.extend(_targets(p.get("panels", [])))
    return out


def _variables() -> dict[str, dict]:
    return {v["name"]: v for v in _doc()["templating"]["list"]}


def test_strategy_is_a_multi_select_variable_and_narrows_the_regions():
    variables = _variables()
    strategy = variables["strategy"]
    assert strategy["multi"] and strategy["includeAll"], strategy
    assert "strategy)" in strategy["query"]["query"]  # label_values(..., strategy)
    assert 'strategy=~"$strategy"' in variables["region"]["query"]["query"]


def test_every_query_selects_the_strategy_and_every_legend_names_it():
    targets = _targets(_doc()["panels"])
    assert targets
    for t in targets:
        expr = t["expr"]
        selectors = re.findall(r"codistill_\w+\{([^}]*)\}", expr)
        assert selectors and all('strategy=~"$strategy"' in s for s in selectors), expr
        # Aggregations must keep strategies apart, or two strategies sum into one line.
        for by in re.findall(r"by \(([^)]*)\)", expr):
            assert "strategy" in [b.strip() for b in by.split(",")], expr
        if "legendFormat" in t:
            assert "{{strategy}}" in t["legendFormat"], t


def test_deploy_prometheus_reads_every_strategys_targets_file():
    job = yaml.safe_load(DEPLOY_PROMETHEUS.read_text())["scrape_configs"][0]
    assert job["honor_labels"] is True
    assert job["file_sd_configs"][0]["files"] == ["/runs/current/prometheus/targets-*.json"]
