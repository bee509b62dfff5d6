"""Who sends predictions to whom.

A topology maps each region to the peers it sends to. A region's *sources*
(the peers whose predictions feed its consensus) follow from that.
"""

from __future__ import annotations

import numpy as np


def neighbours(kind: str, n: int, k: int = 2, seed: int = 0) -> dict[int, list[int]]:
    """Region id -> sorted list of region ids it sends to."""
    if n < 1:
        raise ValueError("need at least one region")
    if kind == "full":
        return {i: [j for j in range(n) if j != i] for i in range(n)}
    if kind == "ring":
        return {i: sorted({(i - 1) % n, (i + 1) % n} - {i}) for i in range(n)}
    if kind == "random-k":
        if n > 1 and not 1 <= k <= n - 1:
            raise ValueError(f"random-k needs 1 <= k <= {n - 1}, got {k}")
        return _random_k(n, k, np.random.default_rng(seed))
    raise ValueError(f"unknown topology '{kind}' (expected full, ring or random-k)")


def _random_k(n: int, k: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """k random peers per region, the first along a random cycle through all regions.

    Drawing k peers independently can leave a region that nobody sends to, which
    then never distils; the cycle gives every region a sender and makes the graph
    strongly connected, so what one region knows can reach every other.
    """
    if n == 1:
        return {0: []}
    order = [int(i) for i in rng.permutation(n)]
    successor = {order[j]: order[(j + 1) % n] for j in range(n)}
    graph = {}
    for i in range(n):
        others = [j for j in range(n) if j not in (i, successor[i])]
        extra = rng.choice(others, size=k - 1, replace=False) if k > 1 else []
        graph[i] = sorted([successor[i], *(int(j) for j in extra)])
    return graph


def sources(graph: dict[int, list[int]]) -> dict[int, list[int]]:
    """Invert a send graph: region id -> sorted ids of regions that send to it."""
    inbound: dict[int, list[int]] = {i: [] for i in graph}
    for sender, targets in graph.items():
        for t in targets:
            inbound[t].append(sender)
    return {i: sorted(v) for i, v in inbound.items()}
