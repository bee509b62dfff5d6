"""`codistill bench SUITE.yaml`: every cell of a suite, then its aggregate and report.

Cells run in suite order, the strategies of one (row, seed) back to back on
one shared split; finished cells are reused (codistill.bench.cells). A report
never mixes cells from different code versions. Writes OUT/bench.json,
OUT/report.md and OUT/plots/*.png (codistill.report).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from codistill import config as config_mod
from codistill.bench.cells import cell_document, code_version, config_key, find_cell
from codistill.bench.suite import BenchRow, Suite, cell_config, cells_of, load_suite
from codistill.records import write_json

Announce = Callable[[str], None]


def run_bench(
    suite_path: Path,
    out: Path,
    seeds: int | None = None,
    announce: Announce = lambda line: None,
    report: Path | None = None,
    command: str | None = None,
    cached_only: bool = False,
) -> dict:
    from codistill.report.aggregate import aggregate
    from codistill.report.markdown import write_report

    suite = load_suite(suite_path)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cells = _Cells(suite, cells_dir, code_version(), cached_only).gather(cells_of(suite, seeds), announce)
    doc = aggregate(suite, str(suite_path), cells)
    if suite.commentary:
        doc["commentary"] = (suite_path.parent / suite.commentary).read_text()
    write_json(out / "bench.json", doc)
    write_report(doc, cells, report or out / "report.md", command or f"codistill bench {suite_path} --out {out}")
    return doc


class _Cells:
    """A suite's cells: read from the cache, or computed and cached."""

    def __init__(self, suite: Suite, folder: Path, version: str, cached_only: bool):
        self.suite, self.folder, self.version, self.cached_only = suite, folder, version, cached_only

    def config(self, row: BenchRow, spec: str, seed: int) -> config_mod.RunConfig:
        return cell_config(self.suite, row, spec, seed)

    def path(self, cfg: config_mod.RunConfig) -> Path:
        return self.folder / f"{config_key(cfg)}-{self.version}.json"

    def cached(self, cfg: config_mod.RunConfig) -> Path | None:
        return find_cell(self.folder, cfg, None if self.cached_only else self.version)

    def gather(self, plan: list[tuple[BenchRow, str, int]], announce: Announce) -> list[dict]:
        from codistill.launch import driver

        todo = [] if self.cached_only else [c for c in plan if self.cached(self.config(*c)) is None]
        todo = list({self.path(self.config(*c)): c for c in todo}.values())  # cells of one computation run once
        grpc = [cfg for cfg in (self.config(*c) for c in todo) if cfg.exchange.transport == "grpc" and cfg.strategy != "centralized"]
        ray_started, splits, cells, ran, suite_start = False, {}, [], 0, time.perf_counter()
        try:
            for done, (row, spec, seed) in enumerate(plan, 1):
                where = f"[{done}/{len(plan)}] {row.name} {spec} seed {seed}"
                cfg = self.config(row, spec, seed)
                found = self.cached(cfg)
                if found is not None:
                    cells.append({**json.loads(found.read_text()), "row": row.name, "spec": spec, "seed": seed})
                    announce(f"{where}: cached")
                    continue
                if self.cached_only:
                    announce(f"{where}: not run yet, left out")
                    continue
                if cfg.exchange.transport == "grpc" and grpc and not ray_started:
                    _start_ray_for(grpc)
                    ray_started = True
                if (row.name, seed) not in splits:
                    splits = {(row.name, seed): driver.prepare(cfg)}  # one split per (row, seed), shared by its strategies
                started = time.perf_counter()
                result = driver.run_strategy(cfg, splits[(row.name, seed)], cfg.strategy, driver.new_run_id(cfg.name))
                cells.append(self._save(cell_document(cfg, result, row.name, spec, seed, self.version), cfg))
                ran += 1
                elapsed = time.perf_counter() - suite_start
                left = elapsed / ran * (len(todo) - ran)  # a rough guess: cells differ in cost
                # Validation, not test: choices are made while watching a suite run.
                announce(
                    f"{where}: mean validation accuracy {result.mean_validation_accuracy:.3f} "
                    f"({time.perf_counter() - started:.0f} s; {elapsed / 60:.1f} min so far, about {left / 60:.0f} min to go)"
                )
                del result  # its predictions (every region's) are saved; they must not sit in the next cell's memory
        finally:
            if ray_started:
                import ray

                ray.shutdown()
        return cells

    def _save(self, doc: dict, cfg: config_mod.RunConfig) -> dict:
        write_json(self.path(cfg), doc, indent=None)
        return doc


def _start_ray_for(cells: list[config_mod.RunConfig]) -> None:
    """Start one local Ray big enough for every gRPC cell, so no cell's wall time includes Ray's start."""
    from codistill.launch.loopback import keep_local_ray_on_loopback

    keep_local_ray_on_loopback()
    from codistill.launch.ray_runner import ensure_ray

    cfg = cells[0].model_copy(deep=True)
    needed = max(int(np.ceil(c.regions.count * c.regions.num_cpus)) for c in cells)
    cfg.ray.num_cpus = max(os.cpu_count() or 1, needed)
    ensure_ray(cfg, None)
