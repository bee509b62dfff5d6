"""The report's section on scale: what a region costs as the number of regions N grows.

Scale rows are the suite rows of sweep `scale`, each with `value: N`. Every cell's figures come from
the cells themselves (mean over seeds): accuracy, bytes sent per region, wall time, and the peak
resident memory the driver sampled (`peak_total_resident_bytes`, `peak_region_resident_bytes`, see
codistill.launch.memory). The centralized reference trains on the pooled slices, the same for every
N: the section quotes the one centralized cell it finds in any scale row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SWEEP = "scale"
GiB, MiB, KiB = 2**30, 2**20, 2**10
# The budget for a Ray + gRPC row: total resident memory on one 24 GiB machine.
BUDGET_GIB = 8.0


def _strategy(spec: str) -> str:
    return spec.split("@")[0].split(":")[0]


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass(frozen=True)
class ScalePoint:
    """One (scale row, strategy) over its seeds."""

    regions: int
    row: str
    spec: str
    transport: str
    processes: int  # processes hosting regions (1 in-process)
    seeds: int
    accuracy: float  # mean region test accuracy
    bytes_sent_per_region: float
    wall_seconds: float
    peak_total_bytes: float | None
    peak_region_bytes: float | None
    measure: str | None

    @property
    def strategy(self) -> str:
        return _strategy(self.spec)

    @property
    def regions_per_gib(self) -> float | None:
        return self.regions / (self.peak_total_bytes / GiB) if self.peak_total_bytes else None


def _processes(cell: dict) -> int:
    regions = cell["config"]["regions"]
    if cell["transport"] == "inprocess":
        return 1
    return -(-len(cell["regions"]) // int(regions.get("per_process", 1)))


def scale_points(doc: dict, cells: list[dict]) -> list[ScalePoint]:
    """Every strategy of every scale row, by N then in the row's order; centralized is left out."""
    values = {r: info["value"] for r, info in doc["row_info"].items() if info.get("sweep") == SWEEP and info.get("value") is not None}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in cells:
        if c["row"] in values and _strategy(c["spec"]) != "centralized":
            groups[(c["row"], c["spec"])].append(c)
    points = []
    for (row, spec), group in groups.items():
        first = group[0]
        points.append(ScalePoint(
            regions=int(values[row]), row=row, spec=spec, transport=first["transport"], processes=_processes(first),
            seeds=len(group), accuracy=float(np.mean([c["mean_test_accuracy"] for c in group])),
            bytes_sent_per_region=float(np.mean([c["bytes_sent"] / len(c["regions"]) for c in group])),
            wall_seconds=float(np.mean([c["wall_seconds"] for c in group])),
            peak_total_bytes=_mean([c.get("peak_total_resident_bytes") for c in group]),
            peak_region_bytes=_mean([c.get("peak_region_resident_bytes") for c in group]),
            measure=first.get("resident_measure"),
        ))
    order = {spec: i for i, spec in enumerate(dict.fromkeys(c["spec"] for c in cells))}
    return sorted(points, key=lambda p: (p.regions, p.strategy == "independent", order[p.spec]))


def centralized_accuracy(doc: dict, cells: list[dict]) -> float | None:
    """The centralized reference of the scale rows (pooled slices: one figure for every N)."""
    rows = {r for r, info in doc["row_info"].items() if info.get("sweep") == SWEEP}
    accs = [c["mean_test_accuracy"] for c in cells if c["row"] in rows and _strategy(c["spec"]) == "centralized"]
    return float(np.mean(accs)) if accs else None


def _independent(points: list[ScalePoint]) -> dict[int, float]:
    return {p.regions: p.accuracy for p in points if p.strategy == "independent"}


def _size(n: float) -> str:
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    return f"{n / KiB:.1f} KiB" if n >= KiB else f"{n:.0f} B"


def _points_diff(a: float, b: float | None) -> str:
    return "–" if b is None else f"{100 * (a - b):+.1f}"


def _table(points: list[ScalePoint], central: float | None) -> list[str]:
    indep = _independent(points)
    L = [
        "| N | strategy | transport | processes | seeds | mean acc % | vs independent | vs centralized | sent / region "
        "| peak total GiB | peak per region MiB | wall s | regions per GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        vs_indep = "–" if p.strategy == "independent" else _points_diff(p.accuracy, indep.get(p.regions))
        total = f"{p.peak_total_bytes / GiB:.2f}" if p.peak_total_bytes else "–"
        region = f"{p.peak_region_bytes / MiB:.0f}" if p.peak_region_bytes is not None else "–"
        per_gib = f"{p.regions_per_gib:.1f}" if p.regions_per_gib else "–"
        L.append(
            f"| {p.regions} | {p.spec} | {p.transport} | {p.processes} | {p.seeds} | {100 * p.accuracy:.1f} | {vs_indep} "
            f"| {_points_diff(p.accuracy, central)} | {_size(p.bytes_sent_per_region)} | {total} | {region} "
            f"| {p.wall_seconds:.0f} | {per_gib} |"
        )
    return L


def _findings(points: list[ScalePoint]) -> list[str]:
    """The two acceptance questions: Ray + gRPC rows within the budget, bytes per region flat in N."""
    L = []
    distributed = [p for p in points if p.transport == "grpc" and p.peak_total_bytes]
    if distributed:
        worst: dict[int, float] = {}  # a row is within the budget when its largest cell is
        for p in distributed:
            worst[p.regions] = max(worst.get(p.regions, 0.0), p.peak_total_bytes)
        within = [n for n in sorted(worst) if worst[n] <= BUDGET_GIB * GiB]
        over = [n for n in sorted(worst) if n not in within]
        L.append(f"- Ray + gRPC cells within {BUDGET_GIB:g} GiB of total resident memory: "
                 f"N = {', '.join(map(str, within)) or 'none'}; over it: N = {', '.join(map(str, over)) or 'none'}.")
    for name in dict.fromkeys(p.spec.split("@")[0] for p in points if p.bytes_sent_per_region > 0):
        sent = sorted((p.regions, p.bytes_sent_per_region) for p in points if p.spec.split("@")[0] == name)
        lo, hi = min(b for _, b in sent), max(b for _, b in sent)
        L.append(f"- Bytes sent per region by `{name}` over N = {', '.join(str(n) for n, _ in sent)}: "
                 f"{_size(lo)} to {_size(hi)} (largest / smallest = {f'{hi / lo:.2f}' if lo else 'unbounded'}).")
    return L


def scale_section(doc: dict, cells: list[dict], folder: Path | None = None) -> list[str]:
    """Markdown lines of the scale section (none without scale rows); with `folder`, also plots/scale.png there."""
    points = scale_points(doc, cells)
    if not points:
        return []
    central = centralized_accuracy(doc, cells)
    measure = next((p.measure for p in points if p.measure), None)
    L = [
        "## Scale: cost against the number of regions",
        "",
        "Rows of sweep `scale`: N regions under `random-k`, the same pooled data and total steps at every N (each region's "
        "slice and step count shrink as N grows, the rounds stay the same). Accuracy is the mean region test accuracy; "
        "*vs* columns are differences in points. Peak memory was sampled every 0.5 s while the cell trained, as "
        f"{(measure or 'resident memory').upper()} "
        + ("(proportional set size: shared pages split among the processes that map them, so the sum is what they occupy). "
           if measure == "pss" else "(resident set size: a page shared by several processes counts in each). ")
        + "For Ray + gRPC cells, the total counts the driver and every process it started (Ray's GCS, raylet and all "
        "workers); peak per region is the largest peak of a region-hosting process divided by the regions it hosts. For "
        "in-process cells, the total is the driver process alone and peak per region is its growth during the cell divided "
        "by N. Regions per GiB = N / peak total. Wall time is the cell's training time on this machine.",
        "",
        f"Centralized reference (pooled slices, the same for every N): "
        + (f"{100 * central:.1f}%." if central is not None else "not run."),
        "",
        *_table(points, central),
        "",
        *_findings(points),
        "",
    ]
    drawn = plot_scale(points, folder) if folder is not None else None
    if drawn is not None:
        caption = "Peak memory (total and per region) and bytes sent per region against the number of regions."
        L += [f"![{caption}](plots/{drawn.name})", "", f"*{caption}*", ""]
    return L


def plot_scale(points: list[ScalePoint], folder: Path) -> Path | None:
    """plots/scale.png: peak total GiB, peak per region MiB and bytes sent per region against N (log x)."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    folder.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        ("peak total resident, GiB", lambda p: p.peak_total_bytes / GiB if p.peak_total_bytes else None),
        ("peak per region, MiB", lambda p: p.peak_region_bytes / MiB if p.peak_region_bytes is not None else None),
        ("bytes sent per region, KiB", lambda p: p.bytes_sent_per_region / KiB),
    )
    ticks = sorted({p.regions for p in points})
    colors = {spec: f"C{i}" for i, spec in enumerate(dict.fromkeys(p.spec for p in points))}  # one per strategy, every panel
    for ax, (label, value) in zip(axes, panels):
        # One curve per strategy and transport: in one process, memory is not Ray's and is drawn apart.
        for spec, transport in dict.fromkeys((p.spec, p.transport) for p in points):
            # A strategy that sends nothing has no bytes curve worth drawing.
            xy = [(p.regions, value(p)) for p in points if (p.spec, p.transport) == (spec, transport) and value(p) is not None
                  and (ax is not axes[2] or value(p) > 0)]
            if xy:
                ax.plot(*zip(*xy), marker="o" if transport == "grpc" else "s", color=colors[spec], label=f"{spec} ({transport})")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("regions N")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.1)  # from zero: the budget line and flatness read true
        ax.grid(alpha=0.3)
    axes[0].axhline(BUDGET_GIB, color="tab:red", linestyle="--", linewidth=1, label=f"{BUDGET_GIB:g} GiB budget")
    axes[0].legend(fontsize=7)
    path = folder / "scale.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
