"""The benchmark report's PNG plots, drawn from aggregated rows and raw cells.

Each function writes one file into `folder` and returns its path, or None
when the suite lacks the rows the plot needs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402

MiB = 2**20


def _color(spec: str) -> str:
    palette = {
        "independent": "tab:orange", "centralized": "tab:green", "fedavg": "tab:red",
        "codistill:mean": "tab:gray", "codistill:attention": "tab:blue", "codistill:confidence": "tab:pink",
        "codistill:median": "tab:brown", "codistill:trimmed_mean": "tab:olive", "codistill:robust_attention": "tab:purple",
        "codistill:screened_mean": "tab:cyan", "selftrain": "black",
    }
    return palette.get(spec.split("@")[0], "tab:cyan")


def _log_x(ax, ticks: list[float]) -> None:
    """Log x axis labelled only at `ticks`, in plain numbers."""
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_steps(cells: list[dict], row: str, folder: Path) -> Path | None:
    """Mean region accuracy at each evaluation, averaged over seeds; centralized's steps are divided by N."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        if c["row"] != row or "@" in c["spec"]:
            continue
        n = c["config"]["regions"]["count"] if c["strategy"] == "centralized" else 1
        by_step: dict[int, list[float]] = defaultdict(list)
        for r in c["regions"]:
            for step, acc in r.get("curve", []):
                by_step[int(step) // n].append(acc)
        for step, accs in by_step.items():
            curves[c["spec"]][step].append(float(np.mean(accs)))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for spec, points in sorted(curves.items()):
        steps = sorted(points)
        ax.plot(steps, [100 * np.mean(points[s]) for s in steps], marker=".", label=spec, color=_color(spec),
                linestyle="--" if not spec.startswith("codistill") else "-")
    ax.set(xlabel="training steps per region (centralized: steps / N)", ylabel="mean region test accuracy (%)",
           title=f"Accuracy during training: {row}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder / "accuracy_vs_steps.png")


def _sweep(doc: dict, name: str) -> list[tuple[float, str]]:
    return sorted((info["value"], row) for row, info in doc["row_info"].items() if info.get("sweep") == name and row in doc["rows"])


def error_reduction_vs_regions(doc: dict, spec: str, folder: Path) -> Path | None:
    points = [(v, doc["rows"][r]) for v, r in _sweep(doc, "regions") if {spec, "independent"} <= set(doc["rows"][r])]
    if len(points) < 2:
        return None
    ns = [v for v, _ in points]
    reduction = [100 * (1 - a[spec]["error_vs_independent"]) for _, a in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(ns, reduction, marker="o", color=_color(spec))
    left.set(xlabel="regions N (same data, split N ways)", ylabel="error reduction vs independent (%)",
             title=f"{spec}: error reduction vs N")
    _log_x(left, ns)
    for label, key in (("independent", "independent"), (spec, spec)):
        right.plot(ns, [100 * a[key]["mean_test_accuracy"]["mean"] for _, a in points], marker="o", label=label, color=_color(key))
    right.set(xlabel="regions N", ylabel="mean region test accuracy (%)", title="Accuracy vs N")
    _log_x(right, ns)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, folder / "error_reduction_vs_regions.png")


def hidden_class_recall(doc: dict, row: str, folder: Path) -> Path | None:
    specs = [s for s, a in doc["rows"].get(row, {}).items() if "hidden_recall_blind" in a and "@" not in s]
    if not specs:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(specs))
    for k, (key, label) in enumerate((("hidden_recall_blind", "regions that never saw it labelled"), ("hidden_recall_seeing", "regions that did"))):
        vals = [100 * doc["rows"][row][s][key]["mean"] for s in specs]
        errs = [100 * doc["rows"][row][s][key]["std"] for s in specs]
        ax.bar(x + (k - 0.5) * 0.4, vals, 0.4, yerr=errs, label=label)
    ax.set_xticks(x, specs, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="recall on the hidden class (%)", title=f"Hidden-class recall: {row}", ylim=(0, 100))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, folder / "hidden_class_recall.png")


def bytes_vs_accuracy(doc: dict, row: str, folder: Path) -> Path | None:
    r = doc["rows"].get(row, {})
    points = [(s, a) for s, a in r.items() if a["bytes_sent_per_region"] > 0 and "@" not in s]
    sweep = [(v, doc["rows"][name]) for v, name in _sweep(doc, "staleness-sync")]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for s, a in points:
        ax.scatter(a["bytes_sent_per_region"] / MiB, 100 * a["mean_test_accuracy"]["mean"], color=_color(s), s=50, label=s)
    for value, srow in sweep:
        for s, a in srow.items():
            ax.scatter(a["bytes_sent_per_region"] / MiB, 100 * a["mean_test_accuracy"]["mean"], color=_color(s), marker="^", s=40)
            ax.annotate(f"every {value:g}", (a["bytes_sent_per_region"] / MiB, 100 * a["mean_test_accuracy"]["mean"]),
                        fontsize=7, xytext=(4, -8), textcoords="offset points")
    if "independent" in r:
        ax.axhline(100 * r["independent"]["mean_test_accuracy"]["mean"], color=_color("independent"), linestyle="--",
                   label="independent (0 bytes)")
    ax.set(xscale="log", xlabel="MiB sent per region over the run (log)", ylabel="mean region test accuracy (%)",
           title=f"Bytes on the wire vs accuracy: {row}\n(triangles: the sync staleness sweep, other exchange intervals at equal bytes)")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, folder / "bytes_vs_accuracy.png")


def accuracy_vs_staleness(doc: dict, folder: Path) -> Path | None:
    """One line per exchange mode (and strategy) over the equal-bytes interval sweeps."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    values: set[float] = set()
    for mode in ("sync", "async"):
        for value, row in _sweep(doc, f"staleness-{mode}"):
            values.add(value)
            for s, a in doc["rows"][row].items():
                series[f"{s} ({mode})"].append((value, 100 * a["mean_test_accuracy"]["mean"]))
    if len(values) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s, color=_color(s.split(" ")[0]),
                linestyle="--" if s.endswith("(async)") else "-")
    ax.set(xlabel="steps between exchanges (same transfer examples sent in total)", ylabel="mean region test accuracy (%)",
           title="Accuracy vs exchange interval, at equal bytes")
    _log_x(ax, sorted(values))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, folder / "accuracy_vs_staleness.png")


def attention_heatmaps(cells: list[dict], row: str, specs: list[str], folder: Path) -> Path | None:
    """Mean consensus weight each region gave each peer; liars' columns are marked."""
    chosen = [c for s in specs for c in cells if c["row"] == row and c["spec"] == s and c["seed"] == 0]
    chosen = [c for c in chosen if any(r.get("peer_weights") for r in c["regions"])]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen), 4.4), squeeze=False)
    liars = chosen[0]["config"]["chaos"]["liars"]
    for ax, c in zip(axes[0], chosen):
        n = len(c["regions"])
        m = np.full((n, n), np.nan)
        for r in c["regions"]:
            for peer, w in r.get("peer_weights", {}).items():
                m[r["id"], int(peer)] = w
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(0.3, float(np.nanmax(m))))
        ax.set(xlabel="peer", ylabel="region", title=c["spec"])
        ax.set_xticks(range(n), [f"{i}{'*' if i in liars else ''}" for i in range(n)], fontsize=7)
        ax.set_yticks(range(n), range(n), fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Mean consensus weight per peer: {row}" + (f" (* = lying peer)" if liars else ""))
    return _save(fig, folder / "attention_heatmap.png")


def accuracy_by_row(doc: dict, folder: Path) -> Path:
    rows = [r for r in doc["rows"] if any("@" not in s for s in doc["rows"][r])]
    specs = sorted({s for r in rows for s in doc["rows"][r] if "@" not in s})
    fig, ax = plt.subplots(figsize=(min(18, max(8, 1.2 * len(rows))), 5))
    width = 0.8 / max(1, len(specs))
    for k, spec in enumerate(specs):
        xs = [i + k * width for i, row in enumerate(rows) if spec in doc["rows"][row]]
        cells = [doc["rows"][row][spec] for row in rows if spec in doc["rows"][row]]
        ax.bar(xs, [100 * a["mean_test_accuracy"]["mean"] for a in cells], width,
               yerr=[100 * a["mean_test_accuracy"]["std"] for a in cells], label=spec, color=_color(spec))
    ax.set_xticks([i + width * (len(specs) - 1) / 2 for i in range(len(rows))], rows, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="mean region test accuracy (%)", ylim=(0, 100), title=f"Accuracy per row and strategy: {doc['suite']}")
    ax.legend(fontsize=7, ncol=5, loc="lower left")
    return _save(fig, folder / "accuracy.png")


def accuracy_against_bytes(doc: dict, cells: list[dict], folder: Path) -> Path | None:
    """Both strategies' byte sweeps: one line per sweep (codistill per encoding, fedavg per treatment)."""
    from codistill.report import budget

    pts = budget.points(doc, cells)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    sweeps: dict[str, list] = defaultdict(list)
    for p in pts:
        sweeps[p.sweep].append(p)
    markers = iter("osD^vP*X")
    for sweep, members in sorted(sweeps.items()):
        members.sort(key=lambda p: p.bytes_sent)
        family = members[0].family
        x = [p.bytes_sent / MiB for p in members]
        y = [100 * p.test_mean for p in members]
        err = [100 * p.test_std for p in members]
        color = _color("fedavg") if family == budget.FEDAVG else None
        name = sweep[len(budget.PREFIX):]
        ax.errorbar(x, y, yerr=err, marker=next(markers, "o"), capsize=3, color=color, label=name,
                    linestyle="--" if family == budget.FEDAVG else "-")
        for p in members:
            ax.annotate(p.label.split(", ")[-1], (p.bytes_sent / MiB, 100 * p.test_mean), fontsize=6, xytext=(4, 4), textcoords="offset points")
    refs = next((doc["rows"][r] for r in doc["rows"] if {"independent", "centralized"} & set(doc["rows"][r])), {})
    for spec in ("independent", "centralized"):
        if spec in refs:
            ax.axhline(100 * refs[spec]["mean_test_accuracy"]["mean"], color=_color(spec), linestyle=":", label=f"{spec} (reference)")
    ax.set(xscale="log", xlabel="MiB sent per region over the run (log)", ylabel="mean region test accuracy (%)",
           title="Accuracy against bytes: codistill (solid, per encoding) vs fedavg (dashed)\n(± over seeds; labels: examples a round / averaging interval)")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, folder / "accuracy_against_bytes.png")
