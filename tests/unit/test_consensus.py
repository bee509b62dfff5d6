import pytest
import torch
from torch.testing import assert_close

from codistill.consensus import Rule, cap_weights, consensus, peer_agreement, screen_peers

# Every rule, from the enum itself, so a new rule is held to the rule-wide properties at once.
RULES = list(Rule)
# Rules with no defence against a confident liar; every other rule must bound a lying minority.
UNDEFENDED = {Rule.MEAN, Rule.ATTENTION, Rule.CONFIDENCE}
ROBUST = [rule for rule in Rule if rule not in UNDEFENDED]


def _random_probs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g) * 2, dim=-1)


@pytest.mark.parametrize("rule", RULES)
def test_weights_sum_to_one(rule):
    peers = _random_probs(5, 8, 10)
    own = _random_probs(8, 10, seed=1)
    mask = torch.ones(5, 8, dtype=torch.bool)
    mask[2, :4] = False
    c = consensus(rule, own, peers, mask, beta=3.0)
    assert_close(c.weights.sum(0), torch.ones(8))
    assert_close(c.target.sum(1), torch.ones(8))


@pytest.mark.parametrize("rule", RULES)
def test_identical_peers_give_their_common_prediction(rule):
    common = _random_probs(6, 10)
    peers = common.expand(4, 6, 10).clone()
    own = _random_probs(6, 10, seed=3)
    c = consensus(rule, own, peers, torch.ones(4, 6, dtype=torch.bool), beta=4.0)
    assert_close(c.target, common, atol=1e-6, rtol=1e-5)


def test_large_beta_concentrates_on_most_similar_peer():
    own = _random_probs(7, 10)
    far = _random_probs(3, 7, 10, seed=9)
    near = 0.9 * own + 0.1 * _random_probs(7, 10, seed=4)
    peers = torch.cat([far[:2], near[None], far[2:]])  # peer 2 is the most similar
    mask = torch.ones(4, 7, dtype=torch.bool)
    low = consensus("attention", own, peers, mask, beta=1.0)
    high = consensus("attention", own, peers, mask, beta=500.0)
    assert (high.weights[2] > 0.99).all()
    assert (high.weights[2] > low.weights[2]).all()
    assert_close(high.target, near, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("rule", RULES)
def test_masked_peers_get_zero_weight(rule):
    peers = _random_probs(4, 5, 3)
    own = _random_probs(5, 3, seed=2)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 1, 0], [0, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    c = consensus(rule, own, peers, mask, beta=2.0)
    assert (c.weights[~mask] == 0).all()
    # An example no peer covered has no target and is flagged invalid.
    assert not c.valid[4] and (c.target[4] == 0).all()
    # Changing a masked peer's values changes nothing.
    poisoned = peers.clone()
    poisoned[~mask] = torch.tensor([1.0, 0.0, 0.0])
    assert_close(consensus(rule, own, poisoned, mask, beta=2.0).target, c.target)


@pytest.mark.parametrize("rule", ROBUST)
def test_robust_rules_ignore_a_lying_minority(rule):
    honest = torch.tensor([0.7, 0.2, 0.1]).expand(4, 1, 3) + torch.tensor([0.0, 0.01, -0.01, 0.02]).view(4, 1, 1) * torch.tensor([1.0, -1.0, 0.0])
    liar = torch.tensor([[[0.0, 0.0, 1.0]]])
    peers = torch.cat([honest, liar])
    # beta and trim at their config defaults.
    c = consensus(rule, torch.full((1, 3), 1 / 3), peers, torch.ones(5, 1, dtype=torch.bool), beta=5.0, trim=0.2)
    assert c.target[0].argmax() == 0
    assert c.target[0, 2] < 0.2
    mean = consensus("mean", torch.full((1, 3), 1 / 3), peers, torch.ones(5, 1, dtype=torch.bool))
    assert mean.target[0, 2] > c.target[0, 2]


def test_confidence_prefers_low_entropy_peers():
    sharp = torch.tensor([[0.97, 0.02, 0.01]])
    flat = torch.tensor([[0.4, 0.3, 0.3]])
    c = consensus("confidence", flat, torch.stack([sharp, flat]), torch.ones(2, 1, dtype=torch.bool), beta=5.0)
    assert c.weights[0, 0] > c.weights[1, 0]


def test_weight_cap_limits_every_peer_and_keeps_sum():
    w = torch.tensor([[0.9, 0.5], [0.05, 0.3], [0.05, 0.2]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    capped = cap_weights(w, mask, 0.4)
    assert (capped <= 0.4 + 1e-6).all()
    assert_close(capped.sum(0), torch.ones(2))
    # The excess goes to the uncapped peers in proportion to their weights.
    assert_close(capped, torch.tensor([[0.4, 0.4], [0.3, 0.36], [0.3, 0.24]]))
    assert_close(cap_weights(w, mask, 1.0), w)  # a cap of 1 caps nothing


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="expected own"):
        consensus(Rule.MEAN, torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 2, dtype=torch.bool))


def test_robust_attention_discounts_liars():
    honest = torch.tensor([0.7, 0.2, 0.1]).expand(4, 1, 3).clone()
    liar = torch.tensor([[[0.0, 0.0, 1.0]]])
    peers = torch.cat([honest, liar, liar])
    c = consensus("robust_attention", torch.full((1, 3), 1 / 3), peers, torch.ones(6, 1, dtype=torch.bool), beta=10.0)
    assert c.weights[4:].sum() < 0.01 and c.target[0].argmax() == 0


def _skewed_peers(p: int, b: int, c: int, seed: int = 0) -> torch.Tensor:
    """Honest peers with different label skews: each is sure about its own classes, vague elsewhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(p, b, c, generator=g)
    truth = torch.randint(0, c, (b,), generator=g)
    for i in range(p):
        known = torch.arange(c)[(torch.arange(c) + i) % 3 == 0]  # each peer knows a third of the classes
        hit = torch.isin(truth, known)
        logits[i, hit, truth[hit]] += 4.0
    return torch.softmax(logits / 2, -1)


def test_screened_mean_leaves_out_confident_liars():
    honest = _skewed_peers(7, 64, 10)
    mean = honest.mean(0)
    liars = torch.nn.functional.one_hot(mean.argmin(1), 10).float().expand(2, 64, 10)
    peers = torch.cat([honest, liars])
    mask = torch.ones(9, 64, dtype=torch.bool)
    c = consensus("screened_mean", torch.full((64, 10), 0.1), peers, mask)
    assert c.weights[7:].abs().max() == 0  # both liars out, on every example
    assert_close(c.target, mean)  # the plain mean of the honest peers
    assert_close(c.weights.sum(0), torch.ones(64))
    plain = consensus("mean", torch.full((64, 10), 0.1), peers, mask)
    assert (plain.target.argmax(1) != mean.argmax(1)).any()  # the liars do move the plain mean


def test_screened_mean_is_the_mean_when_nobody_lies():
    for seed in range(5):
        peers = _skewed_peers(9, 128, 10, seed)
        mask = torch.ones(9, 128, dtype=torch.bool)
        assert screen_peers(peers, mask, 3.0).all(), seed
        own = torch.full((128, 10), 0.1)
        assert_close(consensus("screened_mean", own, peers, mask).target, consensus("mean", own, peers, mask).target)


def test_screening_needs_three_peers_and_spares_identical_ones():
    same = torch.tensor([0.6, 0.3, 0.1]).expand(5, 4, 3).clone()
    mask = torch.ones(5, 4, dtype=torch.bool)
    assert screen_peers(same, mask, 3.0).all()  # MAD 0: the margin keeps rounding noise in
    two = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]])
    assert screen_peers(two, torch.ones(2, 1, dtype=torch.bool), 3.0).all()
    mask[4] = False  # an absent peer is never kept
    assert not screen_peers(same, mask, 3.0)[4]
    agreement = peer_agreement(same, torch.ones(5, 4, dtype=torch.bool))
    assert_close(agreement, torch.ones(5))
