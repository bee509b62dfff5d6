"""2 of 10 regions publish confident lies: robust consensus keeps the honest regions accurate."""

import pytest

from codistill.consensus import Rule
from scripts.lying_peers import LIARS, honest_accuracy

# Rules with no defence against confident liars (README, failure model): the plain mean, `confidence`
# (trusts whoever is most certain) and `trimmed_mean` (cuts one value at each end of 9, not two liars).
UNDEFENDED = {Rule.MEAN, Rule.CONFIDENCE, Rule.TRIMMED_MEAN}
# Every other rule, from the enum, so a new rule must hold up here or be named above.
ROBUST = [rule.value for rule in Rule if rule not in UNDEFENDED]


@pytest.fixture(scope="module")
def drops(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liars")
    return {rule: honest_accuracy(rule, [], tmp) - honest_accuracy(rule, LIARS, tmp) for rule in ["mean", *ROBUST]}


@pytest.mark.parametrize("rule", ROBUST)
def test_robust_rules_lose_at_most_two_points(drops, rule):
    assert drops[rule] <= 0.02, drops


def test_mean_is_poisoned_where_robust_rules_are_not(drops):
    # The plain mean has no defence; the README's failure model quotes the same numbers.
    assert drops["mean"] > 0.05 and drops["mean"] > 5 * max(drops[rule] for rule in ROBUST), drops
