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


# sync: how many rounds past its own a region takes from a peer. Under a full quorum a peer is at
# most one round ahead (it needs this region's round r before it publishes r+1); one more covers
# the moment between this region's publish and its trainer setting `own_version`. Anything
# further is refused and leaves the sender's last version alone, so a far-future message cannot
# turn the real sender's later rounds into replays, nor hold rounds for the future.
SYNC_VERSION_LEAD = 2


class PeerInbox:
    def __init__(
        self,
        run_id: str,
        sources: list[int],
        num_classes: int,
        transfer_size: int,
        rounds_kept: int = 4,
        *,
        temperature: float | None = None,
        version_lead: int | None = None,
        last_round: int | None = None,
    ):
        """`temperature`: the receiver's own distill temperature, which every message must match.
        `version_lead`: versions beyond own_version + lead are refused (sync rounds).
        `last_round`: no honest region publishes past this version in this run."""
        self.run_id = run_id
        self.sources = list(sources)
        self.num_classes = num_classes
        self.transfer_size = transfer_size
        self.temperature = temperature
        self.version_lead = version_lead
        self.last_round = last_round
        self._slot = {peer: i for i, peer in enumerate(self.sources)}
        self._cond = threading.Condition()
        P, M, C = len(self.sources), transfer_size, num_classes
        self._probs = torch.zeros(P, M, C)
        self._arrived = torch.full((P, M), -1, dtype=torch.int64)  # receiver step at arrival
        # Rounds are kept per sender, so no peer's messages can evict another's.
        self._rounds: dict[int, dict[int, PredictionBatch]] = {peer: {} for peer in self.sources}
        self._rounds_kept = rounds_kept
        # Per sender, the newest version refused as too far ahead since its last accepted message:
        # a region that fell behind (restarted, hung) need not wait for rounds its peers have left.
        self._ahead: dict[int, int] = {}
        self.counters = {peer: PeerCounters() for peer in self.sources}
        self.rejections: Counter[str] = Counter()
        self.clock = 0  # the receiver's current step, set by its trainer
        self.own_version = -1  # the receiver's newest published round, set by its trainer
        self.last_message_time: dict[int, float] = {}
        self._interrupted = False

    # ------------------------------------------------------------- receive
    def newest_version(self) -> int | None:
        """The newest version taken now (None: no bound)."""
        bounds = [] if self.last_round is None else [self.last_round]
        if self.version_lead is not None:
            bounds.append(self.own_version + self.version_lead)
        return min(bounds, default=None)

    def receive(self, batch: PredictionBatch, nbytes: int) -> int:
        """Validate and store; raises MessageRejected (and counts it) on any problem."""
        try:
            validation.check_content(batch, self.num_classes, self.transfer_size, self.temperature)
            with self._cond:
                last = self.counters[batch.sender].last_version if batch.sender in self.counters else -1
                try:
                    validation.check_origin(batch, self.run_id, set(self.sources), last, self.newest_version())
                except MessageRejected as exc:
                    if exc.reason is Rejection.FUTURE_VERSION:
                        self._ahead[batch.sender] = max(batch.version, self._ahead.get(batch.sender, -1))
                        self._cond.notify_all()
                    raise
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
        rounds = self._rounds[batch.sender]
        rounds[batch.version] = batch
        for old in sorted(rounds)[: -self._rounds_kept]:
            del rounds[old]
        self._ahead.pop(batch.sender, None)
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

    def seen_at(self, peer: int, version: int) -> None:
        """`peer` is already at `version` (it said so): rounds up to it will not come again, so none waits for them.

        A region restored from a checkpoint replays rounds its peers have left behind; the
        predictions they sent for those went to the region's lost incarnation."""
        with self._cond:
            if peer in self.counters and version > self.counters[peer].last_version:
                self._ahead[peer] = max(version, self._ahead.get(peer, -1))
                self._cond.notify_all()

    def wait_round(self, version: int, needed: int, timeout_s: float) -> int:
        """Block until `needed` senders delivered `version` (or a newer one, or were seen past it), or timeout.

        Returns how many did."""
        deadline = time.monotonic() + timeout_s

        def arrived() -> int:
            # A sender seen past `version` will not deliver it: waiting for it would be in vain.
            return sum(1 for p, c in self.counters.items() if max(c.last_version, self._ahead.get(p, -1)) >= version)

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
            batches = {p: rounds[version] for p, rounds in self._rounds.items() if version in rounds}
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


__all__ = ["SYNC_VERSION_LEAD", "MessageRejected", "PeerInbox", "Pool", "sample"]
