import pytest

from codistill import topology


def test_full_sends_to_everyone_else():
    g = topology.neighbours("full", 4)
    assert g[0] == [1, 2, 3] and topology.sources(g)[2] == [0, 1, 3]


def test_ring_has_two_neighbours():
    g = topology.neighbours("ring", 5)
    assert g[0] == [1, 4] and all(len(v) == 2 for v in g.values())


def test_random_k_is_seeded_and_sized():
    a = topology.neighbours("random-k", 8, k=3, seed=1)
    assert a == topology.neighbours("random-k", 8, k=3, seed=1)
    assert all(len(v) == 3 and i not in v for i, v in a.items())


def test_bad_k_and_kind():
    with pytest.raises(ValueError):
        topology.neighbours("random-k", 3, k=3)
    with pytest.raises(ValueError, match="unknown topology"):
        topology.neighbours("star", 3)
