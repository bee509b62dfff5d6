"""Run-level convergence, computed by the driver from the regions' evaluations.

Disagreement is the mean over region pairs of the share of examples of a fixed
probe of the unlabeled transfer set on which their predicted classes differ;
the run counts as converged once it stays under a threshold for `patience`
consecutive evaluations. Convergence (and so `stop_when_converged`) never
looks at test inputs; the test split only gives the ensemble accuracy shown.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from codistill.config import MonitorConfig
from codistill.metrics import RunMetrics


def pairwise_disagreement(predictions: list[np.ndarray]) -> float:
    """Mean over pairs of regions of the share of examples where argmaxes differ; [N] arrays."""
    pairs = list(itertools.combinations(predictions, 2))
    if not pairs:
        return 0.0
    return float(np.mean([(a != b).mean() for a, b in pairs]))


class ConvergenceTracker:
    def __init__(self, threshold: float, patience: int):
        self.threshold, self.patience = threshold, patience
        self.streak = 0
        self.converged = False

    def update(self, disagreement: float) -> bool:
        self.streak = self.streak + 1 if disagreement < self.threshold else 0
        self.converged = self.converged or self.streak >= self.patience
        return self.converged


class RunMonitor:
    def __init__(
        self,
        cfg: MonitorConfig,
        run_id: str,
        y_test: np.ndarray,
        n_regions: int,
        serve_host: str | None,
        sd_folder: Path | None = None,
        announce=None,
    ):
        self.cfg = cfg
        self.sd_folder = sd_folder
        self._announce = announce
        self.targets: dict[int, str] = {}
        self.y_test = y_test
        self.n = n_regions
        self.tracker = ConvergenceTracker(cfg.disagreement_threshold, cfg.patience)
        # Per region, evaluations not yet combined: index k -> (step, accuracy, test probs, probe classes).
        self.pending: list[dict[int, tuple[int, float, np.ndarray, np.ndarray]]] = [{} for _ in range(n_regions)]
        self.counts = [0] * n_regions
        self.evaluations = 0
        self.records: list[dict[str, Any]] = []
        self.metrics = RunMetrics(run_id) if cfg.metrics and serve_host else None
        self.address = None
        if self.metrics is not None:
            port = self.metrics.serve(serve_host)
            self.address = f"{serve_host}:{port}"

    def observe(self, snapshots: list[dict]) -> bool:
        """Fold in new evaluations; returns True when the run should stop early.

        The k-th evaluation of the run combines every region's k-th evaluation.
        """
        stop = False
        for i, snap in enumerate(snapshots):
            for step, acc, probs, probe in snap.get("evals", []):
                self.pending[i][self.counts[i]] = (step, acc, np.asarray(probs, dtype=np.float32), np.asarray(probe))
                self.counts[i] += 1
        while all(self.evaluations in p for p in self.pending):
            k = self.evaluations
            entries = [p.pop(k) for p in self.pending]
            self.evaluations += 1
            stop = self._combine(k, entries) or stop
        return stop

    def _combine(self, k: int, entries: list[tuple[int, float, np.ndarray, np.ndarray]]) -> bool:
        probs = [e[2] for e in entries]
        disagreement = pairwise_disagreement([e[3] for e in entries])
        ensemble = float((np.mean(probs, axis=0).argmax(1) == self.y_test).mean())
        mean_acc = float(np.mean([e[1] for e in entries]))
        converged = self.tracker.update(disagreement) if self.n > 1 else False
        if self.metrics is not None:
            self.metrics.update(disagreement, ensemble, mean_acc, converged)
        self.records.append(
            {
                "kind": "run",
                "evaluation": k,
                "step": int(min(e[0] for e in entries)),
                "time": time.time(),
                "disagreement": disagreement,
                "ensemble_test_accuracy": ensemble,
                "mean_test_accuracy": mean_acc,
                "converged": converged,
            }
        )
        return converged and self.cfg.stop_when_converged

    def set_targets(self, region_targets: dict[int, str]) -> None:
        """Write (or rewrite, after a region restarted elsewhere) the file_sd targets."""
        if self.sd_folder is None or not region_targets or region_targets == self.targets:
            return
        first = not self.targets
        self.targets = dict(region_targets)
        sd = write_service_discovery(self.sd_folder, region_targets, self.address)
        prom = write_prometheus_config(self.sd_folder, sd)
        if self._announce:
            listing = ", ".join(f"{rid}={addr}" for rid, addr in sorted(region_targets.items()))
            if first:
                self._announce(f"metrics: regions {listing}; run-level {self.address}")
                self._announce(f"file_sd targets: {sd}  ({prometheus_command(prom)})")
            else:
                self._announce(f"metrics moved: regions {listing}")

    def drain(self) -> list[dict[str, Any]]:
        out, self.records = self.records, []
        return out

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def write_service_discovery(folder: Path, region_targets: dict[int, str], driver_target: str | None) -> Path:
    """Write a Prometheus file_sd targets file (atomically) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = [
        {"targets": [addr], "labels": {"role": "region"}}
        for rid, addr in sorted(region_targets.items())
    ]
    if driver_target:
        groups.append({"targets": [driver_target], "labels": {"role": "driver"}})
    path = folder / "targets.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(groups, indent=2))
    tmp.replace(path)
    return path


def prometheus_command(config: Path) -> str:
    """A Prometheus for this run: on loopback only, its data kept beside the run's other files."""
    data = config.parent / "data"
    return f"prometheus --config.file={config} --web.listen-address=127.0.0.1:9090 --storage.tsdb.path={data}"


PROMETHEUS_TEMPLATE = """# Scrapes one codistill run through its file_sd targets file.
# Run: {command}
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: codistill
    file_sd_configs:
      - files: ['{targets}']
        refresh_interval: 5s
"""


def write_prometheus_config(folder: Path, targets: Path, interval: str = "5s") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(PROMETHEUS_TEMPLATE.format(command=prometheus_command(path.resolve()), interval=interval, targets=targets.resolve()))
    return path
