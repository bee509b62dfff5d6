"""Run-level convergence, computed by the driver from the regions' evaluations.

Disagreement is the mean over region pairs of the share of examples of a fixed
probe of the unlabeled transfer set on which their predicted classes differ;
the run counts as converged once it stays under a threshold for `patience`
consecutive evaluations. Convergence (and so `stop_when_converged`) never
looks at test inputs; the test split only gives the ensemble accuracy shown.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from codistill.config import MonitorConfig, port_range
from codistill.metrics import RunMetrics
from codistill.records import Evaluation, ProgressSnapshot, RunEvent, write_json
from codistill.region.ports import bind_in_range


def ensemble_accuracy(probs: list[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the average of all regions' predictions ([N, C] each); NaN on no examples."""
    if len(labels) == 0:
        return float("nan")
    return float((np.mean(probs, axis=0).argmax(1) == labels).mean())


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
        strategy: str,
        y_test: np.ndarray,
        n_regions: int,
        serve_host: str | None,
        sd_folder: Path | None = None,
        announce=None,
    ):
        self.cfg = cfg
        self.strategy = strategy
        self.sd_folder = sd_folder
        self._announce = announce
        self.targets: dict[int, str] = {}
        self.y_test = y_test
        self.n = n_regions
        self.tracker = ConvergenceTracker(cfg.disagreement_threshold, cfg.patience)
        # Per region, evaluations not yet combined, by index k.
        self.pending: list[dict[int, Evaluation]] = [{} for _ in range(n_regions)]
        self.counts = [0] * n_regions
        self.evaluations = 0
        self.records: list[RunEvent] = []
        self.metrics = RunMetrics(run_id, strategy) if cfg.metrics and serve_host else None
        self.address = None
        if self.metrics is not None:
            metrics = self.metrics
            port = bind_in_range(lambda p: metrics.serve(serve_host, p), port_range(cfg.port_range), what="monitor.port_range", host=serve_host)
            self.address = f"{serve_host}:{port}"

    def observe(self, snapshots: list[ProgressSnapshot]) -> bool:
        """Fold in new evaluations; returns True when the run should stop early.

        The k-th evaluation of the run combines every region's k-th evaluation.
        """
        stop = False
        for i, snap in enumerate(snapshots):
            for e in snap.evals:
                self.pending[i][self.counts[i]] = e
                self.counts[i] += 1
        while all(self.evaluations in p for p in self.pending):
            k = self.evaluations
            entries = [p.pop(k) for p in self.pending]
            self.evaluations += 1
            stop = self._combine(k, entries) or stop
        return stop

    def _combine(self, k: int, entries: list[Evaluation]) -> bool:
        disagreement = pairwise_disagreement([np.asarray(e.probe) for e in entries])
        ensemble = ensemble_accuracy([np.asarray(e.test_probs, dtype=np.float32) for e in entries], self.y_test)
        mean_acc = float(np.mean([e.accuracy for e in entries]))
        converged = self.tracker.update(disagreement) if self.n > 1 else False
        if self.metrics is not None:
            self.metrics.update(disagreement, ensemble, mean_acc, converged)
        self.records.append(RunEvent(k, int(min(e.step for e in entries)), time.time(), disagreement, ensemble, mean_acc, converged))
        return converged and self.cfg.stop_when_converged

    def set_targets(self, region_targets: dict[int, str]) -> None:
        """Write (or rewrite, after a region restarted elsewhere) the file_sd targets."""
        if self.sd_folder is None or not region_targets or region_targets == self.targets:
            return
        first = not self.targets
        self.targets = dict(region_targets)
        sd = write_service_discovery(self.sd_folder, self.strategy, region_targets, self.address)
        prom = write_prometheus_config(self.sd_folder, self.sd_folder / TARGETS_GLOB)
        if self._announce:
            listing = ", ".join(f"{rid}={addr}" for rid, addr in sorted(region_targets.items()))
            if first:
                self._announce(f"metrics: regions {listing}; run-level {self.address}")
                self._announce(f"file_sd targets: {sd}  ({prometheus_command(prom)})")
            else:
                self._announce(f"metrics moved: regions {listing}")

    def drain(self) -> list[RunEvent]:
        out, self.records = self.records, []
        return out

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


# One file_sd file per strategy, so a --compare run's later strategy never
# overwrites the earlier one's targets; prometheus.yml reads them all by glob.
TARGETS_GLOB = "targets-*.json"


def targets_file(folder: Path, strategy: str) -> Path:
    return folder / TARGETS_GLOB.replace("*", strategy)


def write_service_discovery(folder: Path, strategy: str, region_targets: dict[int, str], driver_target: str | None) -> Path:
    """Write `strategy`'s Prometheus file_sd targets file (atomically) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    # node_ip: the machine a target runs on, for dashboards of a multi-node run (the region label
    # comes from the endpoint itself; setting it here too would rename the scraped one).
    groups = [
        {"targets": [addr], "labels": {"role": "region", "strategy": strategy, "node_ip": _host(addr)}}
        for rid, addr in sorted(region_targets.items())
    ]
    if driver_target:
        groups.append({"targets": [driver_target], "labels": {"role": "driver", "strategy": strategy, "node_ip": _host(driver_target)}})
    return write_json(targets_file(folder, strategy), groups)


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def prometheus_command(config: Path) -> str:
    """A Prometheus for this run: on loopback only, its data kept beside the run's other files."""
    data = config.parent / "data"
    return f"prometheus --config.file={config} --web.listen-address=127.0.0.1:9090 --storage.tsdb.path={data}"


PROMETHEUS_TEMPLATE = """# Scrapes one codistill run through its file_sd targets files, one per strategy.
# Run: {command}
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: codistill
    # Series carry their own run/strategy labels; honouring them keeps the
    # targets' equal `strategy` label from adding an `exported_strategy` copy.
    honor_labels: true
    file_sd_configs:
      - files: ['{targets}']
        refresh_interval: 5s
"""


def write_prometheus_config(folder: Path, targets: Path, interval: str = "5s") -> Path:
    """prometheus.yml in `folder`, reading the file_sd file (or glob of files) `targets`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prometheus.yml"
    path.write_text(PROMETHEUS_TEMPLATE.format(command=prometheus_command(path.resolve()), interval=interval, targets=targets.resolve()))
    return path
