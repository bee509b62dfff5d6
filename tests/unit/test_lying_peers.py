"""2 of 10 regions publish confident lies: robust consensus keeps the honest regions accurate."""

import pytest

from scripts.lying_peers import LIARS, honest_accuracy


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liars")
    return {rule: honest_accuracy(rule, [], tmp) - honest_accuracy(rule, LIARS, tmp) for rule in ("mean", "attention", "median", "screened_mean")}


@pytest.mark.parametrize("rule", ["attention", "median", "screened_mean"])
def test_robust_rules_lose_at_most_two_points(drops, rule):
    assert drops[rule] <= 0.02, drops


def test_mean_is_poisoned_where_robust_rules_are_not(drops):
    # The plain mean has no defence; the README's failure model quotes the same numbers.
    assert drops["mean"] > 0.05 and drops["mean"] > 5 * max(drops["attention"], drops["median"]), drops
