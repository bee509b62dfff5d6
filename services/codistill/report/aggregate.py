"""Aggregates bench cells into per-row figures, makes the tuning choices, and checks the targets.

Pure functions over the cell summaries that `codistill bench` caches; the
targets live in `targets`, the Markdown in `markdown` and the plots in `suite_plots`.

What is read where: tuning groups choose on the validation split only; the
targets judge the suite's pre-declared `headline` strategy (never a pick on
test figures), and "A beats B" claims are paired per-seed differences whose
95% interval excludes 0 (`stats`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codistill.errors import MixedVersions
from codistill.report.stats import paired_difference, spread

MiB = 2**20
KiB = 2**10
_stat = spread


# ------------------------------------------------------------------ aggregation

def _per_region(cell: dict, key: str) -> float:
    return float(np.mean([r[key] for r in cell["regions"]]))


def _per_exchange(cell: dict, key: str) -> float:
    """Mean over exchanging regions of bytes per exchange; 0 when nothing was exchanged."""
    values = [r[key] / r["exchanges"] for r in cell["regions"] if r.get("exchanges")]
    return float(np.mean(values)) if values else 0.0


def honest_accuracy(cell: dict, liars: list[int]) -> float:
    """Mean test accuracy of the regions not in `liars`."""
    return float(np.mean([r["test_accuracy"] for r in cell["regions"] if r["id"] not in liars]))


def aggregate_cells(cells: list[dict]) -> dict[str, Any]:
    """Figures of one (row, strategy) over its seeds."""
    extra_keys = sorted({k for c in cells for k in c.get("extras", {})})
    distributed = cells[0]["transport"] == "grpc"
    rss = [[r["peak_rss_bytes"] for r in c["regions"]] for c in cells]
    return {
        "seeds": len(cells),
        "transport": cells[0]["transport"],
        "regions": len(cells[0]["regions"]),
        "mean_test_accuracy": _stat([c["mean_test_accuracy"] for c in cells]),
        "min_test_accuracy": _stat([c["min_test_accuracy"] for c in cells]),
        "max_test_accuracy": _stat([c["max_test_accuracy"] for c in cells]),
        "ensemble_test_accuracy": _stat([c["ensemble_test_accuracy"] for c in cells]),
        "mean_validation_accuracy": _stat([c.get("mean_validation_accuracy", float("nan")) for c in cells]),
        "cpu_seconds_per_region": float(np.mean([_per_region(c, "cpu_seconds") if "cpu_seconds" in c["regions"][0] else float("nan") for c in cells])),
        "bytes_sent_per_region": float(np.mean([_per_region(c, "bytes_sent") for c in cells])),
        "bytes_received_per_region": float(np.mean([_per_region(c, "bytes_received") for c in cells])),
        "bytes_sent_per_exchange": float(np.mean([_per_exchange(c, "bytes_sent") for c in cells])),
        "bytes_received_per_exchange": float(np.mean([_per_exchange(c, "bytes_received") for c in cells])),
        "exchanges_per_region": float(np.mean([_per_region(c, "exchanges") for c in cells])),
        "wall_seconds": _stat([c["wall_seconds"] for c in cells]),
        "exchange_seconds_per_region": float(np.mean([_per_region(c, "exchange_seconds") for c in cells])),
        "train_seconds_per_region": float(np.mean([_per_region(c, "train_seconds") for c in cells])),
        **_peak_memory(cells, rss, distributed),
        **{k: _stat([c["extras"][k] for c in cells if k in c.get("extras", {})]) for k in extra_keys},
    }


def _peak_memory(cells: list[dict], rss: list[list[int]], distributed: bool) -> dict[str, float | None]:
    """Peak memory of a (row, strategy): the run's sampled total and per-region peak where cells carry them
    (every process the run started, shared pages counted once under PSS), else the sum of the regions' own
    process peaks, which only means something where each region had its own process (Ray, one per process)."""
    if all(c.get("peak_total_resident_bytes") for c in cells):
        region = [c.get("peak_region_resident_bytes") for c in cells]
        return {
            "peak_rss_bytes_total": float(np.max([c["peak_total_resident_bytes"] for c in cells])),
            "peak_rss_bytes_per_process": float(np.max(region)) if all(region) else None,
        }
    return {
        "peak_rss_bytes_per_process": float(np.max([max(r) for r in rss])) if distributed else None,
        "peak_rss_bytes_total": float(np.max([sum(r) for r in rss])) if distributed else None,
    }


def relative_figures(row: dict[str, dict]) -> None:
    """Adds error relative to independent, and the share of the independent->centralized gap closed."""
    indep = row.get("independent", {}).get("mean_test_accuracy", {}).get("mean")
    central = row.get("centralized", {}).get("mean_test_accuracy", {}).get("mean")
    for a in row.values():
        acc = a["mean_test_accuracy"]["mean"]
        if indep is not None and indep < 1:
            a["error_vs_independent"] = (1 - acc) / (1 - indep)
        if indep is not None and central is not None and central > indep:
            a["gap_closed"] = (acc - indep) / (central - indep)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def aggregate(suite, suite_file: str, cells: list[dict]) -> dict[str, Any]:
    versions = sorted({c.get("code_version", "unknown") for c in cells})
    if len(versions) > 1:
        raise MixedVersions(f"cells come from {len(versions)} code versions ({', '.join(versions)}); rerun the suite")
    rows: dict[str, dict[str, Any]] = {}
    for row in suite.rows:
        by_spec = {spec: [c for c in cells if c["row"] == row.name and c["spec"] == spec] for spec in row.strategies}
        rows[row.name] = {spec: aggregate_cells(group) for spec, group in by_spec.items() if group}
        relative_figures(rows[row.name])
    doc = {
        "suite": suite.name,
        "suite_file": suite_file,
        "headline": suite.headline,
        "rows": rows,
        "row_info": {r.name: {"sweep": r.sweep, "value": r.value, "set": r.set, "group": r.group} for r in suite.rows},
        "target_rows": dict(suite.targets),
        "machine": machine(),
        "cells": len(cells),
        "code_version": versions[0] if versions else None,
        "suite_seconds": float(sum(c["wall_seconds"] for c in cells)),
    }
    doc["transport_agreement"] = transport_agreement(cells)
    doc["lying"] = lying_losses(suite, cells)
    doc["choices"] = tuning_choices(suite, cells)
    doc["comparisons"] = [c.to_json() for c in comparisons(suite, cells)]
    from codistill.report.targets import evaluate_targets

    doc["targets"] = [t.__dict__ for t in evaluate_targets(doc)]
    return doc


# ----------------------------------------------------------------- choices
def validation_score(cell: dict) -> float:
    """What a choice reads: validation accuracy, of the honest regions where some lie."""
    return cell.get("extras", {}).get("honest_mean_validation_accuracy", cell.get("mean_validation_accuracy", float("nan")))


def tuning_choices(suite, cells: list[dict]) -> dict[str, dict[str, Any]]:
    """Per tuning group: every candidate's mean validation score and the chosen (highest) one.

    A candidate is a row's label (one setting per row), a strategy spec (rows
    without a label), or both (labelled rows of several strategies); its score
    averages its cells over seeds and over the group's rows that share it.
    """
    out: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(r.group for r in suite.rows if r.group):
        scores: dict[str, list[float]] = {}
        sent: dict[str, list[float]] = {}
        settings: dict[str, dict] = {}
        for row in (r for r in suite.rows if r.group == group):
            several = len(row.strategies) > 1
            for spec in row.strategies:
                label = f"{spec}, {row.label}" if row.label and several else row.label or spec
                mine = [c for c in cells if c["row"] == row.name and c["spec"] == spec]
                if mine:
                    scores.setdefault(label, []).append(float(np.mean([validation_score(c) for c in mine])))
                    sent.setdefault(label, []).extend(_per_region(c, "bytes_sent") for c in mine)
                    # The setting a candidate stands for; a row's liars are the test bed, not a setting.
                    settings[label] = {k: v for k, v in row.set.items() if not k.startswith("chaos.")} if row.label else {}
                    if several:
                        settings[label]["strategy"] = spec
        if not scores:
            continue
        means = {label: float(np.mean(v)) for label, v in scores.items()}
        chosen = max(means, key=means.get)
        out[group] = {
            "chosen": chosen,
            "settings": settings[chosen],
            "candidates": [
                {"label": k, "validation_accuracy": v, "bytes_sent_per_region": float(np.mean(sent[k])), "settings": settings[k]}
                for k, v in means.items()
            ],
        }
    return out


# ------------------------------------------------------------- comparisons
def _per_seed(cells: list[dict], row: str, spec: str) -> dict[int, float]:
    return {c["seed"]: c["mean_test_accuracy"] for c in cells if c["row"] == row and c["spec"] == spec}


def comparisons(suite, cells: list[dict]) -> list:
    """The headline strategy against every other strategy of each row, paired by seed."""
    if not suite.headline:
        return []
    out = []
    for row in suite.rows:
        if suite.headline not in row.strategies:
            continue
        mine = _per_seed(cells, row.name, suite.headline)
        for other in (s for s in row.strategies if s != suite.headline and "@" not in s):
            theirs = _per_seed(cells, row.name, other)
            seeds = sorted(set(mine) & set(theirs))
            if len(seeds) >= 2:
                d = paired_difference(suite.headline, other, [mine[s] for s in seeds], [theirs[s] for s in seeds])
                out.append(_RowComparison(row.name, d))
    return out


@dataclass(frozen=True)
class _RowComparison:
    row: str
    difference: Any  # stats.PairedDifference

    def to_json(self) -> dict:
        return {"row": self.row, **self.difference.to_json()}


def transport_agreement(cells: list[dict]) -> list[dict[str, Any]]:
    """Each Ray+gRPC cell next to the in-process cell of the same row, rule and seed."""
    index = {(c["row"], c["spec"], c["seed"]): c for c in cells}
    out = []
    for c in cells:
        if not c["spec"].endswith("@grpc"):
            continue
        twin = index.get((c["row"], c["spec"].rsplit("@", 1)[0], c["seed"]))
        if twin is None or twin["transport"] != "inprocess":
            continue
        out.append(
            {
                "row": c["row"],
                "spec": c["spec"],
                "seed": c["seed"],
                "inprocess_accuracy": twin["mean_test_accuracy"],
                "grpc_accuracy": c["mean_test_accuracy"],
                "max_region_difference": float(
                    max(abs(a["test_accuracy"] - b["test_accuracy"]) for a, b in zip(c["regions"], twin["regions"]))
                ),
                "inprocess_bytes": int(twin["bytes_sent"]),
                "grpc_bytes": int(c["bytes_sent"]),
                "inprocess_wall_seconds": twin["wall_seconds"],
                "grpc_wall_seconds": c["wall_seconds"],
                "overhead_ratio": c["wall_seconds"] / twin["wall_seconds"],
            }
        )
    return out


def lying_losses(suite, cells: list[dict]) -> list[dict[str, Any]]:
    """For each row with liars: the honest regions' accuracy, with and without the lies, per rule.

    The no-lie reference is the same rule on the row with the same settings
    minus the liars (first seed), read on the same honest regions.
    """
    out = []
    for row in suite.rows:
        liars = row.set.get("chaos.liars")
        if not liars:
            continue
        clean_set = {k: v for k, v in row.set.items() if k != "chaos.liars"}
        reference = next((r for r in suite.rows if r.set == clean_set), None)
        for spec in row.strategies:
            lied = [c for c in cells if c["row"] == row.name and c["spec"] == spec and c["seed"] == 0]
            clean = [c for c in cells if reference and c["row"] == reference.name and c["spec"] == spec and c["seed"] == 0]
            if lied and clean:
                with_lies, without = honest_accuracy(lied[0], liars), honest_accuracy(clean[0], liars)
                out.append(
                    {"row": row.name, "reference": reference.name, "spec": spec, "liars": liars,
                     "honest_accuracy": with_lies, "honest_accuracy_without_lies": without, "loss": without - with_lies}
                )
    return out
