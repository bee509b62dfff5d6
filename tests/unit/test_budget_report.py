"""Accuracy against bytes: which point each side takes at a budget, and when the claim is shown or missed."""

from pathlib import Path

import pytest

from codistill.bench import Suite
from codistill.report import budget
from codistill.report.aggregate import aggregate
from codistill.report.markdown import write_report

MiB = 2**20


def cell(row, spec, seed, test, validation, sent):
    strategy = spec.split(":")[0]
    regions = [
        {"id": i, "arch": "mlp", "test_accuracy": test, "validation_accuracy": validation, "bytes_sent": sent, "bytes_received": sent,
         "exchanges": 7, "exchange_seconds": 1.0, "train_seconds": 4.0, "cpu_seconds": 3.0, "peak_rss_bytes": MiB,
         "per_class_recall": [test, test], "curve": [[10, test]], "peer_weights": {}}
        for i in range(2)
    ]
    return {
        "row": row, "spec": spec, "seed": seed, "strategy": strategy, "transport": "inprocess",
        "mean_test_accuracy": test, "min_test_accuracy": test, "max_test_accuracy": test, "ensemble_test_accuracy": test,
        "mean_validation_accuracy": validation, "bytes_sent": 2 * sent, "bytes_received": 2 * sent, "wall_seconds": 10.0,
        "regions": regions, "extras": {}, "config": {"chaos": {"liars": []}}, "code_version": "v",
    }


# (row, sweep, value, spec, bytes per region, test accuracy by seed, validation accuracy)
POINTS = [
    ("c-100", "bytes-codistill-float16", 100, "codistill:screened_mean", 0.05 * MiB, (0.70, 0.72, 0.71), 0.71),
    ("c-500", "bytes-codistill-float16", 500, "codistill:screened_mean", 0.5 * MiB, (0.80, 0.81, 0.82), 0.81),
    # best on test among cheap codistill points, but not on validation: must never be picked
    ("c-u8", "bytes-codistill-uint8", 500, "codistill:screened_mean", 0.3 * MiB, (0.90, 0.90, 0.90), 0.60),
    ("c-10k", "bytes-codistill-float16", 10000, "codistill:screened_mean", 12 * MiB, (0.84, 0.85, 0.86), 0.85),
    ("f-800", "bytes-fedavg", 800, "fedavg", 2 * MiB, (0.60, 0.61, 0.62), 0.61),
    ("f-100", "bytes-fedavg", 100, "fedavg", 16 * MiB, (0.78, 0.79, 0.80), 0.79),
    ("f-20", "bytes-fedavg", 20, "fedavg", 80 * MiB, (0.82, 0.83, 0.84), 0.83),
]


def doc_and_cells(points=POINTS):
    rows = [{"name": r, "sweep": s, "value": v, "strategies": [spec]} for r, s, v, spec, *_ in points]
    rows.append({"name": "refs", "strategies": ["independent"]})
    suite = Suite.model_validate({"name": "bytes", "headline": "codistill:screened_mean", "rows": rows})
    cells = [cell(r, spec, seed, t, val, sent) for r, _, _, spec, sent, tests, val in points for seed, t in enumerate(tests)]
    cells += [cell("refs", "independent", seed, 0.5, 0.5, 0) for seed in range(3)]
    return aggregate(suite, "bytes.yaml", cells), cells


def test_points_carry_family_label_bytes_and_per_seed_test():
    doc, cells = doc_and_cells()
    pts = {p.row: p for p in budget.points(doc, cells)}
    assert set(pts) == {r for r, *_ in POINTS}
    assert pts["c-500"].family == "codistill" and pts["c-500"].label == "float16, 500 a round"
    assert pts["f-100"].family == "fedavg" and pts["f-100"].label == "every 100 steps"
    assert pts["c-500"].bytes_sent == pytest.approx(0.5 * MiB)
    assert pts["c-500"].test == {0: 0.80, 1: 0.81, 2: 0.82}


def test_a_budget_takes_the_best_validation_point_within_it_never_the_best_test_one():
    doc, cells = doc_and_cells()
    pts = budget.points(doc, cells)
    assert budget.chosen(pts, "codistill", 1 * MiB).row == "c-500"  # c-u8 has the best test accuracy, worse validation
    assert budget.chosen(pts, "fedavg", 1 * MiB) is None
    assert budget.chosen(pts, "fedavg", 20 * MiB).row == "f-100"


def test_every_budget_is_judged_at_fedavg_points_and_paired_by_seed():
    doc, cells = doc_and_cells()
    comparisons = budget.at_every_budget(budget.points(doc, cells))
    assert [c.budget for c in comparisons] == [2 * MiB, 16 * MiB, 80 * MiB]
    at_2 = comparisons[0]
    assert (at_2.codistill.row, at_2.fedavg.row) == ("c-500", "f-800")
    assert at_2.difference.mean == pytest.approx(0.20) and at_2.difference.n == 3
    assert all(c.at_least_as_accurate for c in comparisons)


def test_the_tenth_compares_fedavgs_best_with_codistill_within_a_tenth_of_its_bytes():
    doc, cells = doc_and_cells()
    tenth = budget.at_a_tenth(budget.points(doc, cells))
    assert tenth.fedavg.row == "f-20" and tenth.budget == pytest.approx(8 * MiB)
    assert tenth.codistill.row == "c-500"  # c-10k (12 MiB) is over a tenth of 80 MiB
    assert tenth.difference.mean == pytest.approx(-0.02)
    assert not tenth.at_least_as_accurate


def test_section_says_missed_with_the_figures_or_shown(tmp_path: Path):
    doc, cells = doc_and_cells()
    text = "\n".join(budget.section(doc, cells, []))
    assert "**missed** (behind at a tenth of fedavg's best point's bytes (-2.0 points))" in text
    better = [p if p[0] != "c-500" else (*p[:5], (0.85, 0.86, 0.87), 0.86) for p in POINTS]
    doc, cells = doc_and_cells(better)
    assert "**shown**" in "\n".join(budget.section(doc, cells, []))


def test_the_report_draws_the_plot_and_prints_the_section(tmp_path: Path):
    doc, cells = doc_and_cells()
    report = write_report(doc, cells, tmp_path / "REPORT.md", "codistill bench bytes.yaml")
    text = report.read_text()
    assert "## Accuracy against bytes" in text and "plots/accuracy_against_bytes.png" in text
    assert (tmp_path / "plots" / "accuracy_against_bytes.png").stat().st_size > 10_000


def test_a_suite_without_byte_sweeps_gets_no_section():
    doc, cells = doc_and_cells([p for p in POINTS if p[3] != "fedavg"])
    assert budget.section(doc, cells, []) == []
