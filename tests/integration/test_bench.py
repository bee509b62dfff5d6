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
    res = bench(str(SMOKE), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "bench.json").read_text())
    suite = load_suite(SMOKE)
    assert set(doc["rows"]) == {row.name for row in suite.rows}
    for row in suite.rows:
        cells = doc["rows"][row.name]
        assert set(cells) == set(row.strategies)  # every strategy present
        for spec, cell in cells.items():
            for key in ("mean_test_accuracy", "min_test_accuracy", "max_test_accuracy", "ensemble_test_accuracy"):
                assert 0.0 <= cell[key]["mean"] <= 1.0, (row.name, spec, key)
            if spec.split(":")[0] in EXCHANGING:
                assert cell["bytes_sent_per_region"] > 0 and cell["bytes_received_per_region"] > 0, spec
            else:
                assert cell["bytes_sent_per_region"] == 0 and cell["bytes_received_per_region"] == 0, spec
    assert (out / "report.md").read_text().count("| codistill:attention |") == 2
    lying = doc["rows"]["omit-class-1-lying"]["codistill:median"]
    assert 0 <= lying["honest_mean_test_accuracy"]["mean"] <= 1
    assert {"hidden_recall_blind", "hidden_recall_seeing"} <= set(lying)
    assert lying["peak_rss_bytes"] > 0
    assert (out / "plots" / "accuracy.png").stat().st_size > 10_000

    # Interrupted or repeated suites reuse finished cells.
    again = bench(str(SMOKE), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count(": cached") == 10
    assert json.loads((out / "bench.json").read_text())["rows"] == doc["rows"]


def test_bad_suite_is_one_line_exit_2(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: x\nrows:\n  - {name: r, strategies: [codistill:vote]}\n")
    res = bench(str(suite), cwd=tmp_path)
    assert res.returncode == 2 and "consensus.rule" in res.stdout, res.stdout + res.stderr
