"""The suite's targets, judged on its pre-declared headline strategy (never on a pick by test accuracy).

"A beats B" claims read the paired per-seed differences of `aggregate.comparisons`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from codistill.report.aggregate import MiB


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


RowOf = Callable[[str], "dict | None"]


def evaluate_targets(doc: dict) -> list[Target]:
    """Every target judged on the suite's pre-declared headline strategy, never on a pick by test accuracy."""
    rows, names, spec = doc["rows"], doc["target_rows"], doc.get("headline")
    if not spec:
        return []

    def row(key: str) -> dict | None:
        r = rows.get(names.get(key, ""))
        return r if r and spec in r else None

    return [
        *_accuracy_targets(doc, spec, row),
        *_baseline_targets(doc, spec, row),
        *_system_targets(doc, spec),
    ]


def _accuracy_targets(doc: dict, spec: str, row: RowOf) -> list[Target]:
    """Against independent and centralized on the skewed row, the iid gap, and the hidden class."""
    names, targets = doc["target_rows"], []
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
    return targets


def _baseline_targets(doc: dict, spec: str, row: RowOf) -> list[Target]:
    """Against fedavg (accuracy and bytes) and selftrain (the same compute without peers) on each headline row."""
    names, targets = doc["target_rows"], []
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
    return targets


def _system_targets(doc: dict, spec: str) -> list[Target]:
    """The cost of Ray + gRPC, robustness to lies, and staleness at equal bytes."""
    rows, targets = doc["rows"], []
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
