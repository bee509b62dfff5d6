"""The scale section of the bench report, on hand-made cells whose every figure is known."""

import pytest

from codistill.report.scale import GiB, MiB, centralized_accuracy, scale_points, scale_section

ROW_INFO = {
    "scale-10": {"sweep": "scale", "value": 10},
    "scale-100": {"sweep": "scale", "value": 100},
    "scale-1000": {"sweep": "scale", "value": 1000},
    "other": {"sweep": "regions", "value": 10},
}
DOC = {"row_info": ROW_INFO}


def cell(row, spec, n, *, acc, sent=0, total=None, region=None, wall=10.0, transport="grpc", per_process=1, seed=0):
    return {
        "row": row, "spec": spec, "seed": seed, "transport": transport, "mean_test_accuracy": acc,
        "bytes_sent": sent * n, "wall_seconds": wall, "regions": [{"id": i} for i in range(n)],
        "config": {"regions": {"count": n, "per_process": per_process}},
        "peak_total_resident_bytes": total, "peak_region_resident_bytes": region, "resident_measure": "pss",
    }


CELLS = [
    cell("scale-10", "codistill:screened_mean", 10, acc=0.80, sent=300_000, total=2 * GiB, region=200 * MiB),
    cell("scale-10", "independent", 10, acc=0.70, total=2 * GiB, region=190 * MiB),
    cell("scale-10", "centralized@inprocess", 1, acc=0.88, transport="inprocess"),
    cell("scale-100", "codistill:screened_mean", 100, acc=0.74, sent=310_000, total=10 * GiB, region=60 * MiB, per_process=10, wall=90),
    cell("scale-100", "codistill:screened_mean", 100, acc=0.76, sent=290_000, total=6 * GiB, region=40 * MiB, per_process=10, wall=110, seed=1),
    cell("scale-100", "independent", 100, acc=0.60, total=7 * GiB, region=45 * MiB, per_process=10),
    cell("scale-1000", "codistill:screened_mean", 1000, acc=0.65, sent=305_000, total=4 * GiB, region=3 * MiB, transport="inprocess"),
    cell("other", "codistill:screened_mean", 10, acc=0.1, sent=1, total=1),
]


def test_points_average_seeds_and_order_by_regions():
    points = scale_points(DOC, CELLS)
    assert [(p.regions, p.spec) for p in points] == [
        (10, "codistill:screened_mean"), (10, "independent"), (100, "codistill:screened_mean"), (100, "independent"),
        (1000, "codistill:screened_mean"),
    ]  # centralized is the reference, and rows outside the sweep are left out
    p100 = points[2]
    assert p100.seeds == 2 and p100.accuracy == pytest.approx(0.75) and p100.wall_seconds == pytest.approx(100)
    assert p100.peak_total_bytes == pytest.approx(8 * GiB) and p100.peak_region_bytes == pytest.approx(50 * MiB)
    assert p100.bytes_sent_per_region == pytest.approx(300_000)
    assert p100.processes == 10 and points[0].processes == 10 and points[4].processes == 1
    assert p100.regions_per_gib == pytest.approx(100 / 8)
    assert centralized_accuracy(DOC, CELLS) == pytest.approx(0.88)


def test_section_table_figures_and_findings():
    lines = scale_section(DOC, CELLS)
    text = "\n".join(lines)
    assert "Centralized reference (pooled slices, the same for every N): 88.0%." in text
    row = next(line for line in lines if line.startswith("| 100 | codistill:screened_mean |"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    # N, strategy, transport, processes, seeds, acc, vs indep, vs central, sent, total GiB, per region MiB, wall, per GiB
    assert cols == ["100", "codistill:screened_mean", "grpc", "10", "2", "75.0", "+15.0", "-13.0", "293.0 KiB",
                    "8.00", "50", "100", "12.5"]
    indep = next(line for line in lines if line.startswith("| 100 | independent |"))
    assert [c.strip() for c in indep.strip("|").split("|")][6] == "–"
    # The budget line: a row is judged by its largest cell; N=100's is exactly 8 GiB (within).
    assert "within 8 GiB of total resident memory: N = 10, 100; over it: N = none." in text
    assert "over N = 10, 100, 1000: 293.0 KiB to 297.9 KiB (largest / smallest = 1.02)" in text
    assert "PSS" in text and "plots/" not in text  # no folder: no plot


def test_over_budget_and_plot(tmp_path):
    # Only codistill's cells of N=100 go over (independent stays at 7 GiB): the row's largest cell judges it.
    over = [{**c, "peak_total_resident_bytes": 9 * GiB} if (c["row"], c["spec"]) == ("scale-100", "codistill:screened_mean") else c
            for c in CELLS]
    lines = scale_section(DOC, over, tmp_path / "plots")
    text = "\n".join(lines)
    assert "N = 10; over it: N = 100." in text
    png = tmp_path / "plots" / "scale.png"
    assert png.stat().st_size > 10_000 and "(plots/scale.png)" in text


def test_no_scale_rows_no_section():
    assert scale_section({"row_info": {"other": {"sweep": None, "value": None}}}, CELLS) == []
