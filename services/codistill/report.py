"""`codistill report RUN_DIR`: convergence plots from a run's metrics.jsonl.

Writes PNGs into RUN_DIR/plots/: convergence.png (accuracy, disagreement,
KL to consensus and agreement over steps) and accuracy.png (final per-region
test accuracy per strategy).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class ReportError(ValueError):
    pass


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


def plot_convergence(records: list[dict], path: Path, title: str) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    for strategy, regions in _series(records, "eval", "test_accuracy").items():
        color, ls = _style(strategy)
        for i, (region, pts) in enumerate(sorted(regions.items())):
            ax.plot(*zip(*pts), color=color, ls=ls, lw=0.8, alpha=0.5, label=strategy if i == 0 else None)
    for strategy, regions in _series(records, "run", "mean_test_accuracy").items():
        color, _ = _style(strategy)
        ax.plot(*zip(*regions[-1]), color=color, lw=2.5, label=f"{strategy} (mean)")
    ax.set(title="test accuracy per region", xlabel="step", ylabel="accuracy")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for strategy, regions in _series(records, "run", "disagreement").items():
        color, ls = _style(strategy)
        ax.plot(*zip(*regions[-1]), color=color, ls=ls, lw=2, label=strategy)
    ax.set(title="disagreement between regions (test set)", xlabel="step", ylabel="share of examples")
    ax.legend(fontsize=8)
    for ax, key, label in ((axes[1, 0], "kl_to_consensus", "KL(consensus ‖ own), nats"), (axes[1, 1], "agreement", "argmax agreement with consensus")):
        for strategy, regions in _series(records, "eval", key).items():
            color, _ = _style(strategy)
            for region, pts in sorted(regions.items()):
                ax.plot(*zip(*pts), lw=1, label=f"region {region}")
        ax.set(title=label, xlabel="step")
        if ax.lines and len(ax.lines) <= 10:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
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
        paths.append(plot_accuracy(json.loads(results_path.read_text()), out / "accuracy.png"))
    return paths
