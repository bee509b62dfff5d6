"""`codistill bench` on the smoke suite, as CI runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codistill.bench import load_suite

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "benchmarks" / "suites" / "smoke.yaml"
EXCHANGING = ("fedavg", "codistill")
pytestmark = pytest.mark.integration


def bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "codistill", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


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
            for key in ("mean_test_accuracy", "min_test_accuracy", "max_test_accuracy", "ensemble_test_accuracy"):
                assert 0.0 <= cell[key]["mean"] <= 1.0, (row.name, spec, key)
            if spec.split(":")[0].split("@")[0] in EXCHANGING:
                assert cell["bytes_sent_per_region"] > 0 and cell["bytes_received_per_region"] > 0, spec
                assert 0 < cell["bytes_sent_per_exchange"] < cell["bytes_sent_per_region"], spec
            else:
                assert cell["bytes_sent_per_region"] == 0 and cell["bytes_received_per_region"] == 0, spec
            assert cell["wall_seconds"]["mean"] > 0 and cell["train_seconds_per_region"] > 0
    skew = doc["rows"]["dirichlet-0.3"]
    assert skew["independent"]["error_vs_independent"] == pytest.approx(1.0)
    assert skew["centralized"]["gap_closed"] == pytest.approx(1.0)
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
    # Every target the suite names is judged, with a measured value.
    names = {t["name"] for t in doc["targets"]}
    for expected in ("IID: gap closed", "Overhead of Ray + gRPC", "Staleness", "No trade-off between skew and lies"):
        assert expected in names
    assert all(t["measured"] and t["met"] in (True, False) for t in doc["targets"])

    text = report.read_text()
    assert "## Targets" in text and text.count("| codistill:attention |") >= 4
    for plot in ("accuracy", "accuracy_vs_steps", "error_reduction_vs_regions", "hidden_class_recall",
                 "bytes_vs_accuracy", "accuracy_vs_staleness", "attention_heatmap"):
        png = report.parent / "plots" / f"{plot}.png"
        assert png.stat().st_size > 10_000, plot
        assert f"(plots/{plot}.png)" in text

    # Interrupted or repeated suites reuse finished cells.
    (out / "cells" / "iid__codistill-median__seed0.json").unlink()
    again = bench(str(SMOKE), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(": cached") == len(doc_cells(out)) - 1
    assert json.loads((out / "bench.json").read_text())["rows"]["dirichlet-0.3"] == doc["rows"]["dirichlet-0.3"]


def doc_cells(out):
    return list((out / "cells").glob("*.json"))


def test_bad_suite_is_one_line_exit_2(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: x\nrows:\n  - {name: r, strategies: [codistill:vote]}\n")
    res = bench(str(suite), cwd=tmp_path)
    assert res.returncode == 2 and "consensus.rule" in res.stdout, res.stdout + res.stderr
