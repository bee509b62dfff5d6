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
        rng = np.random.default_rng(seed)
        return {i: sorted(int(j) for j in rng.choice([j for j in range(n) if j != i], size=min(k, n - 1), replace=False)) for i in range(n)}
    raise ValueError(f"unknown topology '{kind}' (expected full, ring or random-k)")


def sources(graph: dict[int, list[int]]) -> dict[int, list[int]]:
    """Invert a send graph: region id -> sorted ids of regions that send to it."""
    inbound: dict[int, list[int]] = {i: [] for i in graph}
    for sender, targets in graph.items():
        for t in targets:
            inbound[t].append(sender)
    return {i: sorted(v) for i, v in inbound.items()}
