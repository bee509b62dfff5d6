"""Turn a config and a split into the regions a strategy runs.

`codistill`, `independent`, `selftrain` and `fedavg` run one region per
labeled slice; the first exchanges predictions, the second never exchanges,
the third never exchanges but distils from its own earlier predictions on the
transfer set (codistill's compute without its peers), the fourth averages
weights every `exchange.average_every` steps. `centralized` runs a single
model on the pooled labeled data with the same total number of steps as all
regions together, the usual upper reference.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from codistill import topology
from codistill.config import RunConfig
from codistill.data import Split, to_float
from codistill.records import RegionData, RegionPlan, Role


def plan_regions(cfg: RunConfig, split: Split, strategy: str) -> list[RegionPlan]:
    if strategy == "fedavg" and cfg.regions.models and len(set(cfg.regions.models)) > 1:
        raise ValueError("fedavg needs one architecture for all regions")
    if strategy == "centralized":
        return [RegionPlan(0, cfg.regions.architecture(0), cfg.train.steps * cfg.regions.count, Role.ALONE, split.labeled)]
    n = cfg.regions.count
    role = _role(strategy, n)
    exchange = role is Role.PREDICTIONS
    graph = topology.neighbours(cfg.exchange.topology, n, cfg.exchange.k, cfg.seed) if exchange else {i: [] for i in range(n)}
    inbound = topology.sources(graph)
    return [
        RegionPlan(i, cfg.regions.architecture(i), cfg.train.steps, role, split.slices[i], tuple(graph[i]), tuple(inbound[i]))
        for i in range(n)
    ]


def _role(strategy: str, regions: int) -> Role:
    if strategy == "selftrain":
        return Role.SELF
    if regions > 1 and strategy == "codistill":
        return Role.PREDICTIONS
    if regions > 1 and strategy == "fedavg":
        return Role.WEIGHTS
    return Role.ALONE


@dataclass(frozen=True, eq=False)
class SharedData:
    """What every region of a run reads and none writes: the transfer, test and validation sets.

    Made once per split, as the float32 (and int64) arrays regions train on, and read-only: regions
    wrap these very arrays (or Ray's object-store views of them) as tensors, without a copy each.
    """

    x_transfer: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @classmethod
    def of(cls, split: Split) -> SharedData:
        train, test = split.dataset.train, split.dataset.test
        arrays = (
            to_float(train.x[split.transfer]), to_float(test.x), _labels(test.y),
            to_float(train.x[split.validation]), _labels(train.y[split.validation]),
        )
        for a in arrays:
            a.setflags(write=False)  # shared by every region: a write would reach them all
        return cls(*arrays, split.dataset.num_classes)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The five arrays, in field order (what goes into Ray's object store)."""
        return self.x_transfer, self.x_test, self.y_test, self.x_val, self.y_val


# One SharedData per live split, so the regions of every runner in this process share one copy;
# dropped with its split.
_shared: dict[int, SharedData] = {}
_shared_lock = threading.Lock()


def shared_data(split: Split) -> SharedData:
    """The split's SharedData, made on first use and reused while the split lives."""
    with _shared_lock:
        key = id(split)
        if key not in _shared:
            _shared[key] = SharedData.of(split)
            weakref.finalize(split, _shared.pop, key, None)
        return _shared[key]


def region_data(split: Split, plan: RegionPlan, shared: SharedData | None = None) -> RegionData:
    """The region's own labeled slice (float32, its own copy) beside the run's shared arrays (not copied)."""
    ds, shared = split.dataset, shared or shared_data(split)
    return RegionData(
        x_labeled=to_float(ds.train.x[plan.labeled]),
        y_labeled=_labels(ds.train.y[plan.labeled]),
        x_transfer=shared.x_transfer,
        x_test=shared.x_test,
        y_test=shared.y_test,
        num_classes=shared.num_classes,
        x_val=shared.x_val,
        y_val=shared.y_val,
    )


def _labels(y: np.ndarray) -> np.ndarray:
    return np.array(y, dtype=np.int64)  # a copy: the dataset's own arrays stay as the user gave them
