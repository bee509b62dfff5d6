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

from codistill import topology
from codistill.config import RunConfig
from codistill.data import Split
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


def region_data(split: Split, plan: RegionPlan) -> RegionData:
    ds = split.dataset
    return RegionData(
        x_labeled=ds.train.x[plan.labeled],
        y_labeled=ds.train.y[plan.labeled],
        x_transfer=ds.train.x[split.transfer],
        x_test=ds.test.x,
        y_test=ds.test.y,
        num_classes=ds.num_classes,
        x_val=ds.train.x[split.validation],
        y_val=ds.train.y[split.validation],
    )
