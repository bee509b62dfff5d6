"""`codistill bench` on the smoke suite, as CI runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codistill.bench import load_suite

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "benchmarks" / "suites" / "smoke.yaml"
SMOKE_TUNE = ROOT / "benchmarks" / "suites" / "smoke-tune.yaml"
EXCHANGING = ("fedavg", "codistill")
pytestmark = pytest.mark.integration


def bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "codistill", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


NO_WIRE = ("independent", "centralized", "selftrain")


def doc_cells(out):
    return list((out / "cells").glob("*.json"))


def figures(row):
    """What a cell computes (wall times aside, which differ run to run)."""
    keep = ("mean_test_accuracy", "mean_validation_accuracy", "ensemble_test_accuracy", "bytes_sent_per_region")
    return {spec: {k: a[k] for k in keep} for spec, a in row.items()}


def test_smoke_suite_structure_and_sanity(tmp_path):
    out = tmp_path / "bench"
    report = tmp_path / "published" / "RESULTS.md"
    res = bench(str(SMOKE), "--out", str(out), "--report", str(report), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "bench.json").read_text())
    suite = load_suite(SMOKE)
    assert set(doc["rows"]) == {row.name for row in suite.rows}
    for row in suite.rows:
        cells = doc["rows"][row.name]
        assert set(cells) == set(row.strategies)  # every strategy present
        for spec, cell in cells.items():
            assert cell["seeds"] == (1 if spec in row.one_seed else row.seeds or suite.seeds)
            for key in ("mean_test_accuracy", "min_test_accuracy", "max_test_accuracy", "ensemble_test_accuracy",
                        "mean_validation_accuracy"):
                assert 0.0 <= cell[key]["mean"] <= 1.0, (row.name, spec, key)
            if spec.split(":")[0].split("@")[0] in EXCHANGING:
                assert cell["bytes_sent_per_region"] > 0 and cell["bytes_received_per_region"] > 0, spec
                assert 0 < cell["bytes_sent_per_exchange"] < cell["bytes_sent_per_region"], spec
            else:
                assert spec in NO_WIRE and cell["bytes_sent_per_region"] == 0 == cell["bytes_received_per_region"], spec
            assert cell["wall_seconds"]["mean"] > 0 and cell["cpu_seconds_per_region"] > 0
    skew = doc["rows"]["dirichlet-0.3"]
    assert skew["independent"]["error_vs_independent"] == pytest.approx(1.0)
    assert skew["centralized"]["gap_closed"] == pytest.approx(1.0)
    # selftrain distils from its own rounds: codistill's schedule of rounds, no bytes.
    assert skew["selftrain"]["exchanges_per_region"] == skew["codistill:attention"]["exchanges_per_region"] > 0
    # Centralized pools every slice, so the partition cannot change it: one computation serves both rows.
    assert doc["rows"]["iid"]["centralized"]["mean_test_accuracy"] == skew["centralized"]["mean_test_accuracy"]
    # The same cell through Ray + gRPC: identical accuracy and bytes (sync mode is deterministic).
    (agree,) = doc["transport_agreement"]
    assert agree["grpc_accuracy"] == agree["inprocess_accuracy"] and agree["grpc_bytes"] == agree["inprocess_bytes"]
    assert agree["overhead_ratio"] > 0
    grpc = skew["codistill:attention@grpc"]
    assert grpc["peak_rss_bytes_per_process"] > 50 * 2**20 and grpc["peak_rss_bytes_total"] >= 3 * grpc["peak_rss_bytes_per_process"] / 2
    omit = doc["rows"]["omit-class-1"]["codistill:attention"]
    assert {"hidden_recall_blind", "hidden_recall_seeing"} <= set(omit)
    (lie,) = [x for x in doc["lying"] if x["spec"] == "codistill:median"]
    assert lie["reference"] == "iid" and 0 <= lie["honest_accuracy"] <= 1
    # Paired comparisons of the headline strategy, on the rows with two seeds.
    pairs = {(d["row"], d["b"]) for d in doc["comparisons"]}
    assert {("dirichlet-0.3", s) for s in ("independent", "centralized", "fedavg", "selftrain")} <= pairs
    assert all(d["low"] <= d["mean"] <= d["high"] and d["n"] == 2 for d in doc["comparisons"])
    # Every target the suite names is judged on the declared headline strategy, with a measured value.
    names = {t["name"] for t in doc["targets"]}
    for expected in ("iid: gap closed", "Overhead of Ray + gRPC", "Staleness at equal bytes (sync)",
                     "Staleness at equal bytes (async)", "Robust to lies", "Peers, not the extra compute (dirichlet-0.3)"):
        assert expected in names
    assert all(t["measured"] and t["met"] in (True, False) for t in doc["targets"])

    text = report.read_text()
    assert "## Targets" in text and "## Paired comparisons" in text and text.count("| codistill:attention |") >= 4
    for plot in ("accuracy", "accuracy_vs_steps", "error_reduction_vs_regions", "hidden_class_recall",
                 "bytes_vs_accuracy", "accuracy_vs_staleness", "attention_heatmap"):
        png = report.parent / "plots" / f"{plot}.png"
        assert png.stat().st_size > 10_000, plot
        assert f"(plots/{plot}.png)" in text

    # An interrupted suite recomputes only what is missing, and a recomputed cell gives the same figures.
    cells = doc_cells(out)
    victim = next(p for p in cells if json.loads(p.read_text())["spec"] == "codistill:attention"
                  and json.loads(p.read_text())["row"] == "dirichlet-0.3" and json.loads(p.read_text())["seed"] == 1)
    victim.unlink()
    again = bench(str(SMOKE), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "dirichlet-0.3 codistill:attention seed 1: mean validation" in again.stdout
    assert victim.is_file() and len(doc_cells(out)) == len(cells)
    assert again.stdout.count(": cached") == doc["cells"] - 1
    redone = json.loads((out / "bench.json").read_text())
    assert figures(redone["rows"]["dirichlet-0.3"]) == figures(doc["rows"]["dirichlet-0.3"])

    # A cell computed by other code is never reused, and never reported beside this code's cells.
    stale = victim.with_name(victim.name.rsplit("-", 1)[0] + "-0123456789abcdef.json")
    stale.write_text(json.dumps({**json.loads(victim.read_text()), "code_version": "0123456789abcdef", "mean_test_accuracy": 0.0}))
    rerun = bench(str(SMOKE), "--out", str(out), cwd=tmp_path)
    assert rerun.returncode == 0 and "not run yet" not in rerun.stdout
    assert json.loads((out / "bench.json").read_text())["rows"]["dirichlet-0.3"]["codistill:attention"]["mean_test_accuracy"] == \
        doc["rows"]["dirichlet-0.3"]["codistill:attention"]["mean_test_accuracy"]
    mixed = bench(str(SMOKE), "--out", str(out), "--cached-only", cwd=tmp_path)  # the stale file is the newest
    assert mixed.returncode == 2 and "code versions" in mixed.stdout + mixed.stderr, mixed.stdout + mixed.stderr
    assert "Traceback" not in mixed.stdout + mixed.stderr


def test_tuning_suite_chooses_on_validation_and_never_shows_test(tmp_path):
    out, report = tmp_path / "tune", tmp_path / "TUNING.md"
    res = bench(str(SMOKE_TUNE), "--out", str(out), "--report", str(report), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "bench.json").read_text())
    # A learning rate of 1e-5 cannot learn in 60 steps: validation must reject it.
    assert doc["choices"]["independent"]["chosen"] == "lr 0.003"
    cells = [json.loads(p.read_text()) for p in doc_cells(out)]
    for group, choice in doc["choices"].items():
        scores = {c["label"]: c["validation_accuracy"] for c in choice["candidates"]}
        assert choice["chosen"] == max(scores, key=scores.get)
    # The rule group averages a clean and a lying row, the latter over honest regions only.
    rule = {c["label"]: c["validation_accuracy"] for c in doc["choices"]["rule"]["candidates"]}
    clean = next(c for c in cells if c["row"] == "rules-clean" and c["spec"] == "codistill:median")
    lying = next(c for c in cells if c["row"] == "rules-lying" and c["spec"] == "codistill:median")
    honest = [r["validation_accuracy"] for r in lying["regions"] if r["id"] != 2]
    assert rule["codistill:median"] == pytest.approx((clean["mean_validation_accuracy"] + sum(honest) / len(honest)) / 2)
    text = report.read_text()
    assert "Chosen: **lr 0.003**" in text
    shown = {f"{100 * x['validation_accuracy']:.2f}" for g in doc["choices"].values() for x in g["candidates"]}
    for c in cells:  # no test figure appears in the tuning report (unless it equals a validation one)
        test = f"{100 * c['mean_test_accuracy']:.2f}"
        assert test not in text or test in shown, test


def test_bad_suite_is_one_line_exit_2(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: x\nrows:\n  - {name: r, strategies: [codistill:vote]}\n")
    res = bench(str(suite), cwd=tmp_path)
    assert res.returncode == 2 and "consensus.rule" in res.stdout, res.stdout + res.stderr
