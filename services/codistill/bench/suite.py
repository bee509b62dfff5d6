"""A benchmark suite: rows of settings, each comparing strategies on identical splits and seeds.

A suite names a base config and rows of settings; each row lists the
strategies it compares. A strategy spec is `STRATEGY[:RULE][@TRANSPORT]`:
`codistill:median` picks a consensus rule, `codistill:attention@grpc` runs the
same cell through real Ray and gRPC instead of the suite's transport. Every
(row, seed) has one split that all its strategies share.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codistill import config as config_mod
from codistill.config import STRATEGIES, ConfigError

# The transports a spec may name: the config's own vocabulary.
TRANSPORTS: tuple[str, ...] = get_args(config_mod.ExchangeConfig.model_fields["transport"].annotation)


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


def cells_of(suite: Suite, seeds: int | None = None) -> list[tuple[BenchRow, str, int]]:
    """Every (row, strategy, seed) of the suite, in run order: a (row, seed)'s strategies run back to back."""
    out = []
    for row in suite.rows:
        for seed in range(seeds or row.seeds or suite.seeds):
            out += [(row, spec, seed) for spec in row.strategies if seed == 0 or spec not in row.one_seed]
    return out
