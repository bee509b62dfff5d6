"""Splitting labeled data across regions.

`iid` deals examples out uniformly; `dirichlet` draws each class's share per
region from Dir(α) (Hsu et al., 2019), the usual model of label skew in
federated learning; `omit` hides chosen classes from chosen regions' labels,
as in Hinton et al.'s (2015) "no 3s" experiment.
"""

from __future__ import annotations

import numpy as np

from codistill.errors import PartitionError


def iid(labels: np.ndarray, n_regions: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and deal indices into n_regions near-equal slices."""
    if n_regions > len(labels):
        raise PartitionError(f"{n_regions} regions but only {len(labels)} labeled samples")
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_regions)]


def dirichlet(
    labels: np.ndarray,
    n_regions: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Per class, split its indices across regions with proportions ~ Dir(α).

    Redraws until every region holds at least `min_size` examples.
    """
    if alpha <= 0:
        raise PartitionError(f"alpha must be > 0, got {alpha}")
    if n_regions * min_size > len(labels):
        raise PartitionError(f"{n_regions} regions need at least {n_regions * min_size} samples, have {len(labels)}")
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_regions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(n_regions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for region, chunk in enumerate(np.split(idx, cuts)):
                parts[region].append(chunk)
        slices = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in slices) >= min_size:
            return slices
    raise PartitionError(
        f"could not give every one of {n_regions} regions {min_size}+ samples with alpha={alpha}; "
        "raise alpha or lower the region count"
    )


def omit(
    labels: np.ndarray,
    slices: list[np.ndarray],
    hidden_classes: list[int],
    blind_regions: list[int],
) -> list[np.ndarray]:
    """Move examples of hidden classes out of blind regions' slices.

    They are dealt round-robin to the regions that may see them, so the result
    still covers the data and stays disjoint.
    """
    n = len(slices)
    seeing = [r for r in range(n) if r not in set(blind_regions)]
    if not seeing:
        raise PartitionError("every region is blind to the hidden classes; nobody could teach them")
    hidden = np.isin(labels, hidden_classes)
    kept = [s[~hidden[s]] for s in slices]
    moved = np.sort(np.concatenate([s[hidden[s]] for r, s in enumerate(slices) if r in set(blind_regions)] or [np.array([], dtype=np.int64)]))
    result = [kept[r] if r in set(blind_regions) else slices[r] for r in range(n)]
    for j, index in enumerate(moved):
        target = seeing[j % len(seeing)]
        result[target] = np.append(result[target], index)
    return [np.sort(s).astype(np.int64) for s in result]
