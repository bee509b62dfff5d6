import numpy as np
import pytest

from codistill import partition


def _labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _assert_disjoint_cover(slices, n):
    joined = np.concatenate(slices)
    assert len(joined) == len(np.unique(joined)), "slices overlap"
    assert set(joined.tolist()) == set(range(n)), "slices do not cover the data"


def test_iid_is_disjoint_cover_and_balanced():
    y = _labels()
    slices = partition.iid(y, 7, np.random.default_rng(0))
    _assert_disjoint_cover(slices, len(y))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


@pytest.mark.parametrize("alpha", [0.1, 0.5, 10.0])
def test_dirichlet_is_disjoint_cover(alpha):
    y = _labels()
    slices = partition.dirichlet(y, 10, alpha, np.random.default_rng(1))
    _assert_disjoint_cover(slices, len(y))
    assert min(map(len, slices)) >= 1


def test_small_alpha_skews_labels_more():
    y = _labels(5000)

    def skew(alpha):
        slices = partition.dirichlet(y, 10, alpha, np.random.default_rng(2))
        return np.mean([np.bincount(y[s], minlength=10).max() / len(s) for s in slices])

    assert skew(0.1) > skew(100.0) + 0.2


def test_dirichlet_rejects_bad_alpha():
    with pytest.raises(partition.PartitionError, match="alpha"):
        partition.dirichlet(_labels(), 3, 0.0, np.random.default_rng(0))


def test_too_many_regions_is_an_error():
    with pytest.raises(partition.PartitionError, match="regions"):
        partition.iid(_labels(5), 6, np.random.default_rng(0))


def test_omit_hides_classes_from_blind_regions_and_still_covers():
    y = _labels()
    base = partition.iid(y, 4, np.random.default_rng(0))
    slices = partition.omit(y, base, [3], [0, 1])
    _assert_disjoint_cover(slices, len(y))
    for r in (0, 1):
        assert not np.isin(y[slices[r]], [3]).any()
    for r in (2, 3):
        assert (y[slices[r]] == 3).sum() > 0


def test_omit_needs_a_region_that_sees_the_class():
    y = _labels()
    with pytest.raises(partition.PartitionError, match="blind"):
        partition.omit(y, partition.iid(y, 2, np.random.default_rng(0)), [3], [0, 1])
