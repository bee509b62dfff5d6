"""2 of 10 regions publish confident lies: robust consensus keeps the honest regions accurate."""

import numpy as np
import pytest

from codistill.launch import driver
from tests.conftest import make_tiny_cfg

LIARS = [0, 1]


def _honest_accuracy(rule: str, liars: list[int], tmp_path) -> float:
    cfg = make_tiny_cfg()
    cfg.data.dataset = "digits"
    cfg.data.partition.kind = "iid"
    cfg.data.transfer_size = 400
    cfg.data.test_size = 360
    cfg.regions.count = 10
    cfg.regions.hidden = [64]
    cfg.train.steps = 200
    cfg.consensus.rule = rule
    cfg.chaos.liars = liars
    doc = driver.run(cfg, tmp_path / f"{rule}-{len(liars)}")
    return float(np.mean([r["test_accuracy"] for r in doc["regions"] if r["id"] not in LIARS]))


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liars")
    return {rule: _honest_accuracy(rule, [], tmp) - _honest_accuracy(rule, LIARS, tmp) for rule in ("mean", "attention", "median")}


@pytest.mark.parametrize("rule", ["attention", "median"])
def test_robust_rules_lose_at_most_two_points(drops, rule):
    assert drops[rule] <= 0.02, drops


def test_mean_is_poisoned_where_robust_rules_are_not(drops):
    # Recorded for the README's failure model: the plain mean has no defence.
    assert drops["mean"] > 0.05 and drops["mean"] > 5 * max(drops["attention"], drops["median"]), drops
