"""Aggregates bench cells into per-row figures, checks the targets, and writes the report.

Pure functions over the cell summaries that `codistill bench` caches; the
plots live in `bench_plots`. Accuracies in the report are percentages, and
differences between them are percentage points.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20
KiB = 2**10


# ------------------------------------------------------------------ aggregation
def _stat(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


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
        "row_info": {r.name: {"sweep": r.sweep, "value": r.value, "set": r.set} for r in suite.rows},
        "target_rows": dict(suite.targets),
        "machine": machine(),
        "cells": len(cells),
        "suite_seconds": float(sum(c["wall_seconds"] for c in cells)),
    }
    doc["transport_agreement"] = transport_agreement(cells)
    doc["lying"] = lying_losses(suite, cells)
    doc["targets"] = [t.__dict__ for t in evaluate_targets(doc)]
    return doc


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


def _codistill_rules(row: dict[str, dict], min_seeds: int = 1) -> dict[str, dict]:
    return {s: a for s, a in row.items() if s.startswith("codistill") and "@" not in s and a["seeds"] >= min_seeds}


def _best(rules: dict[str, dict]) -> tuple[str, dict]:
    return max(rules.items(), key=lambda kv: kv[1]["mean_test_accuracy"]["mean"])


def _acc(a: dict) -> float:
    return 100 * a["mean_test_accuracy"]["mean"]


def evaluate_targets(doc: dict) -> list[Target]:
    rows, names = doc["rows"], doc["target_rows"]
    headline = doc.get("headline")
    targets: list[Target] = []

    def row(key: str) -> dict | None:
        return rows.get(names.get(key, ""))

    def most_seeded(r: dict) -> dict[str, dict]:
        rules = _codistill_rules(r)
        top = max((a["seeds"] for a in rules.values()), default=1)
        return _codistill_rules(r, top)

    skew = row("skew")
    if skew and {"independent", "centralized"} <= set(skew) and _codistill_rules(skew):
        spec, best = _best(most_seeded(skew))
        ratio = best["error_vs_independent"]
        behind = _acc(skew["centralized"]) - _acc(best)
        targets.append(Target(
            f"{names['skew']}: error vs independent",
            "best rule's error ≤ 0.5 × independent's",
            f"{ratio:.2f} × ({spec}: error {100 - _acc(best):.1f}% vs {100 - _acc(skew['independent']):.1f}%)",
            ratio <= 0.5,
        ))
        targets.append(Target(
            f"{names['skew']}: distance to centralized",
            "within 3 points of centralized",
            f"{behind:+.1f} points behind ({spec} {_acc(best):.1f}% vs centralized {_acc(skew['centralized']):.1f}%)",
            behind <= 3,
        ))
    iid = row("iid")
    if iid and {"independent", "centralized"} <= set(iid) and _codistill_rules(iid):
        spec, best = _best(most_seeded(iid))
        closed = best.get("gap_closed", float("nan"))
        targets.append(Target(
            "IID: gap closed", "≥ 45% of the independent→centralized gap",
            f"{100 * closed:.0f}% ({spec}: {_acc(iid['independent']):.1f}% → {_acc(best):.1f}%, centralized {_acc(iid['centralized']):.1f}%)",
            closed >= 0.45,
        ))
    omit = row("omit")
    if omit:
        spec = headline if headline in omit else None
        spec = spec or (_best(most_seeded(omit))[0] if _codistill_rules(omit) else None)
        a = omit.get(spec, {}) if spec else {}
        if "hidden_recall_blind" in a and "hidden_recall_seeing" in a:
            blind, seeing = a["hidden_recall_blind"]["mean"], a["hidden_recall_seeing"]["mean"]
            share = blind / seeing if seeing > 0 else float("nan")
            indep = omit.get("independent", {}).get("hidden_recall_blind", {}).get("mean")
            targets.append(Target(
                "Hidden class: recall of regions that never saw it", "≥ 85% of the recall of regions that did",
                f"{100 * share:.0f}% ({spec}: {100 * blind:.1f}% vs {100 * seeing:.1f}%"
                + (f"; independent blind regions {100 * indep:.1f}%)" if indep is not None else ")"),
                share >= 0.85,
            ))
    # codistill against fedavg, on every headline row that has both
    for key in headline_keys(names):
        r = row(key)
        if not r or "fedavg" not in r or not _codistill_rules(r):
            continue
        spec = headline if headline in r else _best(most_seeded(r))[0]
        a, f = r[spec], r["fedavg"]
        gap = _acc(f) - _acc(a)
        share = a["bytes_sent_per_region"] / f["bytes_sent_per_region"] if f["bytes_sent_per_region"] else float("nan")
        targets.append(Target(
            f"Against fedavg ({names[key]})", "within 1 point of fedavg (or above) with ≤ 1/10 of its bytes",
            f"{spec} {_acc(a):.1f}% vs fedavg {_acc(f):.1f}% ({-gap:+.1f} points), "
            f"{a['bytes_sent_per_region'] / MiB:.2f} vs {f['bytes_sent_per_region'] / MiB:.2f} MiB sent per region (1/{1 / share:.1f})",
            gap <= 1 and share <= 0.1,
        ))
    agreement = doc.get("transport_agreement", [])
    if agreement:
        ratios = [a["overhead_ratio"] for a in agreement]
        worst = max(ratios)
        targets.append(Target(
            "Overhead of Ray + gRPC", "wall time ≤ 1.25 × the in-process transport's",
            f"{np.mean(ratios):.2f} × on average, worst {worst:.2f} × ({len(ratios)} configs)",
            worst <= 1.25,
        ))
    hardest = row("hardest_skew")
    lying = [x for x in doc.get("lying", []) if x["row"] == names.get("lying")]
    if hardest and lying:
        rules = most_seeded(hardest)
        best_spec, best = _best(rules)
        losses = {x["spec"]: x["loss"] for x in lying}
        both = {
            s: (_acc(best) - _acc(a), 100 * losses[s]) for s, a in rules.items() if s in losses
        }
        winners = [s for s, (gap, loss) in both.items() if gap <= 1 and loss <= 1]
        detail = "; ".join(f"{s.split(':')[1]} {gap:.1f} behind, loses {loss:.1f}" for s, (gap, loss) in both.items())
        targets.append(Target(
            "No trade-off between skew and lies",
            f"a rule within 1 point of the best on {names['hardest_skew']} that loses ≤ 1 point with 2 of 10 liars",
            (f"met by {', '.join(winners)}. " if winners else "no rule does both. ") + detail,
            bool(winners),
        ))
    fast, slow = row("stale_fast"), row("stale_slow")
    if fast and slow:
        common = sorted(set(fast) & set(slow))
        if common:
            spec = common[0]
            drop = _acc(fast[spec]) - _acc(slow[spec])
            targets.append(Target(
                "Staleness", f"drop from exchanging every {doc['row_info'][names['stale_slow']]['value']:g} steps instead of every "
                f"{doc['row_info'][names['stale_fast']]['value']:g} ≤ 1 point",
                f"{drop:+.1f} points ({spec}: {_acc(fast[spec]):.1f}% → {_acc(slow[spec]):.1f}%)",
                drop <= 1,
            ))
    return targets


# ----------------------------------------------------------------------- report
def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}" if stat["n"] > 1 else f"{100 * stat['mean']:.1f}"


def _size(n: float | None) -> str:
    if n is None:
        return "–"
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    if n >= KiB:
        return f"{n / KiB:.1f} KiB"
    return f"{n:.0f} B" if n else "0"


def _opt(a: dict, key: str, fmt: str) -> str:
    return fmt.format(a[key]) if key in a else "–"


def _row_table(name: str, row: dict[str, dict]) -> list[str]:
    lines = [
        "| strategy | seeds | mean acc % | min | max | error vs indep. | gap closed | sent / region | received / region "
        "| sent / exchange | exchanges | wall s | exchange s / region | compute s / region | peak RSS, all region processes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, a in row.items():
        lines.append(
            f"| {spec} | {a['seeds']} | {_pm(a['mean_test_accuracy'])} | {100 * a['min_test_accuracy']['mean']:.1f} "
            f"| {100 * a['max_test_accuracy']['mean']:.1f} | {_opt(a, 'error_vs_independent', '{:.2f}')} "
            f"| {_opt(a, 'gap_closed', '{:.0%}')} | {_size(a['bytes_sent_per_region'])} | {_size(a['bytes_received_per_region'])} "
            f"| {_size(a['bytes_sent_per_exchange'])} | {a['exchanges_per_region']:.0f} | {a['wall_seconds']['mean']:.0f} "
            f"| {a['exchange_seconds_per_region']:.1f} | {a['train_seconds_per_region'] - a['exchange_seconds_per_region']:.1f} "
            f"| {_size(a['peak_rss_bytes_total'])} |"
        )
    if "independent" in row:
        lines.append(f"| *ensemble of independent* | {row['independent']['seeds']} | {_pm(row['independent']['ensemble_test_accuracy'])} "
                     "| | | | | 0 | 0 | | | | | | |")
    return lines


def write_report(doc: dict, cells: list[dict], path: Path, command: str) -> Path:
    """Writes the Markdown report to `path` and its plots to `path.parent/plots/`."""
    from codistill import bench_plots as plots

    folder = path.parent / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    names = doc["target_rows"]
    m = doc["machine"]
    headline = doc.get("headline")
    L: list[str] = [
        f"# Benchmark results: suite `{doc['suite']}`",
        "",
        f"Produced by `{command}` (suite file `{doc['suite_file']}`).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; torch {m['torch']}, Python {m['python']}.",
        f"{doc['cells']} cells, {doc['suite_seconds'] / 60:.0f} min of run time in all.",
        "Accuracies are the mean over regions of each region's test accuracy, in %; ± is the standard deviation over seeds. "
        "Bytes are protobuf bytes on the wire for codistill, and float32 parameter bytes (up and down) for fedavg. "
        "Exchange seconds are spent predicting, publishing and waiting for peers' rounds; compute seconds are the rest. "
        "Peak memory is measured on Ray + gRPC cells, where each region has its own process "
        "(in-process cells share one process with the bench, so they show –).",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for t in doc["targets"]:
        L.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {'yes' if t['met'] else 'no' if t['met'] is False else 'n/a'} |")
    L.append("")
    if doc.get("commentary"):
        L += [doc["commentary"].strip(), ""]

    drawn = {
        "accuracy_vs_steps": plots.accuracy_vs_steps(cells, names.get("skew", ""), folder),
        "error_reduction_vs_regions": plots.error_reduction_vs_regions(doc, headline, folder) if headline else None,
        "hidden_class_recall": plots.hidden_class_recall(doc, names.get("omit", ""), folder),
        "bytes_vs_accuracy": plots.bytes_vs_accuracy(doc, names.get("skew", ""), folder),
        "accuracy_vs_staleness": plots.accuracy_vs_staleness(doc, folder),
        "attention_heatmap": plots.attention_heatmaps(
            cells, names.get("lying", ""),
            ["codistill:mean", "codistill:attention", "codistill:robust_attention", "codistill:screened_mean"], folder
        ),
        "accuracy": plots.accuracy_by_row(doc, folder),
    }

    def figure(key: str, caption: str) -> None:
        if drawn.get(key):
            L.extend([f"![{caption}](plots/{drawn[key].name})", "", f"*{caption}*", ""])

    agreement = doc.get("transport_agreement", [])
    if agreement:
        L += [
            "## Ray + gRPC against the in-process transport",
            "",
            "The same config, seed and split, once with every region in one process (no Ray, no gRPC), once as Ray actors "
            "exchanging over gRPC on loopback. Local Ray is started once before the first such cell, so a cell's wall time "
            "covers placing the actors, shipping their data, starting their gRPC servers, training and collecting results.",
            "",
            "| row | strategy | seed | in-process acc % | Ray+gRPC acc % | largest region difference | bytes in-process | bytes gRPC "
            "| wall in-process s | wall Ray+gRPC s | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for a in agreement:
            L.append(
                f"| {a['row']} | {a['spec'].split('@')[0]} | {a['seed']} | {100 * a['inprocess_accuracy']:.2f} | {100 * a['grpc_accuracy']:.2f} "
                f"| {100 * a['max_region_difference']:.2f} points | {_size(a['inprocess_bytes'])} | {_size(a['grpc_bytes'])} "
                f"| {a['inprocess_wall_seconds']:.0f} | {a['grpc_wall_seconds']:.0f} | {a['overhead_ratio']:.2f} |"
            )
        L.append("")

    L += ["## Headline rows", ""]
    for key in headline_keys(names):
        row = names.get(key)
        if row in doc["rows"]:
            L += [f"### {row}", "", *_row_table(row, doc["rows"][row]), ""]
    figure("accuracy_vs_steps", f"Accuracy during training on {names.get('skew')}, mean over regions and seeds.")
    figure("bytes_vs_accuracy", f"Bytes sent per region against accuracy on {names.get('skew')}.")

    omit = doc["rows"].get(names.get("omit", ""), {})
    recall = {s: a for s, a in omit.items() if "hidden_recall_blind" in a}
    if recall:
        L += [
            "## Hidden class",
            "",
            f"On `{names['omit']}`, half of the regions never see the hidden class labelled. Recall on it, in %:",
            "",
            "| strategy | seeds | regions that never saw it | regions that did | ratio |",
            "|---|---|---|---|---|",
        ]
        for s, a in recall.items():
            blind, seeing = a["hidden_recall_blind"]["mean"], a.get("hidden_recall_seeing", {}).get("mean", float("nan"))
            L.append(f"| {s} | {a['seeds']} | {_pm(a['hidden_recall_blind'])} | "
                     f"{_pm(a['hidden_recall_seeing']) if 'hidden_recall_seeing' in a else '–'} | "
                     f"{blind / seeing:.2f} |" if seeing else f"| {s} | {a['seeds']} | {_pm(a['hidden_recall_blind'])} | – | – |")
        L.append("")
        figure("hidden_class_recall", "Recall on the hidden class, for regions that never saw it labelled and for those that did.")

    lying = doc.get("lying", [])
    if lying:
        L += [
            "## Lying peers",
            "",
            f"Regions {', '.join(map(str, lying[0]['liars']))} publish confident lies: all probability on the class they find "
            "least likely. Accuracy is over the honest regions only, against the same rule, split and seed without liars.",
            "",
            "| row | rule | honest acc % with liars | without | loss (points) |",
            "|---|---|---|---|---|",
        ]
        for x in lying:
            L.append(f"| {x['row']} | {x['spec'].split(':')[1]} | {100 * x['honest_accuracy']:.1f} | "
                     f"{100 * x['honest_accuracy_without_lies']:.1f} | {100 * x['loss']:.1f} |")
        L.append("")
        figure("attention_heatmap", "Mean consensus weight each region gave each peer under lies; columns marked * are the liars.")

    sweeps = [("regions", "Region count"), ("interval", "Exchange interval (staleness)")]
    for sweep, title in sweeps:
        members = sorted((info["value"], r) for r, info in doc["row_info"].items() if info.get("sweep") == sweep and r in doc["rows"])
        if not members:
            continue
        L += [f"## {title}", "", "| value | row | strategy | mean acc % | error vs indep. | sent / region | wall s | peak RSS, all regions | peak RSS per process |",
              "|---|---|---|---|---|---|---|---|---|"]
        for value, r in members:
            for s, a in doc["rows"][r].items():
                # The sweep is about the headline rule; other strategies appear where the row is shown in full.
                if headline and s.split("@")[0] != headline and (sweep == "interval" or s != "independent"):
                    continue
                L.append(f"| {value:g} | {r} | {s} | {_pm(a['mean_test_accuracy'])} | {_opt(a, 'error_vs_independent', '{:.2f}')} "
                         f"| {_size(a['bytes_sent_per_region'])} | {a['wall_seconds']['mean']:.0f} | {_size(a['peak_rss_bytes_total'])} "
                         f"| {_size(a['peak_rss_bytes_per_process'])} |")
        L.append("")
        figure("error_reduction_vs_regions" if sweep == "regions" else "accuracy_vs_staleness",
               "Error reduction and accuracy against the number of regions." if sweep == "regions" else "Accuracy against the exchange interval.")

    shown = {names.get(k) for k in ("skew", "hardest_skew", "iid", "omit")}
    others = [r for r in doc["rows"] if r not in shown]
    if others:
        L += ["## All other rows", ""]
        for r in others:
            L += [f"### {r}", "", f"Settings: `{doc['row_info'][r]['set']}`", "", *_row_table(r, doc["rows"][r]), ""]
        for c in cells:
            archs = {x["arch"] for x in c["regions"]}
            if len(archs) > 1 and c["seed"] == 0:
                per = {a: 100 * np.mean([x["test_accuracy"] for x in c["regions"] if x["arch"] == a]) for a in sorted(archs)}
                L.append(f"- `{c['row']}` {c['spec']}: " + ", ".join(f"{a} regions {v:.1f}%" for a, v in per.items()))
        L.append("")
    figure("accuracy", "Mean region accuracy for every row and strategy.")
    path.write_text("\n".join(L) + "\n")
    return path
