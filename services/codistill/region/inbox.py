"""A region's store of peer predictions: validation, freshness and rounds.

Anil et al. (2018) showed co-distillation tolerates stale predictions, so the
async mode keeps each peer's latest prediction per transfer example and uses
it while younger than a staleness bound. The sync mode keeps whole rounds so
a region distils from exactly the predictions of round r (reproducible).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import torch

from codistill.region import validation
from codistill.region.messages import MessageRejected, PeerCounters, PredictionBatch, Rejection


@dataclass(frozen=True)
class Pool:
    """Transfer examples with peer predictions, ready for sampling."""

    ids: torch.Tensor  # [n] transfer-set indices
    peers: torch.Tensor  # [P, n, C]
    mask: torch.Tensor  # [P, n] bool

    @property
    def empty(self) -> bool:
        return self.ids.numel() == 0


class PeerInbox:
    def __init__(
        self,
        run_id: str,
        sources: list[int],
        num_classes: int,
        transfer_size: int,
        rounds_kept: int = 4,
    ):
        self.run_id = run_id
        self.sources = list(sources)
        self.num_classes = num_classes
        self.transfer_size = transfer_size
        self._slot = {peer: i for i, peer in enumerate(self.sources)}
        self._cond = threading.Condition()
        P, M, C = len(self.sources), transfer_size, num_classes
        self._probs = torch.zeros(P, M, C)
        self._arrived = torch.full((P, M), -1, dtype=torch.int64)  # receiver step at arrival
        self._rounds: dict[int, dict[int, PredictionBatch]] = {}
        self._rounds_kept = rounds_kept
        self.counters = {peer: PeerCounters() for peer in self.sources}
        self.rejections: Counter[str] = Counter()
        self.clock = 0  # the receiver's current step, set by its trainer
        self.last_message_time: dict[int, float] = {}
        self._interrupted = False

    # ------------------------------------------------------------- receive
    def receive(self, batch: PredictionBatch, nbytes: int) -> int:
        """Validate and store; raises MessageRejected (and counts it) on any problem."""
        try:
            validation.check_content(batch, self.num_classes, self.transfer_size)
            with self._cond:
                last = self.counters[batch.sender].last_version if batch.sender in self.counters else -1
                validation.check_origin(batch, self.run_id, set(self.sources), last)
                self._store(batch, nbytes)
                self._cond.notify_all()
        except MessageRejected as exc:
            self.reject(exc.reason)
            raise
        return batch.version

    def reject(self, reason: Rejection) -> None:
        with self._cond:
            self.rejections[reason.value] += 1

    def _store(self, batch: PredictionBatch, nbytes: int) -> None:
        slot = self._slot[batch.sender]
        # Renormalise away float16 rounding so every target is an exact distribution.
        probs = batch.probs / batch.probs.sum(1, keepdim=True)
        batch = PredictionBatch(batch.run_id, batch.sender, batch.version, batch.step, batch.sample_ids, batch.temperature, probs)
        self._probs[slot, batch.sample_ids] = probs
        self._arrived[slot, batch.sample_ids] = self.clock
        self._rounds.setdefault(batch.version, {})[batch.sender] = batch
        for old in sorted(self._rounds)[: -self._rounds_kept]:
            del self._rounds[old]
        c = self.counters[batch.sender]
        c.last_version, c.messages, c.bytes = batch.version, c.messages + 1, c.bytes + nbytes
        self.last_message_time[batch.sender] = time.monotonic()

    # ---------------------------------------------------------------- read
    def bytes_received(self) -> int:
        with self._cond:
            return sum(c.bytes for c in self.counters.values())

    def interrupt(self) -> None:
        """Wake any wait_round now and make later ones return at once (the region is stopping)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def wait_round(self, version: int, needed: int, timeout_s: float) -> int:
        """Block until `needed` senders delivered `version` (or a newer one), or timeout. Returns how many did."""
        deadline = time.monotonic() + timeout_s

        def arrived() -> int:
            return sum(1 for c in self.counters.values() if c.last_version >= version)

        with self._cond:
            while arrived() < needed and not self._interrupted:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return arrived()

    def round_pool(self, version: int) -> Pool:
        """Predictions of exactly round `version`; senders that missed it are masked."""
        with self._cond:
            batches = dict(self._rounds.get(version, {}))
        P, C = len(self.sources), self.num_classes
        if not batches:
            return Pool(torch.empty(0, dtype=torch.int64), torch.empty(P, 0, C), torch.empty(P, 0, dtype=torch.bool))
        ids = torch.unique(torch.cat([b.sample_ids for b in batches.values()]))
        position = torch.full((self.transfer_size,), -1, dtype=torch.int64)
        position[ids] = torch.arange(ids.numel())
        peers = torch.zeros(P, ids.numel(), C)
        mask = torch.zeros(P, ids.numel(), dtype=torch.bool)
        for sender, b in batches.items():
            slot, pos = self._slot[sender], position[b.sample_ids]
            peers[slot, pos] = b.probs
            mask[slot, pos] = True
        return Pool(ids, peers, mask)

    def fresh_pool(self, now: int, max_staleness: int) -> Pool:
        """Latest predictions that arrived at most `max_staleness` receiver steps ago."""
        with self._cond:
            fresh = (self._arrived >= 0) & (now - self._arrived <= max_staleness)  # [P, M]
            ids = torch.nonzero(fresh.any(0)).flatten()
            return Pool(ids, self._probs[:, ids].clone(), fresh[:, ids])

    def age_seconds(self) -> dict[int, float]:
        """Per sender that has delivered, seconds since its last accepted message."""
        now = time.monotonic()
        with self._cond:
            return {p: now - t for p, t in self.last_message_time.items()}

    def staleness(self, now: int) -> dict[int, int]:
        """Per sender, receiver steps since its newest prediction arrived (-1: never)."""
        with self._cond:
            newest = self._arrived.max(1).values if self._arrived.numel() else torch.empty(0)
            return {p: (now - int(newest[i]) if int(newest[i]) >= 0 else -1) for p, i in self._slot.items()}


def sample(pool: Pool, size: int, generator: torch.Generator) -> Pool:
    """Draw up to `size` examples from a pool without replacement."""
    n = pool.ids.numel()
    if n <= size:
        return pool
    pick = torch.randperm(n, generator=generator)[:size]
    return Pool(pool.ids[pick], pool.peers[:, pick], pool.mask[:, pick])


__all__ = ["MessageRejected", "PeerInbox", "Pool", "sample"]
