import json

import pytest

from codistill.launch import driver
from codistill.report import ReportError, report


def test_report_writes_plots_from_a_run(tiny_cfg, tmp_path):
    driver.run(tiny_cfg, tmp_path, compare=["independent"])
    paths = report(tmp_path)
    assert [p.name for p in paths] == ["convergence.png", "accuracy.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    runs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    run_level = [r for r in runs if r["kind"] == "run" and r["strategy"] == "codistill"]
    assert run_level and all(0 <= r["disagreement"] <= 1 for r in run_level)
    # Evaluations are reported at the steps they happened.
    assert [r["step"] for r in run_level][:3] == [20, 40, 60]


def test_report_on_a_folder_without_metrics(tmp_path):
    with pytest.raises(ReportError, match="metrics.jsonl not found"):
        report(tmp_path)


def test_convergence_can_end_the_run_early(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.steps = 400
    cfg.train.eval_every = 10
    cfg.monitor.disagreement_threshold = 0.5
    cfg.monitor.patience = 2
    cfg.monitor.stop_when_converged = True
    doc = driver.run(cfg, tmp_path)
    assert all(r["steps"] < 400 for r in doc["regions"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "run" and r["converged"] for r in records)
