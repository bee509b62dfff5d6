"""The benchmark report in Markdown: targets, comparisons with intervals, tables and plots.

A suite whose rows all belong to tuning groups gets a tuning report instead,
which shows validation figures only: choices never see the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codistill.report import budget, scale
from codistill.report.aggregate import KiB, MiB
from codistill.report.targets import headline_keys

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
        "| strategy | seeds | mean acc % | validation % | min | max | error vs indep. | gap closed | sent / region | received / region "
        "| sent / exchange | exchanges | wall s | exchange s / region | CPU s / region | peak memory, all processes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, a in row.items():
        lines.append(
            f"| {spec} | {a['seeds']} | {_pm(a['mean_test_accuracy'])} | {_pm(a['mean_validation_accuracy'])} "
            f"| {100 * a['min_test_accuracy']['mean']:.1f} "
            f"| {100 * a['max_test_accuracy']['mean']:.1f} | {_opt(a, 'error_vs_independent', '{:.2f}')} "
            f"| {_opt(a, 'gap_closed', '{:.0%}')} | {_size(a['bytes_sent_per_region'])} | {_size(a['bytes_received_per_region'])} "
            f"| {_size(a['bytes_sent_per_exchange'])} | {a['exchanges_per_region']:.0f} | {a['wall_seconds']['mean']:.0f} "
            f"| {a['exchange_seconds_per_region']:.1f} | {a['cpu_seconds_per_region']:.1f} "
            f"| {_size(a['peak_rss_bytes_total'])} |"
        )
    if "independent" in row:
        lines.append(f"| *ensemble of independent* | {row['independent']['seeds']} | {_pm(row['independent']['ensemble_test_accuracy'])} "
                     "| | | | | | 0 | 0 | | | | | | |")
    return lines


def _comparisons(doc: dict) -> list[str]:
    if not doc.get("comparisons"):
        return []
    L = [
        "## Paired comparisons",
        "",
        f"`{doc['headline']}` minus each other strategy, per seed (same split, initialisation and data order), "
        "then the mean and a two-sided 95% t-interval over seeds, in points. "
        "*beats* / *behind* only where the interval excludes 0.",
        "",
        "| row | against | difference | 95% interval | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for d in doc["comparisons"]:
        verdict = "beats" if d["beats"] else "behind" if d["loses"] else "no clear difference"
        L.append(f"| {d['row']} | {d['b']} | {100 * d['mean']:+.1f} | [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
                 f"| {d['n']} | {verdict} |")
    return L + [""]


def write_tuning_report(doc: dict, path: Path, command: str) -> Path:
    """Validation figures of each tuning group and the candidate chosen; nothing from the test split."""
    m = doc["machine"]
    L = [
        f"# Tuning: suite `{doc['suite']}`",
        "",
        f"Produced by `{command}` (suite file `{doc['suite_file']}`, code version `{doc['code_version']}`).",
        f"Machine: {m['cpu']}, {m['cores']} cores; {doc['cells']} cells, {doc['suite_seconds'] / 60:.0f} min of run time.",
        "Every figure is the mean region accuracy on the **validation** split (labeled training examples that no region "
        "trains or distils on; under lies, the honest regions only), averaged over the group's rows and seeds. The test "
        "split is not shown: choices are made here, and the headline suite only reports.",
        "",
    ]
    for group, choice in doc["choices"].items():
        L += [f"## {group}", "", f"Chosen: **{choice['chosen']}** (`{choice['settings']}`)", "",
              "| candidate | validation accuracy % | sent / region | settings |", "|---|---|---|---|"]
        for c in sorted(choice["candidates"], key=lambda c: -c["validation_accuracy"]):
            mark = " (chosen)" if c["label"] == choice["chosen"] else ""
            L.append(f"| {c['label']}{mark} | {100 * c['validation_accuracy']:.2f} | {_size(c['bytes_sent_per_region'])} "
                     f"| `{c['settings']}` |")
        L.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")
    return path


def write_report(doc: dict, cells: list[dict], path: Path, command: str) -> Path:
    """Writes the Markdown report to `path` and its plots to `path.parent/plots/`."""
    if doc["rows"] and all(info.get("group") for info in doc["row_info"].values()):
        return write_tuning_report(doc, path, command)
    folder = path.parent / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    figures = _Figures(_draw(doc, cells, folder))
    L = _header(doc, command) + _targets(doc)
    if doc.get("commentary"):
        L += [doc["commentary"].strip(), ""]
    L += budget.section(doc, cells, figures("accuracy_against_bytes", "Accuracy against bytes sent per region, both strategies."))
    L += scale.scale_section(doc, cells, folder)
    L += _comparisons(doc) + _transport_agreement(doc) + _headline_rows(doc, figures) + _hidden_class(doc, figures)
    L += _lying(doc, figures) + _sweeps(doc, figures) + _other_rows(doc, cells)
    L += figures("accuracy", "Mean region accuracy for every row and strategy.")
    path.write_text("\n".join(L) + "\n")
    return path


def _draw(doc: dict, cells: list[dict], folder: Path) -> dict[str, Path | None]:
    from codistill.report import suite_plots as plots

    names, headline = doc["target_rows"], doc.get("headline")
    lying_row = doc["lying"][0]["row"] if doc.get("lying") else ""
    return {
        "accuracy_vs_steps": plots.accuracy_vs_steps(cells, names.get("skew", ""), folder),
        "error_reduction_vs_regions": plots.error_reduction_vs_regions(doc, headline, folder) if headline else None,
        "hidden_class_recall": plots.hidden_class_recall(doc, names.get("omit", ""), folder),
        "bytes_vs_accuracy": plots.bytes_vs_accuracy(doc, names.get("skew", ""), folder),
        "accuracy_against_bytes": plots.accuracy_against_bytes(doc, cells, folder),
        "accuracy_vs_staleness": plots.accuracy_vs_staleness(doc, folder),
        "attention_heatmap": plots.attention_heatmaps(
            cells, lying_row, sorted({x["spec"] for x in doc.get("lying", []) if x["row"] == lying_row}), folder
        ),
        "accuracy": plots.accuracy_by_row(doc, folder),
    }


class _Figures:
    """The report's lines for a plot that was drawn (none for one that was not)."""

    def __init__(self, drawn: dict[str, Path | None]):
        self.drawn = drawn

    def __call__(self, key: str, caption: str) -> list[str]:
        if not self.drawn.get(key):
            return []
        return [f"![{caption}](plots/{self.drawn[key].name})", "", f"*{caption}*", ""]


def _header(doc: dict, command: str) -> list[str]:
    m = doc["machine"]
    return [
        f"# Benchmark results: suite `{doc['suite']}`",
        "",
        f"Produced by `{command}` (suite file `{doc['suite_file']}`).",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; torch {m['torch']}, Python {m['python']}.",
        f"{doc['cells']} cells, {doc['suite_seconds'] / 60:.0f} min of run time in all; code version `{doc['code_version']}`.",
        "Accuracies are the mean over regions of each region's test accuracy, in %; ± is the sample standard deviation "
        "(ddof=1) over seeds. Every setting of every strategy was chosen beforehand on the validation split "
        "(see the tuning reports), and the targets judge the strategy the suite declares before it runs "
        f"(`{doc.get('headline')}`), never a pick by test accuracy. The validation column is shown for reference only. "
        "CPU seconds are the regions' own thread time (their compute, whatever else ran on the machine). "
        "Bytes are protobuf bytes on the wire for codistill, and float32 parameter bytes (up and down) for fedavg. "
        "Exchange seconds are spent predicting, publishing and waiting for peers' rounds. "
        "Peak memory is the run's total, sampled every 0.5 s while it trains (PSS: shared pages counted once): the "
        "driver and, through Ray, every process it started; cells from before that sampling show the sum of the region "
        "processes' own peaks on Ray + gRPC cells, and – in-process.",
        "",
    ]


def _targets(doc: dict) -> list[str]:
    if not doc["targets"]:
        return []
    L = ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in doc["targets"]:
        L.append(f"| {t['name']} | {t['goal']} | {t['measured']} | {'yes' if t['met'] else 'no' if t['met'] is False else 'n/a'} |")
    return L + [""]


def _transport_agreement(doc: dict) -> list[str]:
    agreement = doc.get("transport_agreement", [])
    if not agreement:
        return []
    L = [
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
    return L + [""]


def _headline_rows(doc: dict, figures: _Figures) -> list[str]:
    names = doc["target_rows"]
    L = ["## Headline rows", ""]
    for key in headline_keys(names):
        row = names.get(key)
        if row in doc["rows"]:
            L += [f"### {row}", "", *_row_table(row, doc["rows"][row]), ""]
    L += figures("accuracy_vs_steps", f"Accuracy during training on {names.get('skew')}, mean over regions and seeds.")
    return L + figures("bytes_vs_accuracy", f"Bytes sent per region against accuracy on {names.get('skew')}.")


def _hidden_class(doc: dict, figures: _Figures) -> list[str]:
    names = doc["target_rows"]
    omit = doc["rows"].get(names.get("omit", ""), {})
    recall = {s: a for s, a in omit.items() if "hidden_recall_blind" in a}
    if not recall:
        return []
    L = [
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
    return L + figures("hidden_class_recall", "Recall on the hidden class, for regions that never saw it labelled and for those that did.")


def _lying(doc: dict, figures: _Figures) -> list[str]:
    lying = doc.get("lying", [])
    if not lying:
        return []
    L = [
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
    return L + figures("attention_heatmap", "Mean consensus weight each region gave each peer under lies; columns marked * are the liars.")


_SWEEPS = [("regions", "Region count"), ("staleness-sync", "Staleness at equal bytes, sync rounds"),
           ("staleness-async", "Staleness at equal bytes, async")]


def _sweeps(doc: dict, figures: _Figures) -> list[str]:
    headline, L = doc.get("headline"), []
    for sweep, title in _SWEEPS:
        members = sorted((info["value"], r) for r, info in doc["row_info"].items() if info.get("sweep") == sweep and r in doc["rows"])
        if not members:
            continue
        L += [f"## {title}", "", "| value | row | strategy | mean acc % | error vs indep. | sent / region | exchanges | wall s | peak RSS, all regions | peak RSS per process |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for value, r in members:
            for s, a in doc["rows"][r].items():
                # The sweep is about the headline rule; other strategies appear where the row is shown in full.
                if headline and s.split("@")[0] != headline and (sweep != "regions" or s != "independent"):
                    continue
                L.append(f"| {value:g} | {r} | {s} | {_pm(a['mean_test_accuracy'])} | {_opt(a, 'error_vs_independent', '{:.2f}')} "
                         f"| {_size(a['bytes_sent_per_region'])} | {a['exchanges_per_region']:.0f} | {a['wall_seconds']['mean']:.0f} "
                         f"| {_size(a['peak_rss_bytes_total'])} "
                         f"| {_size(a['peak_rss_bytes_per_process'])} |")
        L.append("")
        if sweep == "regions":
            L += figures("error_reduction_vs_regions", "Error reduction and accuracy against the number of regions.")
        elif sweep == "staleness-async" or not any(i.get("sweep") == "staleness-async" for i in doc["row_info"].values()):
            L += figures("accuracy_vs_staleness", "Accuracy against the exchange interval at equal bytes, sync and async.")
    return L


def _other_rows(doc: dict, cells: list[dict]) -> list[str]:
    names = doc["target_rows"]
    shown = {names.get(k) for k in ("skew", "hardest_skew", "iid", "omit")}
    shown |= {r for r, info in doc["row_info"].items() if (info.get("sweep") or "").startswith("staleness") or info.get("sweep") == "scale"}
    others = [r for r in doc["rows"] if r not in shown]
    if not others:
        return []
    L = ["## All other rows", ""]
    for r in others:
        L += [f"### {r}", "", f"Settings: `{doc['row_info'][r]['set']}`", "", *_row_table(r, doc["rows"][r]), ""]
    for c in cells:
        archs = {x["arch"] for x in c["regions"]}
        if len(archs) > 1 and c["seed"] == 0:
            per = {a: 100 * np.mean([x["test_accuracy"] for x in c["regions"] if x["arch"] == a]) for a in sorted(archs)}
            L.append(f"- `{c['row']}` {c['spec']}: " + ", ".join(f"{a} regions {v:.1f}%" for a, v in per.items()))
    return L + [""]
