"""How a region's own predictions relate to the consensus it distils to.

Per distillation step: the KL to the consensus (the distillation loss of the
step, without its T² scale), the share of examples where the consensus and
the region pick the same class, and the weight each peer got. KL and
agreement are averaged between evaluations; peer weights over the run.
"""

from __future__ import annotations

import numpy as np

from codistill import consensus as consensus_math
from codistill.metrics import MetricsSink
from codistill.region.learner import StepOutcome


class ConsensusStats:
    def __init__(self, sources: list[int], temperature: float, metrics: MetricsSink):
        self.sources, self.temperature, self.metrics = list(sources), temperature, metrics
        self._kl: list[float] = []
        self._agree: list[float] = []
        self._weight_sums: dict[int, float] = {}
        self._weight_count = 0

    def observe(self, outcome: StepOutcome) -> None:
        c, own = outcome.consensus, outcome.own
        if c is None or not c.valid.any():
            return
        t, o = c.target[c.valid], own[c.valid]
        kl = outcome.loss_distill / self.temperature**2
        agree = float((t.argmax(1) == o.argmax(1)).float().mean())
        w = c.weights[:, c.valid]  # [P, n]
        per_peer = dict(zip(self.sources, w.mean(1).tolist()))
        self.metrics.consensus(kl, agree, per_peer, float(consensus_math.entropy(w.T).mean()))
        self._kl.append(kl)
        self._agree.append(agree)
        for peer, weight in per_peer.items():
            self._weight_sums[peer] = self._weight_sums.get(peer, 0.0) + weight
        self._weight_count += 1

    def window(self) -> tuple[float | None, float | None]:
        """Mean KL and agreement since the previous call (None: no distillation step in between)."""
        kl = float(np.mean(self._kl)) if self._kl else None
        agree = float(np.mean(self._agree)) if self._agree else None
        self._kl, self._agree = [], []
        return kl, agree

    def peer_weights(self) -> dict[int, float]:
        """Mean consensus weight of each peer over the run."""
        return {p: total / self._weight_count for p, total in self._weight_sums.items()}

    def state(self) -> dict:
        return {"weight_sums": (dict(self._weight_sums), self._weight_count)}

    def load_state(self, state: dict) -> None:
        sums, count = state.get("weight_sums", ({}, 0))
        self._weight_sums, self._weight_count = dict(sums), count
