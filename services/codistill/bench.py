"""`codistill bench SUITE.yaml`: strategies x settings on identical splits and seeds.

A suite names a base config and rows of settings; each row lists the
strategies it compares (`codistill:<rule>` picks a consensus rule). Every
(row, seed) has one split that all its strategies share. Finished cells are
cached under OUT/cells/, so an interrupted suite resumes where it stopped.
Writes OUT/bench.json, OUT/report.md and OUT/plots/*.png.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codistill import config as config_mod
from codistill.config import STRATEGIES, ConfigError


class BenchRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # Config overrides for this row, as dotted keys: {data.partition.alpha: 0.3}.
    set: dict[str, Any] = Field(default_factory=dict)
    strategies: list[str]
    # Seeds for this row; None = the suite's.
    seeds: int | None = Field(None, ge=1)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # The config every row starts from (same keys as a run config).
    base: dict[str, Any] = Field(default_factory=dict)
    seeds: int = Field(1, ge=1)
    rows: list[BenchRow]


def parse_strategy(spec: str) -> tuple[str, str | None]:
    strategy, _, rule = spec.partition(":")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}' in '{spec}' (expected one of {', '.join(STRATEGIES)})")
    if rule and strategy != "codistill":
        raise ConfigError(f"'{spec}': only codistill takes a consensus rule")
    return strategy, rule or None


def load_suite(path: Path) -> Suite:
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    try:
        suite = Suite.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    for row in suite.rows:
        for spec in row.strategies:
            parse_strategy(spec)
        cell_config(suite, row, row.strategies[0], 0)  # every row must make a valid config
    return suite


def cell_config(suite: Suite, row: BenchRow, spec: str, seed: int) -> config_mod.RunConfig:
    raw = copy.deepcopy(suite.base)
    overrides = [f"{k}={json.dumps(v)}" for k, v in row.set.items()]
    raw = config_mod.apply_overrides(raw, overrides)
    strategy, rule = parse_strategy(spec)
    raw["strategy"] = strategy
    raw["seed"] = raw.get("seed", 0) + seed
    raw["name"] = f"{suite.name}-{row.name}"
    if rule:
        raw.setdefault("consensus", {})["rule"] = rule
    try:
        return config_mod.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"row '{row.name}': {exc}") from None


def _cell_id(row: str, spec: str, seed: int) -> str:
    return f"{row}__{spec.replace(':', '-')}__seed{seed}"


def _extras(cfg: config_mod.RunConfig, summary: dict) -> dict[str, float]:
    """Row-specific measures: honest regions' accuracy under lies, hidden-class recall under omit."""
    regions = summary["regions"]
    extras: dict[str, float] = {}
    if cfg.chaos.liars and summary["strategy"] != "centralized":
        extras["honest_mean_test_accuracy"] = float(
            np.mean([r["test_accuracy"] for r in regions if r["id"] not in cfg.chaos.liars])
        )
    if cfg.data.partition.kind == "omit" and summary["strategy"] != "centralized":
        blind = set(cfg.omit_regions())
        for label, group in (("blind", [r for r in regions if r["id"] in blind]), ("seeing", [r for r in regions if r["id"] not in blind])):
            if group:
                extras[f"hidden_recall_{label}"] = float(
                    np.mean([np.mean([r["per_class_recall"][c] for c in cfg.data.partition.omit_classes]) for r in group])
                )
    return extras


def _aggregate(cells: list[dict]) -> dict[str, Any]:
    def stat(key: str) -> dict[str, float]:
        values = np.array([c[key] for c in cells], dtype=float)
        return {"mean": float(values.mean()), "std": float(values.std())}

    extra_keys = sorted({k for c in cells for k in c.get("extras", {})})

    per_region_sent = [np.mean([r["bytes_sent"] for r in c["regions"]]) for c in cells]
    per_region_received = [np.mean([r["bytes_received"] for r in c["regions"]]) for c in cells]
    return {
        "seeds": len(cells),
        "mean_test_accuracy": stat("mean_test_accuracy"),
        "min_test_accuracy": stat("min_test_accuracy"),
        "max_test_accuracy": stat("max_test_accuracy"),
        "ensemble_test_accuracy": stat("ensemble_test_accuracy"),
        "bytes_sent_per_region": float(np.mean(per_region_sent)),
        "bytes_received_per_region": float(np.mean(per_region_received)),
        "wall_seconds": stat("wall_seconds"),
        "exchange_seconds_per_region": float(np.mean([np.mean([r["exchange_seconds"] for r in c["regions"]]) for c in cells])),
        "train_seconds_per_region": float(np.mean([np.mean([r["train_seconds"] for r in c["regions"]]) for c in cells])),
        "peak_rss_bytes": float(np.max([max(r["peak_rss_bytes"] for r in c["regions"]) for c in cells])),
        **{k: {"mean": float(np.mean([c["extras"][k] for c in cells])), "std": float(np.std([c["extras"][k] for c in cells]))} for k in extra_keys},
    }


def run_bench(
    suite_path: Path,
    out: Path,
    seeds: int | None = None,
    announce: Callable[[str], None] = lambda line: None,
) -> dict:
    from codistill.launch import driver

    suite = load_suite(suite_path)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"suite": suite.name, "suite_file": str(suite_path), "rows": {}}
    total = sum((seeds or row.seeds or suite.seeds) * len(row.strategies) for row in suite.rows)
    done = 0
    for row in suite.rows:
        n_seeds = seeds or row.seeds or suite.seeds
        by_strategy: dict[str, list[dict]] = {spec: [] for spec in row.strategies}
        for seed in range(n_seeds):
            split = None
            for spec in row.strategies:
                done += 1
                path = cells_dir / f"{_cell_id(row.name, spec, seed)}.json"
                if path.is_file():
                    by_strategy[spec].append(json.loads(path.read_text()))
                    announce(f"[{done}/{total}] {row.name} {spec} seed {seed}: cached")
                    continue
                cfg = cell_config(suite, row, spec, seed)
                split = split or driver.prepare(cfg)
                started = time.perf_counter()
                result = driver.run_strategy(cfg, split, cfg.strategy, driver.new_run_id(cfg.name))
                summary = result.summary()
                summary["extras"] = _extras(cfg, summary)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(summary))
                tmp.replace(path)
                by_strategy[spec].append(summary)
                announce(
                    f"[{done}/{total}] {row.name} {spec} seed {seed}: mean accuracy "
                    f"{summary['mean_test_accuracy']:.3f} ({time.perf_counter() - started:.0f} s)"
                )
        doc["rows"][row.name] = {spec: _aggregate(cells) for spec, cells in by_strategy.items()}
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    write_report(doc, out)
    return doc


def write_report(doc: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"# Benchmark: {doc['suite']}", "", f"Produced by `codistill bench {doc['suite_file']}`.", ""]
    for row, strategies in doc["rows"].items():
        lines += [f"## {row}", "", "| strategy | mean accuracy | min | max | ensemble | bytes sent / region | wall s |", "|---|---|---|---|---|---|---|"]
        for spec, a in strategies.items():
            m = a["mean_test_accuracy"]
            lines.append(
                f"| {spec} | {m['mean']:.3f} ± {m['std']:.3f} | {a['min_test_accuracy']['mean']:.3f} | "
                f"{a['max_test_accuracy']['mean']:.3f} | {a['ensemble_test_accuracy']['mean']:.3f} | "
                f"{a['bytes_sent_per_region'] / 2**20:.2f} MiB | {a['wall_seconds']['mean']:.1f} |"
            )
        lines.append("")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    rows = list(doc["rows"])
    specs = sorted({s for r in doc["rows"].values() for s in r})
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(rows) * len(specs) / 3), 4))
    width = 0.8 / max(1, len(specs))
    for k, spec in enumerate(specs):
        xs = [i + k * width for i, row in enumerate(rows) if spec in doc["rows"][row]]
        ys = [doc["rows"][row][spec]["mean_test_accuracy"]["mean"] for row in rows if spec in doc["rows"][row]]
        es = [doc["rows"][row][spec]["mean_test_accuracy"]["std"] for row in rows if spec in doc["rows"][row]]
        ax.bar(xs, ys, width, yerr=es, label=spec)
    ax.set_xticks([i + width * (len(specs) - 1) / 2 for i in range(len(rows))], rows)
    ax.set(ylabel="mean region test accuracy", ylim=(0, 1), title=doc["suite"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "accuracy.png", dpi=110)
    plt.close(fig)
    lines += ["![accuracy per row and strategy](plots/accuracy.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
