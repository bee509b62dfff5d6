"""Orchestrates a run: split once, run each strategy on it, gather results.

Data flows one way: config -> split -> regions (train <-> exchange) ->
results. The driver never relays predictions; it only places regions, wires
them, watches progress and collects their final evaluations.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codistill import config as config_mod
from codistill.config import RunConfig
from codistill.data import Split, load_dataset, make_split
from codistill.launch.inprocess import run_inprocess
from codistill.launch.loopback import keep_local_ray_on_loopback
from codistill.launch.monitor import RunMonitor
from codistill.launch.plan import plan_regions
from codistill.region.trainer import RegionResult


@dataclass
class StrategyResult:
    strategy: str
    regions: list[RegionResult]
    ensemble_test_accuracy: float
    wall_seconds: float
    transport: str
    ensemble_validation_accuracy: float = float("nan")

    @property
    def mean_test_accuracy(self) -> float:
        return float(np.mean([r.test_accuracy for r in self.regions]))

    def summary(self) -> dict[str, Any]:
        accs = [r.test_accuracy for r in self.regions]
        return {
            "strategy": self.strategy,
            "transport": self.transport,
            "mean_test_accuracy": self.mean_test_accuracy,
            "min_test_accuracy": float(np.min(accs)),
            "max_test_accuracy": float(np.max(accs)),
            "ensemble_test_accuracy": self.ensemble_test_accuracy,
            # What every choice is made on (the test figures above only report).
            "mean_validation_accuracy": float(np.mean([r.validation_accuracy for r in self.regions])),
            "ensemble_validation_accuracy": self.ensemble_validation_accuracy,
            # The regions' own compute, summed: strategies differ in work per step.
            "cpu_seconds": float(sum(r.cpu_seconds for r in self.regions)),
            "bytes_sent": int(sum(r.bytes_sent for r in self.regions)),
            "bytes_received": int(sum(r.bytes_received for r in self.regions)),
            "wall_seconds": self.wall_seconds,
            "regions": [r.summary() for r in self.regions],
        }


def ensemble_accuracy(probs: list[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the average of all regions' predictions ([N, C] each); NaN on no examples."""
    if len(labels) == 0:
        return float("nan")
    mean = np.mean(probs, axis=0)
    return float((mean.argmax(1) == labels).mean())


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def prepare(cfg: RunConfig) -> Split:
    """Load data and split it; raises DataError/PartitionError before anything starts."""
    return make_split(cfg, load_dataset(cfg))


def run_strategy(
    cfg: RunConfig,
    split: Split,
    strategy: str,
    run_id: str,
    *,
    address: str | None = None,
    on_progress: Callable[[list[dict], list[dict]], None] | None = None,
    out_dir: Path | None = None,
    announce: Callable[[str], None] | None = None,
) -> StrategyResult:
    plans = plan_regions(cfg, split, strategy)

    def make_monitor(host: str | None, region_targets: dict[int, str]) -> RunMonitor:
        sd_folder = out_dir / "prometheus" if out_dir is not None else None
        monitor = RunMonitor(cfg.monitor, run_id, split.dataset.test.y, len(plans), host, sd_folder, announce)
        monitor.set_targets(region_targets)
        return monitor

    checkpoints = None
    if cfg.fault.checkpoint_every:
        base = Path(cfg.fault.checkpoint_dir) if cfg.fault.checkpoint_dir else (out_dir / "checkpoints" if out_dir else None)
        checkpoints = base / strategy if base else None

    start = time.perf_counter()
    if cfg.exchange.transport == "inprocess":
        results = run_inprocess(cfg, split, plans, run_id, make_monitor, on_progress, checkpoints=checkpoints)
    else:
        if not (address or cfg.ray.address or os.environ.get("RAY_ADDRESS")):
            keep_local_ray_on_loopback()  # before Ray is imported
        from codistill.launch.ray_runner import ensure_ray, run_on_ray

        local = ensure_ray(cfg, address)
        if announce:
            import ray

            where = "local Ray" if local else "Ray cluster"
            announce(f"{strategy}: {where} at {ray.get_runtime_context().gcs_address}")
        results = run_on_ray(
            cfg, split, plans, run_id, local=local, make_monitor=make_monitor, on_progress=on_progress, checkpoints=checkpoints
        )
    wall = time.perf_counter() - start
    return StrategyResult(
        strategy,
        results,
        ensemble_accuracy([r.test_probs for r in results], split.dataset.test.y),
        wall,
        cfg.exchange.transport,
        ensemble_accuracy([r.validation_probs for r in results], split.dataset.train.y[split.validation]),
    )


def write_results(out_dir: Path, cfg: RunConfig, run_id: str, split: Split, summaries: dict[str, dict]) -> dict:
    doc = {
        "run_id": run_id,
        **summaries[cfg.strategy],
        "dataset": {
            "name": split.dataset.name,
            "train": int(len(split.dataset.train.y)),
            "test": int(len(split.dataset.test.y)),
            "transfer": int(len(split.transfer)),
            "validation": int(len(split.validation)),
            "labeled_per_region": [int(len(s)) for s in split.slices],
            "classes": split.dataset.class_names,
        },
        "config": cfg.model_dump(mode="json"),
    }
    if len(summaries) > 1:
        doc["compare"] = dict(summaries)
    _write_json(out_dir / "results.json", doc)
    return doc


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


STATE_FILE = "state.json"


class ResumeError(ValueError):
    pass


def load_state(out_dir: Path) -> dict:
    """What `--resume` needs: run id, strategy order, finished strategies' summaries."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise ResumeError(f"{out_dir} has no {STATE_FILE}: not a codistill run folder, or it never started")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ResumeError(f"{path} is damaged") from None


def run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    compare: list[str] | None = None,
    address: str | None = None,
    on_progress: Callable[[str, list[dict]], None] | None = None,
    split: Split | None = None,
    announce: Callable[[str], None] | None = None,
    resume: bool = False,
) -> dict:
    """Run cfg.strategy (and each of `compare`) on one split; write results into out_dir.

    With `resume`, continue the run recorded in out_dir: finished strategies are
    kept, and regions of the unfinished one restore their latest checkpoints.
    """
    split = split or prepare(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        state = load_state(out_dir)
    else:
        strategies = [cfg.strategy] + [s for s in (compare or []) if s != cfg.strategy]
        state = {"run_id": new_run_id(cfg.name), "strategies": strategies, "done": {}}
        # A fresh run must never resume from checkpoints another run left here (--force).
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        (out_dir / "config.yaml").write_text(config_mod.dump(cfg))
        _write_json(out_dir / STATE_FILE, state)
    run_id = state["run_id"]
    with open(out_dir / "metrics.jsonl", "a" if resume else "w") as metrics:
        for strategy in state["strategies"]:
            if strategy in state["done"]:
                continue

            def progress(snapshots: list[dict], run_records: list[dict], strategy: str = strategy) -> None:
                for rec in [r for snap in snapshots for r in snap["records"]] + run_records:
                    metrics.write(json.dumps({"strategy": strategy, **rec}) + "\n")
                metrics.flush()
                if on_progress:
                    on_progress(strategy, snapshots)

            result = run_strategy(
                cfg, split, strategy, run_id, address=address, on_progress=progress, out_dir=out_dir, announce=announce
            )
            state["done"][strategy] = result.summary()
            _write_json(out_dir / STATE_FILE, state)
            # A strategy that fails later must not cost the results of those that finished.
            write_results(out_dir, cfg, run_id, split, {s: state["done"][s] for s in state["strategies"] if s in state["done"]})
    return write_results(out_dir, cfg, run_id, split, {s: state["done"][s] for s in state["strategies"]})
