"""`codistill report RUN_DIR`: convergence plots from a run's metrics.jsonl.

Writes PNGs into RUN_DIR/plots/: convergence.png (accuracy, disagreement,
KL to consensus and agreement over steps, each panel only where the run has
data for it), accuracy.png (final per-region test accuracy per strategy) and,
for an `omit` run, hidden_class.png (recall on the hidden classes of regions
that never saw them labelled and of those that did: Hinton's "no 3s").
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from codistill.errors import ReportError  # noqa: E402
from codistill.report.summaries import hidden_class_recall  # noqa: E402


def load_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} not found: is {run_dir} a codistill run folder?")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ReportError(f"{path}:{n}: not a JSON record") from None
    if not records:
        raise ReportError(f"{path} holds no records")
    return records


def _series(records: list[dict], kind: str, key: str) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """strategy -> region -> [(step, value)] for records of `kind` with a value at `key`."""
    out: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("kind") == kind and r.get(key) is not None:
            out[r["strategy"]][r.get("region", -1)].append((r["step"], r[key]))
    for by_region in out.values():
        for pts in by_region.values():
            pts.sort()
    return out


STYLE = {"codistill": ("tab:blue", "-"), "independent": ("tab:orange", "--"), "centralized": ("tab:green", ":")}


def _style(strategy: str) -> tuple[str, str]:
    return STYLE.get(strategy, ("tab:gray", "-."))


@dataclass(frozen=True)
class Panel:
    """One axis of the convergence figure: labelled lines, each [(step, value)]."""

    title: str
    ylabel: str
    lines: tuple[tuple[str, str, tuple[tuple[int, float], ...], bool], ...]  # (label, strategy, points, bold)


def _mean_line(by_region: dict[int, list[tuple[int, float]]]) -> tuple[tuple[int, float], ...]:
    steps: dict[int, list[float]] = defaultdict(list)
    for pts in by_region.values():
        for step, value in pts:
            steps[step].append(value)
    return tuple((step, sum(v) / len(v)) for step, v in sorted(steps.items()))


def convergence_panels(records: list[dict]) -> list[Panel]:
    """The panels a run has data for: no empty axis, whatever the strategies or the region count.

    Per-region lines are drawn thin and the mean over regions bold, so 2 regions
    and 20 read alike.
    """
    panels = []
    lines = []
    for strategy, regions in _series(records, "eval", "test_accuracy").items():
        lines += [(strategy if i == 0 else "", strategy, tuple(pts), False) for i, (_, pts) in enumerate(sorted(regions.items()))]
    for strategy, regions in _series(records, "run", "mean_test_accuracy").items():
        lines.append((f"{strategy} (mean)", strategy, tuple(regions[-1]), True))
    if lines:
        panels.append(Panel("test accuracy per region", "accuracy", tuple(lines)))
    dis = [(s, s, tuple(r[-1]), True) for s, r in _series(records, "run", "disagreement").items() if len(r[-1])]
    if dis:
        panels.append(Panel("disagreement between regions (transfer-set probe)", "share of examples", tuple(dis)))
    for key, title in (("kl_to_consensus", "KL(consensus ‖ own), nats"), ("agreement", "argmax agreement with consensus")):
        lines = []
        for strategy, regions in _series(records, "eval", key).items():
            lines += [("", strategy, tuple(pts), False) for _, pts in sorted(regions.items())]
            lines.append((f"{strategy} (mean over regions)", strategy, _mean_line(regions), True))
        if lines:
            panels.append(Panel(title, "", tuple(lines)))
    return panels


def plot_convergence(records: list[dict], path: Path, title: str) -> Path:
    panels = convergence_panels(records)
    if not panels:
        raise ReportError("metrics.jsonl holds no evaluations to plot")
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()  # an odd panel count leaves one slot unused, not an empty axis
    for ax, panel in zip(axes.flat, panels):
        for label, strategy, pts, bold in panel.lines:
            color, ls = _style(strategy)
            ax.plot(*zip(*pts), color=color, ls=ls, lw=2.2 if bold else 0.7, alpha=1.0 if bold else 0.45, label=label or None)
        ax.set(title=panel.title, xlabel="step", ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
        if any(label for label, *_ in panel.lines):
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_hidden_class(results: dict, path: Path) -> Path | None:
    recall = hidden_class_recall(results)
    if not recall:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, (strategy, sides) in enumerate(recall.items()):
        for j, side in enumerate(("blind", "seeing")):
            if side in sides:
                ax.bar(k + (j - 0.5) * 0.38, 100 * sides[side], 0.36, color=_style(strategy)[0], alpha=1.0 if side == "seeing" else 0.55,
                       hatch="//" if side == "blind" else None, label=f"regions that {'never saw' if side == 'blind' else 'saw'} it" if k == 0 else None)
                ax.annotate(f"{100 * sides[side]:.0f}%", (k + (j - 0.5) * 0.38, 100 * sides[side]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(recall)), list(recall))
    classes = results["config"]["data"]["partition"]["omit_classes"]
    ax.set(ylabel="recall on the hidden class (%)", ylim=(0, 105), title=f"Hidden class {classes}: recall of blind and seeing regions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(results: dict, path: Path) -> Path:
    runs = results.get("compare") or {results["strategy"]: results}
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(runs)
    for k, (strategy, r) in enumerate(runs.items()):
        accs = [reg["test_accuracy"] for reg in r["regions"]]
        xs = [i + k * width for i in range(len(accs))]
        ax.bar(xs, accs, width, color=_style(strategy)[0], label=f"{strategy} (mean {r['mean_test_accuracy']:.3f})")
    ax.set(xlabel="region", ylabel="test accuracy", title="final test accuracy per region", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    results_path = run_dir / "results.json"
    name = run_dir.name
    if results_path.is_file():
        name = json.loads(results_path.read_text()).get("config", {}).get("name", name)
    paths = [plot_convergence(records, out / "convergence.png", name)]
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        paths.append(plot_accuracy(results, out / "accuracy.png"))
        hidden = plot_hidden_class(results, out / "hidden_class.png")
        if hidden is not None:
            paths.append(hidden)
    return paths
