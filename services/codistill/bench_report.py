"""Aggregates bench cells into per-row figures, makes the tuning choices, and checks the targets.

Pure functions over the cell summaries that `codistill bench` caches; the
Markdown lives in `bench_markdown` and the plots in `bench_plots`.

What is read where: tuning groups choose on the validation split only; the
targets judge the suite's pre-declared `headline` strategy (never a pick on
test figures), and "A beats B" claims are paired per-seed differences whose
95% interval excludes 0 (`bench_stats`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codistill.bench_stats import paired_difference, spread

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
        # Measured where each region has its own process (Ray); in-process cells share the bench's
        # process, whose lifetime peak says nothing about one cell.
        "peak_rss_bytes_per_process": float(np.max([max(r) for r in rss])) if distributed else None,
        "peak_rss_bytes_total": float(np.max([sum(r) for r in rss])) if distributed else None,
        **{k: _stat([c["extras"][k] for c in cells if k in c.get("extras", {})]) for k in extra_keys},
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


class MixedVersions(ValueError):
    """Cells computed by different code: their figures cannot stand side by side."""


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
    difference: Any  # bench_stats.PairedDifference

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


# ---------------------------------------------------------------------- targets
def headline_keys(names: dict[str, str]) -> list[str]:
    """Target keys of the headline rows, one per distinct row."""
    seen, keys = set(), []
    for key in ("skew", "hardest_skew", "iid", "omit"):
        if key in names and names[key] not in seen:
            seen.add(names[key])
            keys.append(key)
    return keys


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: the suite lacks the rows to measure it


def _acc(a: dict) -> float:
    return 100 * a["mean_test_accuracy"]["mean"]


def _interval(d: dict) -> str:
    return f"{100 * d['mean']:+.1f} points, 95% CI [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}], {d['n']} seeds"


def _difference(doc: dict, row: str, other: str) -> dict | None:
    return next((d for d in doc.get("comparisons", []) if d["row"] == row and d["b"] == other), None)


def evaluate_targets(doc: dict) -> list[Target]:
    """Every target judged on the suite's pre-declared headline strategy, never on a pick by test accuracy."""
    rows, names = doc["rows"], doc["target_rows"]
    spec = doc.get("headline")
    targets: list[Target] = []
    if not spec:
        return targets

    def row(key: str) -> dict | None:
        r = rows.get(names.get(key, ""))
        return r if r and spec in r else None

    skew = row("skew")
    if skew and "independent" in skew:
        a = skew[spec]
        ratio = a["error_vs_independent"]
        targets.append(Target(
            f"{names['skew']}: error vs independent", "error ≤ 0.5 × independent's",
            f"{ratio:.2f} × ({spec}: error {100 - _acc(a):.1f}% vs {100 - _acc(skew['independent']):.1f}%)", ratio <= 0.5,
        ))
    if skew and "centralized" in skew:
        d = _difference(doc, names["skew"], "centralized")
        behind = _acc(skew["centralized"]) - _acc(skew[spec])
        targets.append(Target(
            f"{names['skew']}: distance to centralized", "within 3 points of centralized (the whole interval)",
            f"{behind:+.1f} points behind ({spec} {_acc(skew[spec]):.1f}% vs centralized {_acc(skew['centralized']):.1f}%"
            + (f"; difference {_interval(d)})" if d else ")"),
            (d["low"] >= -0.03) if d else behind <= 3,
        ))
    iid = row("iid")
    if iid and {"independent", "centralized"} <= set(iid):
        closed = iid[spec].get("gap_closed", float("nan"))
        targets.append(Target(
            f"{names['iid']}: gap closed", "≥ 45% of the independent→centralized gap",
            f"{100 * closed:.0f}% ({spec}: {_acc(iid['independent']):.1f}% → {_acc(iid[spec]):.1f}%, centralized {_acc(iid['centralized']):.1f}%)",
            closed >= 0.45,
        ))
    omit = row("omit")
    if omit and {"hidden_recall_blind", "hidden_recall_seeing"} <= set(omit[spec]):
        blind, seeing = omit[spec]["hidden_recall_blind"]["mean"], omit[spec]["hidden_recall_seeing"]["mean"]
        share = blind / seeing if seeing > 0 else float("nan")
        indep = omit.get("independent", {}).get("hidden_recall_blind", {}).get("mean")
        targets.append(Target(
            "Hidden class: recall of regions that never saw it", "≥ 85% of the recall of regions that did",
            f"{100 * share:.0f}% ({spec}: {100 * blind:.1f}% vs {100 * seeing:.1f}%"
            + (f"; independent blind regions {100 * indep:.1f}%)" if indep is not None else ")"),
            share >= 0.85,
        ))
    for key in headline_keys(names):
        r = row(key)
        if not r or "fedavg" not in r:
            continue
        a, f = r[spec], r["fedavg"]
        d = _difference(doc, names[key], "fedavg")
        share = a["bytes_sent_per_region"] / f["bytes_sent_per_region"] if f["bytes_sent_per_region"] else float("nan")
        close = (d["low"] >= -0.01) if d else _acc(a) >= _acc(f) - 1
        targets.append(Target(
            f"Against fedavg ({names[key]})", "at most 1 point behind fedavg (lower end of the interval ≥ −1) with ≤ 1/10 of its bytes",
            f"{spec} {_acc(a):.1f}% vs fedavg {_acc(f):.1f}%" + (f" ({_interval(d)})" if d else "")
            + f"; {a['bytes_sent_per_region'] / MiB:.2f} vs {f['bytes_sent_per_region'] / MiB:.2f} MiB sent per region (1/{1 / share:.1f})",
            close and share <= 0.1,
        ))
    for key in headline_keys(names):
        r = row(key)
        d = _difference(doc, names[key], "selftrain") if r and "selftrain" in r else None
        if d:
            targets.append(Target(
                f"Peers, not the extra compute ({names[key]})", "beats selftrain (same compute, no peers): interval above 0",
                f"{spec} {_acc(r[spec]):.1f}% vs selftrain {_acc(r['selftrain']):.1f}% ({_interval(d)})", d["low"] > 0,
            ))
    agreement = doc.get("transport_agreement", [])
    if agreement:
        ratios = [a["overhead_ratio"] for a in agreement]
        targets.append(Target(
            "Overhead of Ray + gRPC", "wall time ≤ 1.25 × the in-process transport's",
            f"{np.mean(ratios):.2f} × on average, worst {max(ratios):.2f} × ({len(ratios)} configs)", max(ratios) <= 1.25,
        ))
    lying = [x for x in doc.get("lying", []) if x["spec"] == spec]
    if lying:
        worst = max(x["loss"] for x in lying)
        targets.append(Target(
            "Robust to lies", f"honest regions lose ≤ 1 point with liars, on every lying row ({spec})",
            "; ".join(f"{x['row']}: {100 * x['loss']:+.1f} points" for x in lying), worst <= 0.01,
        ))
    for mode in ("sync", "async"):
        sweep = sorted((info["value"], r) for r, info in doc["row_info"].items()
                       if info.get("sweep") == f"staleness-{mode}" and r in rows and spec in rows[r])
        if len(sweep) >= 2:
            (v0, fast), (v1, slow) = sweep[0], sweep[-1]
            drop = _acc(rows[fast][spec]) - _acc(rows[slow][spec])
            targets.append(Target(
                f"Staleness at equal bytes ({mode})", f"exchanging every {v1:g} steps instead of every {v0:g} costs ≤ 1 point",
                f"{drop:+.1f} points ({_acc(rows[fast][spec]):.1f}% → {_acc(rows[slow][spec]):.1f}%, one seed)", drop <= 1,
            ))
    return targets
