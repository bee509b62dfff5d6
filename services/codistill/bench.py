"""`codistill bench SUITE.yaml`: strategies x settings on identical splits and seeds.

A suite names a base config and rows of settings; each row lists the
strategies it compares. A strategy spec is `STRATEGY[:RULE][@TRANSPORT]`:
`codistill:median` picks a consensus rule, `codistill:attention@grpc` runs the
same cell through real Ray and gRPC instead of the suite's transport. Every
(row, seed) has one split that all its strategies share.

Finished cells are cached under OUT/cells/, keyed by a hash of the cell's
effective config and of the code that computes it, so an interrupted suite
resumes where it stopped, a cell whose config or code changed is run again,
and one computation shared by several rows (centralized ignores the partition)
runs once. A report never mixes cells from different code versions.
Writes OUT/bench.json, OUT/report.md and OUT/plots/*.png (see bench_report).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codistill import config as config_mod
from codistill.bench_report import honest_accuracy
from codistill.config import STRATEGIES, ConfigError

TRANSPORTS = ("inprocess", "grpc")


class BenchRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # Config overrides for this row, as dotted keys: {data.partition.alpha: 0.3}.
    set: dict[str, Any] = Field(default_factory=dict)
    strategies: list[str]
    # Seeds for this row; None = the suite's.
    seeds: int | None = Field(None, ge=1)
    # Strategies of this row that run on the first seed only (costly references).
    one_seed: list[str] = Field(default_factory=list)
    # Sweep membership for plots: rows with the same sweep name form one curve over `value`.
    sweep: str | None = None
    value: float | None = None
    # Settings for some strategies only, by strategy name or spec: {fedavg: {train.lr: 0.01}}.
    strategy_set: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Tuning suites: rows of one group are candidates for one choice, scored on validation.
    # A candidate is the row's label (one setting per row) or, without a label, each strategy spec.
    group: str | None = None
    label: str | None = None


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # The config every row starts from (same keys as a run config).
    base: dict[str, Any] = Field(default_factory=dict)
    seeds: int = Field(1, ge=1)
    rows: list[BenchRow]
    # Row names the targets table reads: skew, iid, omit, hardest_skew, lying, stale_fast, stale_slow.
    # Targets whose rows are missing are left out of the report.
    targets: dict[str, str] = Field(default_factory=dict)
    # The codistill strategy the report quotes where one rule stands for all (sweeps, hidden class, fedavg).
    headline: str | None = None
    # Hand-written Markdown (path relative to the suite file) that the report prints under the
    # targets: what the figures mean and what limits a missed target.
    commentary: str | None = None
    # Settings for some strategies only, in every row (a row's own strategy_set wins).
    strategy_set: dict[str, dict[str, Any]] = Field(default_factory=dict)


def parse_strategy(spec: str) -> tuple[str, str | None, str | None]:
    """`codistill:median@grpc` -> ("codistill", "median", "grpc")."""
    head, _, transport = spec.partition("@")
    strategy, _, rule = head.partition(":")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}' in '{spec}' (expected one of {', '.join(STRATEGIES)})")
    if rule and strategy != "codistill":
        raise ConfigError(f"'{spec}': only codistill takes a consensus rule")
    if transport and transport not in TRANSPORTS:
        raise ConfigError(f"'{spec}': unknown transport '{transport}' (expected one of {', '.join(TRANSPORTS)})")
    return strategy, rule or None, transport or None


def load_suite(path: Path) -> Suite:
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    try:
        suite = Suite.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    names = [row.name for row in suite.rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: row names must be unique")
    for row in suite.rows:
        for spec in row.strategies:
            parse_strategy(spec)
        unknown = set(row.one_seed) - set(row.strategies)
        if unknown:
            raise ConfigError(f"row '{row.name}': one_seed names strategies the row does not run: {sorted(unknown)}")
        for spec in row.strategies:
            cell_config(suite, row, spec, 0)  # every cell must make a valid config
    if suite.headline is not None:
        parse_strategy(suite.headline)
    if suite.commentary is not None and not (path.parent / suite.commentary).is_file():
        raise ConfigError(f"{path}: commentary file not found: {path.parent / suite.commentary}")
    for target, row_name in suite.targets.items():
        if row_name not in names:
            raise ConfigError(f"{path}: target '{target}' names row '{row_name}', which the suite does not have")

    return suite


def _strategy_overrides(table: dict[str, dict[str, Any]], spec: str) -> dict[str, Any]:
    """Settings of `table` that apply to `spec`: by strategy name, then by spec without transport."""
    head = spec.split("@")[0]
    return {**table.get(head.split(":")[0], {}), **(table.get(head, {}) if head != head.split(":")[0] else {})}


def cell_config(suite: Suite, row: BenchRow, spec: str, seed: int) -> config_mod.RunConfig:
    raw = copy.deepcopy(suite.base)
    settings = {**row.set, **_strategy_overrides(suite.strategy_set, spec), **_strategy_overrides(row.strategy_set, spec)}
    overrides = [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    raw = config_mod.apply_overrides(raw, overrides)
    strategy, rule, transport = parse_strategy(spec)
    raw["strategy"] = strategy
    raw["seed"] = raw.get("seed", 0) + seed
    raw["name"] = f"{suite.name}-{row.name}"
    if rule:
        raw.setdefault("consensus", {})["rule"] = rule
    if transport:
        raw.setdefault("exchange", {})["transport"] = transport
    try:
        return config_mod.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"row '{row.name}', '{spec}': {exc}") from None


# Modules that only render results: changing them cannot change a cell's numbers.
_REPORTING = {"bench_report.py", "bench_plots.py", "bench_stats.py", "bench_markdown.py", "report.py", "progress.py"}


def code_version() -> str:
    """Hash of the package's source that computes cells (everything but the report writers)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.name in _REPORTING and path.parent == root:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def effective_config(cfg: config_mod.RunConfig) -> dict[str, Any]:
    """What a cell's numbers depend on: the resolved config without its name and secrets, and without
    the partition for centralized, which trains on the union of all slices (the same for every partition)."""
    doc = cfg.model_dump(mode="json")
    doc.pop("name")
    doc["security"]["token"] = None
    if cfg.strategy == "centralized":
        doc["data"].pop("partition")
    return doc


def config_key(cfg: config_mod.RunConfig) -> str:
    return hashlib.sha256(json.dumps(effective_config(cfg), sort_keys=True).encode()).hexdigest()[:20]


def find_cell(cells_dir: Path, cfg: config_mod.RunConfig, version: str | None) -> Path | None:
    """The cached cell of this config computed by code `version`; with None, by any version (the
    newest), for reporting on what is finished: the report then refuses cells of mixed versions."""
    key = config_key(cfg)
    if version is not None:
        path = cells_dir / f"{key}-{version}.json"
        return path if path.is_file() else None
    found = sorted(cells_dir.glob(f"{key}-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def cells_of(suite: Suite, seeds: int | None = None) -> list[tuple[BenchRow, str, int]]:
    """Every (row, strategy, seed) of the suite, in run order: a (row, seed)'s strategies run back to back."""
    out = []
    for row in suite.rows:
        for seed in range(seeds or row.seeds or suite.seeds):
            out += [(row, spec, seed) for spec in row.strategies if seed == 0 or spec not in row.one_seed]
    return out


def extras(cfg: config_mod.RunConfig, summary: dict) -> dict[str, float]:
    """Row-specific measures: honest regions' accuracy under lies, hidden-class recall under omit."""
    regions = summary["regions"]
    out: dict[str, float] = {}
    if cfg.chaos.liars and summary["strategy"] != "centralized":
        out["honest_mean_test_accuracy"] = honest_accuracy(summary, cfg.chaos.liars)
    if cfg.chaos.liars and summary["strategy"] != "centralized":
        honest = [r for r in regions if r["id"] not in cfg.chaos.liars]
        out["honest_mean_validation_accuracy"] = float(np.mean([r["validation_accuracy"] for r in honest]))
    if cfg.data.partition.kind == "omit":
        blind = set(cfg.omit_regions()) if summary["strategy"] != "centralized" else set()
        for label, group in (("blind", [r for r in regions if r["id"] in blind]), ("seeing", [r for r in regions if r["id"] not in blind])):
            if group:
                out[f"hidden_recall_{label}"] = float(
                    np.mean([np.mean([r["per_class_recall"][c] for c in cfg.data.partition.omit_classes]) for r in group])
                )
    return out


def _start_ray_for(cells: list[tuple[config_mod.RunConfig, str]]) -> None:
    """Start one local Ray big enough for every gRPC cell, so no cell's wall time includes Ray's start."""
    from codistill.launch.loopback import keep_local_ray_on_loopback

    keep_local_ray_on_loopback()
    from codistill.launch.ray_runner import ensure_ray

    cfg = cells[0][0].model_copy(deep=True)
    needed = max(int(np.ceil(c.regions.count * c.regions.num_cpus)) for c, _ in cells)
    cfg.ray.num_cpus = max(os.cpu_count() or 1, needed)
    ensure_ray(cfg, None)


def run_bench(
    suite_path: Path,
    out: Path,
    seeds: int | None = None,
    announce: Callable[[str], None] = lambda line: None,
    report: Path | None = None,
    command: str | None = None,
    cached_only: bool = False,
) -> dict:
    from codistill.bench_markdown import write_report
    from codistill.bench_report import aggregate
    from codistill.launch import driver

    suite = load_suite(suite_path)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    plan = cells_of(suite, seeds)
    version = code_version()

    def cell_path(row: BenchRow, spec: str, seed: int) -> Path:
        return cells_dir / f"{config_key(cell_config(suite, row, spec, seed))}-{version}.json"

    def cached(row: BenchRow, spec: str, seed: int) -> Path | None:
        return find_cell(cells_dir, cell_config(suite, row, spec, seed), None if cached_only else version)

    todo = [] if cached_only else [(row, spec, seed) for row, spec, seed in plan if cached(row, spec, seed) is None]
    # Cells of the same computation (same key) run once.
    todo = list({cell_path(*c): c for c in todo}.values())
    grpc = [(cell_config(suite, row, spec, seed), spec) for row, spec, seed in todo]
    grpc = [(cfg, spec) for cfg, spec in grpc if cfg.exchange.transport == "grpc" and cfg.strategy != "centralized"]
    ray_started = False
    cells: list[dict] = []
    splits: dict[tuple[str, int], Any] = {}
    suite_start = time.perf_counter()
    ran = 0
    try:
        for done, (row, spec, seed) in enumerate(plan, 1):
            found = cached(row, spec, seed)
            if found is not None:
                cells.append({**json.loads(found.read_text()), "row": row.name, "spec": spec, "seed": seed})
                announce(f"[{done}/{len(plan)}] {row.name} {spec} seed {seed}: cached")
                continue
            if cached_only:
                announce(f"[{done}/{len(plan)}] {row.name} {spec} seed {seed}: not run yet, left out")
                continue
            cfg = cell_config(suite, row, spec, seed)
            path = cell_path(row, spec, seed)
            if cfg.exchange.transport == "grpc" and grpc and not ray_started:
                _start_ray_for(grpc)
                ray_started = True
            key = (row.name, seed)
            if key not in splits:
                splits = {key: driver.prepare(cfg)}  # one split per (row, seed), shared by its strategies
            started = time.perf_counter()
            result = driver.run_strategy(cfg, splits[key], cfg.strategy, driver.new_run_id(cfg.name))
            summary = result.summary()
            summary.update(
                row=row.name, spec=spec, seed=seed, extras=extras(cfg, summary), config=cfg.model_dump(mode="json"),
                code_version=version,
            )
            summary["config"]["security"]["token"] = None
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary))
            tmp.replace(path)
            cells.append(summary)
            ran += 1
            elapsed = time.perf_counter() - suite_start
            left = elapsed / ran * (len(todo) - ran)  # a rough guess: cells differ in cost
            # Validation, not test: choices are made while watching a suite run.
            announce(
                f"[{done}/{len(plan)}] {row.name} {spec} seed {seed}: mean validation accuracy "
                f"{summary['mean_validation_accuracy']:.3f} ({time.perf_counter() - started:.0f} s; "
                f"{elapsed / 60:.1f} min so far, about {left / 60:.0f} min to go)"
            )
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    doc = aggregate(suite, str(suite_path), cells)
    if suite.commentary:
        doc["commentary"] = (suite_path.parent / suite.commentary).read_text()
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    write_report(doc, cells, report or out / "report.md", command or f"codistill bench {suite_path} --out {out}")
    return doc
