"""A region's training loop: supervised learning plus co-distillation.

The loop knows nothing of Ray or gRPC. It publishes its softened predictions
through a `Transport` and reads peers' predictions from a `PeerInbox`. Loss:
cross-entropy on the region's labeled slice plus λ·T²·KL(consensus ‖ own
prediction at T) on a batch of transfer examples (Hinton et al., 2015;
Anil et al., 2018), after a burn-in.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from codistill import consensus as consensus_math
from codistill.config import RunConfig
from codistill.data import to_float
from codistill.losses import codistillation_loss, soften
from codistill.metrics import MetricsSink, NullMetrics
from codistill.models import build_model
from codistill.region import checkpoint
from codistill.region.inbox import PeerInbox, Pool, sample
from codistill.region.messages import PredictionBatch, RegionState
from codistill.region.transport import NullTransport, Transport


@dataclass
class RegionData:
    """Arrays a region trains and evaluates on (uint8 images or float32)."""

    x_labeled: np.ndarray
    y_labeled: np.ndarray
    x_transfer: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # The validation split every choice is made on; empty arrays when there is none.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


@dataclass
class RegionResult:
    id: int
    arch: str
    steps: int
    labeled_samples: int
    test_accuracy: float
    per_class_recall: list[float]
    bytes_sent: int
    bytes_received: int
    messages_received: dict[int, int]
    publish_failures: int
    restarts: int
    resumed_from: int
    train_seconds: float
    exchange_seconds: float
    peak_rss_bytes: int  # of the hosting process (in-process runs share one)
    test_probs: np.ndarray = field(repr=False)
    # Accuracy on the validation split (NaN without one): what choices are made on.
    validation_accuracy: float = float("nan")
    validation_probs: np.ndarray | None = field(default=None, repr=False)
    # CPU seconds of the region's own thread: its compute, whatever else shares the machine.
    cpu_seconds: float = 0.0
    # Test accuracy at every evaluation: [(step, accuracy), ...].
    curve: list[tuple[int, float]] = field(default_factory=list)
    # Mean consensus weight this region gave each peer over the run (its attention row).
    peer_weights: dict[int, float] = field(default_factory=dict)
    # Exchanges made: prediction publishes (codistill) or weight averages (fedavg).
    exchanges: int = 0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("test_probs", "validation_probs")}
        d["messages_received"] = {str(k): v for k, v in self.messages_received.items()}
        d["peer_weights"] = {str(k): v for k, v in self.peer_weights.items()}
        d["curve"] = [list(point) for point in self.curve]
        return d


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def chunk_ids(transfer_size: int, chunk_size: int | None, version: int, seed: int) -> torch.Tensor:
    """The transfer examples published at `version`; every region uses the same schedule."""
    if chunk_size is None or chunk_size >= transfer_size:
        return torch.arange(transfer_size)
    order = torch.randperm(transfer_size, generator=torch.Generator().manual_seed(seed))
    n_chunks = -(-transfer_size // chunk_size)
    k = version % n_chunks
    return torch.sort(order[k * chunk_size : (k + 1) * chunk_size]).values


def publish_round(step: int, interval: int, first: int) -> int | None:
    """The round a region publishes at `step`, or None. Rounds start at `first` (the burn-in),
    so no region ever distils from predictions its peers made before the burn-in ended."""
    if step < first or (step - first) % interval:
        return None
    return (step - first) // interval


# Transfer examples every evaluation predicts for run-level disagreement (convergence is judged
# on these unlabeled inputs, never on the test split).
PROBE_SIZE = 1000


class RegionTrainer:
    def __init__(
        self,
        region_id: int,
        cfg: RunConfig,
        data: RegionData,
        *,
        run_id: str = "local",
        arch: str | None = None,
        steps: int | None = None,
        exchange: bool = True,
        self_teach: bool = False,
        device: str | torch.device = "cpu",
        checkpoint_dir: Path | None = None,
    ):
        self.id = region_id
        self.cfg = cfg
        self.run_id = run_id
        self.arch = arch or cfg.regions.architecture(region_id)
        self.steps = steps if steps is not None else cfg.train.steps
        self.exchange = exchange
        # selftrain: the region's own earlier predictions stand in for its peers' (no exchange).
        self.self_teach = self_teach
        self.device = torch.device(device)
        seed = cfg.seed * 1000 + region_id
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.x_labeled = torch.from_numpy(to_float(data.x_labeled)).to(self.device)
        self.y_labeled = torch.tensor(np.asarray(data.y_labeled), dtype=torch.int64, device=self.device)
        self.x_transfer = torch.from_numpy(to_float(data.x_transfer)).to(self.device)
        self.x_test = torch.from_numpy(to_float(data.x_test)).to(self.device)
        self.y_test = torch.tensor(np.asarray(data.y_test), dtype=torch.int64, device=self.device)
        x_val = data.x_val if data.x_val is not None else np.zeros((0, *data.x_test.shape[1:]), dtype=data.x_test.dtype)
        self.x_val = torch.from_numpy(to_float(x_val)).to(self.device)
        self.y_val = torch.tensor(np.asarray(data.y_val if data.y_val is not None else []), dtype=torch.int64, device=self.device)
        self.num_classes = data.num_classes
        self.model = self._new_model().to(self.device)
        self.optimizer = self._new_optimizer()
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.steps)
            if cfg.train.lr_schedule == "cosine"
            else None
        )
        self.transport: Transport = NullTransport()
        self.inbox: PeerInbox | None = None
        self.state = RegionState.STARTING
        self.step = 0
        self.version = -1
        self.test_accuracy = 0.0
        self.bytes_sent = 0
        self.publish_failures = 0
        self.exchange_seconds = 0.0
        self.last_losses = (float("nan"), float("nan"))
        self._records: list[dict[str, Any]] = []
        self._records_lock = threading.Lock()
        self._stop = threading.Event()
        self.metrics: MetricsSink = NullMetrics()
        self.eval_step = -1
        # (step, accuracy, test probs, transfer-probe argmax) not yet drained
        self._evals: list[tuple[int, float, np.ndarray, np.ndarray]] = []
        self.on_record: Callable[[dict[str, Any]], None] | None = None
        self.checkpoint_dir = checkpoint_dir
        self.start_step = 0
        self.restarts = 0
        self.liar = region_id in cfg.chaos.liars
        # fedavg baseline: called with (region, round, weights), returns the average of all regions.
        self.average_weights: Callable[[int, int, dict], dict] | None = None
        self.weight_bytes = 0  # fedavg: parameter bytes sent (= received) so far
        self.exchanges = 0
        self._cpu_before = 0.0  # CPU seconds spent before the checkpoint this run resumed from
        self._cpu_start = time.thread_time()
        self.curve: list[tuple[int, float]] = []
        self._weight_sums: dict[int, float] = {}
        self._weight_count = 0
        # Called with a duration when chaos makes this region hang (the node pauses its handler too).
        self.on_hang: Callable[[float], None] | None = None

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)

    def _new_model(self) -> torch.nn.Module:
        """A freshly initialised model of this region's architecture (drawn from torch's global RNG)."""
        regions = self.cfg.regions
        return build_model(self.arch, tuple(self.x_labeled.shape[1:]), self.num_classes, regions.hidden, regions.model_args)

    # ------------------------------------------------------------ wiring
    def average_with(self, average: Callable[[int, int, dict], dict]) -> None:
        """fedavg: start from the weights every region starts from, then average every E steps.

        Averaging models that began from different random weights gives a
        useless model (their hidden units do not correspond), so FedAvg's
        regions share one initialisation, drawn from the run seed.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            common = self._new_model()
        self.model.load_state_dict(common.state_dict())
        self.average_weights = average

    def attach(self, transport: Transport, inbox: PeerInbox | None) -> None:
        self.transport, self.inbox = transport, inbox

    def stop(self) -> None:
        self._stop.set()
        if self.inbox is not None:
            self.inbox.interrupt()

    def record(self, kind: str, **fields: Any) -> None:
        rec = {"kind": kind, "region": self.id, "step": self.step, "time": time.time(), **fields}
        with self._records_lock:
            self._records.append(rec)
        if self.on_record:
            self.on_record(rec)

    def drain_records(self) -> list[dict[str, Any]]:
        with self._records_lock:
            out, self._records = self._records, []
        return out

    # ------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "version": self.version,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "bytes_sent": self.bytes_sent,
            "publish_failures": self.publish_failures,
            "exchange_seconds": self.exchange_seconds,
            "weight_bytes": self.weight_bytes,
            "peer_counters": {p: (c.last_version, c.messages, c.bytes) for p, c in self.inbox.counters.items()}
            if self.inbox
            else {},
            "restarts": self.restarts,
            "exchanges": self.exchanges,
            "cpu_seconds": self._cpu_before + time.thread_time() - self._cpu_start,
            "curve": list(self.curve),
            "weight_sums": (dict(self._weight_sums), self._weight_count),
        }

    def save_checkpoint(self, step: int) -> None:
        if self.checkpoint_dir is not None:
            checkpoint.save(self.checkpoint_dir, step, self.checkpoint_state())
            self.record("checkpoint", step=step)

    def restore(self) -> int | None:
        """Load the newest checkpoint, if any; returns the step training resumes at."""
        if self.checkpoint_dir is None:
            return None
        state = checkpoint.load_latest(self.checkpoint_dir)
        if state is None:
            return None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.version = state["version"]
        if self.inbox is not None:  # peers' rounds are judged against this region's own
            self.inbox.own_version = self.version
        self.bytes_sent = state["bytes_sent"]
        self.publish_failures = state["publish_failures"]
        self.exchange_seconds = state["exchange_seconds"]
        self.weight_bytes = state.get("weight_bytes", 0)
        self.exchanges = state.get("exchanges", 0)
        self._cpu_before = state.get("cpu_seconds", 0.0)
        self.curve = [tuple(point) for point in state.get("curve", [])]
        sums, count = state.get("weight_sums", ({}, 0))
        self._weight_sums, self._weight_count = dict(sums), count
        if self.inbox is not None:
            for peer, (version, messages, nbytes) in state["peer_counters"].items():
                if peer in self.inbox.counters:
                    c = self.inbox.counters[peer]
                    c.last_version, c.messages, c.bytes = version, c.messages + messages, c.bytes + nbytes
        self.start_step = self.step = int(state["step"])
        return self.start_step

    # ---------------------------------------------------------- predict
    @torch.no_grad()
    def predict(self, x: torch.Tensor, temperature: float = 1.0, batch: int = 2048) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros(0, self.num_classes, device=self.device)
        was = self.model.training
        self.model.eval()
        out = torch.cat([soften(self.model(x[i : i + batch]), temperature) for i in range(0, len(x), batch)])
        self.model.train(was)
        return out

    def evaluate(self) -> tuple[float, torch.Tensor]:
        probs = self.predict(self.x_test)
        acc = (probs.argmax(1) == self.y_test).float().mean().item()
        self.metrics.evaluated(acc)
        return acc, probs

    def _log_eval(self, step: int, acc: float, probs: torch.Tensor) -> None:
        self.test_accuracy, self.eval_step = acc, step
        self.curve.append((step, acc))
        probe = self.predict(self.x_transfer[:PROBE_SIZE]).argmax(1).cpu().numpy().astype(np.int16)
        with self._records_lock:
            self._evals.append((step, acc, probs.cpu().numpy().astype(np.float16), probe))

    def drain_evals(self) -> list[tuple[int, float, np.ndarray, np.ndarray]]:
        """Evaluations since the last call: test predictions for the ensemble's accuracy, and
        predicted classes on a fixed probe of the transfer set for run-level convergence."""
        with self._records_lock:
            out, self._evals = self._evals, []
        return out

    def _report_exchange(self) -> None:
        if self.inbox is None:
            return
        counters = dict(self.inbox.counters)
        self.metrics.exchange_state(
            {p: (c.messages, c.bytes) for p, c in counters.items()},
            self.inbox.staleness(self.step),
            dict(self.inbox.rejections),
            self.inbox.age_seconds(),
        )

    # ---------------------------------------------------------- exchange
    def _publish_and_collect(self, version: int) -> Pool | None:
        ex = self.cfg.exchange
        start = time.perf_counter()
        ids = chunk_ids(len(self.x_transfer), ex.chunk_size, version, self.cfg.seed)
        probs = self.predict(self.x_transfer[ids.to(self.device)], self.cfg.distill.temperature).cpu()
        if self.self_teach:  # no peers: distil from this round's own predictions
            self.version = version
            self.exchanges += 1
            self.exchange_seconds += time.perf_counter() - start
            return Pool(ids, probs[None], torch.ones(1, len(ids), dtype=torch.bool))
        if self.liar:  # chaos: a confident lie on the class this region finds least likely
            probs = torch.nn.functional.one_hot(probs.argmin(1), probs.shape[1]).float()
        batch = PredictionBatch(self.run_id, self.id, version, self.step, ids, self.cfg.distill.temperature, probs)
        report = self.transport.publish(batch)
        self._account(report)
        self.exchanges += 1
        self.version = version
        if self.inbox is not None:
            self.inbox.own_version = version
        pool = None
        arrived = 0
        if ex.mode == "sync" and self.inbox is not None and self.inbox.sources:
            needed = max(1, int(np.ceil(ex.quorum * len(self.inbox.sources))))
            arrived = self.inbox.wait_round(version, needed, ex.round_timeout_s)
            pool = self.inbox.round_pool(version)
        elapsed = time.perf_counter() - start
        self._report_exchange()
        self.exchange_seconds += elapsed
        self.record(
            "publish",
            version=version,
            bytes=report.bytes_sent,
            delivered=len(report.delivered),
            failed=sorted(report.failed),
            publish_seconds=report.seconds,
            round_seconds=elapsed,
            peers_arrived=arrived,
        )
        return pool

    def _account(self, report) -> None:
        if report.delivered or report.failed:
            self.metrics.published(report.seconds, report.bytes_sent, report.delivered, report.failed)
        self.bytes_sent += report.bytes_sent
        self.publish_failures += len(report.failed)

    def _average(self, step: int) -> None:
        start = time.perf_counter()
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        averaged = self.average_weights(self.id, step // self.cfg.exchange.average_every, state)
        self.model.load_state_dict(averaged)
        if self.cfg.exchange.average_optimizer == "fresh":
            # As common FedAvg clients do: each round starts a new local optimiser.
            self.optimizer = self._new_optimizer()
        self.weight_bytes += sum(v.numel() * v.element_size() for v in state.values())
        self.exchanges += 1
        self.exchange_seconds += time.perf_counter() - start

    def _distill_batch(self, pool: Pool | None) -> Pool | None:
        if pool is None or pool.empty:
            return None
        return sample(pool, self.cfg.distill.batch_size, self.gen)

    # -------------------------------------------------------------- loop
    def run(self) -> RegionResult:
        cfg, ex = self.cfg, self.cfg.exchange
        T, lam = cfg.distill.temperature, cfg.distill.weight
        # A region's own predictions are one teacher: no rule to apply.
        rule = consensus_math.Rule.MEAN if self.self_teach else consensus_math.Rule(cfg.consensus.rule)
        exchanging = self.self_teach or (self.exchange and not isinstance(self.transport, NullTransport))
        first_round = cfg.distill.burn_in if lam > 0 else 0
        n = len(self.y_labeled)
        start = time.perf_counter()
        self._cpu_start = cpu_start = time.thread_time()
        resumed = self.restore()
        if resumed is not None:
            self.record("resume", from_step=resumed, restarts=self.restarts)
        self.state = RegionState.TRAINING
        pool: Pool | None = None
        self.model.train()
        stats = {"kl": [], "agree": []}
        chaos = cfg.chaos
        every = cfg.fault.checkpoint_every
        for step in range(self.start_step, self.steps):
            if self._stop.is_set():
                break
            self.step = step
            if chaos.hang_region == self.id and step == chaos.hang_at_step and chaos.hang_seconds > 0:
                if self.on_hang:
                    self.on_hang(chaos.hang_seconds)
                self._stop.wait(chaos.hang_seconds)
            if self.inbox is not None:
                self.inbox.clock = step
            version = publish_round(step, ex.publish_interval, first_round) if exchanging else None
            if version is not None:
                round_pool = self._publish_and_collect(version)
                if ex.mode == "sync" or self.self_teach:
                    pool = round_pool
            if exchanging and ex.mode == "async" and self.inbox is not None and not self.self_teach:
                pool = self.inbox.fresh_pool(step, ex.max_staleness)
            idx = torch.randint(0, n, (min(cfg.train.batch_size, n),), generator=self.gen).to(self.device)
            logits = self.model(self.x_labeled[idx])
            transfer_logits = target = valid = None
            chosen = self._distill_batch(pool) if step >= cfg.distill.burn_in and lam > 0 else None
            if chosen is not None:
                transfer_logits = self.model(self.x_transfer[chosen.ids.to(self.device)])
                own = soften(transfer_logits.detach(), T).cpu()
                c = consensus_math.consensus(
                    rule,
                    own,
                    chosen.peers,
                    chosen.mask,
                    beta=cfg.consensus.beta,
                    trim=cfg.consensus.trim,
                    screen=cfg.consensus.screen,
                    max_weight=cfg.consensus.max_weight,
                )
                target, valid = c.target.to(self.device), c.valid.to(self.device)
                if c.valid.any():
                    t, o = c.target[c.valid], own[c.valid]
                    kl = float((torch.xlogy(t, t) - t * torch.log(o.clamp_min(1e-12))).sum(1).mean())
                    agree = float((t.argmax(1) == o.argmax(1)).float().mean())
                    stats["kl"].append(kl)
                    stats["agree"].append(agree)
                    w = c.weights[:, c.valid]  # [P, n]
                    w_entropy = float(consensus_math.entropy(w.T).mean())
                    sources = self.inbox.sources if self.inbox else []
                    per_peer = dict(zip(sources, w.mean(1).tolist()))
                    self.metrics.consensus(kl, agree, per_peer, w_entropy)
                    for peer, weight in per_peer.items():
                        self._weight_sums[peer] = self._weight_sums.get(peer, 0.0) + weight
                    self._weight_count += 1
            loss, sup, dist = codistillation_loss(
                logits, self.y_labeled[idx], transfer_logits, target, temperature=T, weight=lam, valid=valid
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.last_losses = (sup.item(), dist.item())
            self.metrics.step(*self.last_losses)
            if self.average_weights is not None and (step + 1) % ex.average_every == 0:
                self._average(step + 1)
            if every and (step + 1) % every == 0 and step + 1 < self.steps:
                self.save_checkpoint(step + 1)
            if (step + 1) % cfg.train.eval_every == 0 or step + 1 == self.steps:
                acc, probs = self.evaluate()
                self._log_eval(step + 1, acc, probs)
                self.record(
                    "eval",
                    step=step + 1,
                    test_accuracy=self.test_accuracy,
                    loss_supervised=self.last_losses[0],
                    loss_distill=self.last_losses[1],
                    kl_to_consensus=float(np.mean(stats["kl"])) if stats["kl"] else None,
                    agreement=float(np.mean(stats["agree"])) if stats["agree"] else None,
                    bytes_sent=self.bytes_sent,
                    bytes_received=self.inbox.bytes_received() if self.inbox else 0,
                    peer_age_steps={str(p): a for p, a in self.inbox.staleness(step).items()} if self.inbox else {},
                )
                stats = {"kl": [], "agree": []}
                self._report_exchange()
        self.step = self.steps if not self._stop.is_set() else self.step
        self.state = RegionState.DRAINING
        self._account(self.transport.flush())
        acc, probs = self.evaluate()
        if self.eval_step != self.step:  # stopped early: the last model was not evaluated yet
            self._log_eval(self.step, acc, probs)
        val_probs = self.predict(self.x_val)
        val_acc = float((val_probs.argmax(1) == self.y_val).float().mean()) if len(self.y_val) else float("nan")
        pred = probs.argmax(1)
        recall = [
            float((pred[self.y_test == c] == c).float().mean()) if (self.y_test == c).any() else float("nan")
            for c in range(self.num_classes)
        ]
        counters = self.inbox.counters if self.inbox else {}
        self.state = RegionState.STOPPED
        return RegionResult(
            id=self.id,
            arch=self.arch,
            steps=self.step,
            labeled_samples=n,
            test_accuracy=acc,
            per_class_recall=recall,
            bytes_sent=self.bytes_sent + self.weight_bytes,
            bytes_received=(self.inbox.bytes_received() if self.inbox else 0) + self.weight_bytes,
            messages_received={p: c.messages for p, c in counters.items()},
            publish_failures=self.publish_failures,
            restarts=self.restarts,
            resumed_from=self.start_step,
            train_seconds=time.perf_counter() - start,
            exchange_seconds=self.exchange_seconds,
            peak_rss_bytes=peak_rss_bytes(),
            test_probs=probs.cpu().numpy(),
            validation_accuracy=val_acc,
            validation_probs=val_probs.cpu().numpy(),
            cpu_seconds=time.thread_time() - cpu_start + self._cpu_before,
            curve=list(self.curve),
            peer_weights={p: total / self._weight_count for p, total in self._weight_sums.items()},
            exchanges=self.exchanges,
        )
