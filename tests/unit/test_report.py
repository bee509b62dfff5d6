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


@pytest.mark.parametrize("regions,compare", [(2, ["independent"]), (20, [])])
def test_every_panel_has_data_for_2_and_20_regions(tiny_cfg, tmp_path, regions, compare):
    from codistill.report.run_plots import convergence_panels, load_records

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.regions.count = regions
    cfg.data.synthetic_samples = 3000
    cfg.data.partition.kind = "iid"
    driver.run(cfg, tmp_path, compare=compare)
    panels = convergence_panels(load_records(tmp_path))
    assert len(panels) == 4  # accuracy, disagreement, KL, agreement: codistill has data for each
    for panel in panels:
        assert panel.lines and all(len(points) >= 2 for _, _, points, _ in panel.lines), panel.title
    report(tmp_path)


def test_a_run_without_distillation_draws_no_empty_panel(tiny_cfg, tmp_path):
    from codistill.report.run_plots import convergence_panels, load_records

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.strategy = "independent"
    driver.run(cfg, tmp_path)
    titles = [p.title for p in convergence_panels(load_records(tmp_path))]
    assert titles == ["test accuracy per region", "disagreement between regions (transfer-set probe)"]
    assert [p.name for p in report(tmp_path)] == ["convergence.png", "accuracy.png"]


def test_an_omit_run_plots_the_hidden_class_for_blind_and_seeing_regions(tiny_cfg, tmp_path):
    from codistill.report.summaries import hidden_class_recall

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.data.partition.kind = "omit"
    cfg.data.partition.omit_classes = [1]
    doc = driver.run(cfg, tmp_path, compare=["independent"])
    recall = hidden_class_recall(doc)
    # Region 0 (the first half of 3) never sees class 1 labelled: alone it cannot recall it.
    assert recall["independent"]["blind"] == doc["compare"]["independent"]["regions"][0]["per_class_recall"][1] == 0.0
    assert recall["codistill"]["blind"] > 0.3 and set(recall["codistill"]) == {"blind", "seeing"}
    assert (tmp_path / "plots" / "hidden_class.png").is_file() is False
    assert [p.name for p in report(tmp_path)][-1] == "hidden_class.png"
