"""A region's learner: its model and optimiser, one training step, predictions, evaluation, state.

One step is cross-entropy on a labeled batch plus, when given peers'
predictions, λ·T²·KL(consensus ‖ own prediction at T) on a batch of transfer
examples (Hinton et al., 2015; Anil et al., 2018). The learner knows nothing
of peers, rounds or the network: it is handed a pool of predictions, or none.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from codistill import consensus as consensus_math
from codistill.config import ConsensusConfig, RunConfig
from codistill.data import to_float
from codistill.losses import codistillation_loss, soften
from codistill.models import build_model
from codistill.records import RegionData
from codistill.region.inbox import Pool, sample
from codistill.saved.store import weights_to_bytes

# Transfer examples every evaluation predicts for run-level disagreement (convergence is judged
# on these unlabeled inputs, never on the test split).
PROBE_SIZE = 1000


def resolve_device(choice: str, num_gpus: float) -> torch.device:
    """regions.device for every runner: `auto` is CUDA when the region was given a GPU and CUDA is there."""
    if choice == "cuda" or (choice == "auto" and num_gpus > 0 and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True, eq=False)
class Tensors:
    """A region's arrays as float32/int64 tensors on its device.

    On the CPU each tensor wraps its array's memory: the run's shared arrays (transfer, test,
    validation; Ray's object store or one copy per process) are not copied per region. Nothing
    writes into them: they are only read and indexed (which copies the rows taken).
    """

    x_labeled: torch.Tensor
    y_labeled: torch.Tensor
    x_transfer: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @classmethod
    def of(cls, data: RegionData, device: torch.device) -> Tensors:
        def x(a: np.ndarray) -> torch.Tensor:
            return _wrap(a if a.dtype == np.float32 else to_float(a)).to(device)

        def y(a) -> torch.Tensor:
            return _wrap(np.asarray(a, dtype=np.int64)).to(device)

        x_val = data.x_val if data.x_val is not None else np.zeros((0, *data.x_test.shape[1:]), dtype=np.float32)
        y_val = data.y_val if data.y_val is not None else []
        return cls(
            x(data.x_labeled), y(data.y_labeled), x(data.x_transfer), x(data.x_test), y(data.y_test), x(x_val), y(y_val),
            data.num_classes,
        )


def _wrap(a: np.ndarray) -> torch.Tensor:
    """A tensor over `a`'s memory, without a copy.

    The shared arrays are read-only and torch, which has no read-only tensors, warns about each
    one; they are never written (see Tensors), so that warning alone is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(a)


@dataclass(frozen=True)
class Teacher:
    """The consensus rule that turns peers' predictions into the target a region distils to."""

    rule: consensus_math.Rule
    settings: ConsensusConfig

    def target(self, own: torch.Tensor, pool: Pool) -> consensus_math.Consensus:
        s = self.settings
        return consensus_math.consensus(
            self.rule, own, pool.peers, pool.mask, beta=s.beta, trim=s.trim, screen=s.screen, max_weight=s.max_weight
        )


@dataclass(frozen=True, eq=False)
class StepOutcome:
    loss_supervised: float
    loss_distill: float  # T²·KL to the consensus, averaged over the examples that had one
    consensus: consensus_math.Consensus | None = None  # the target of this step's transfer batch
    own: torch.Tensor | None = None  # the region's own predictions at T on that batch


class Learner:
    def __init__(self, cfg: RunConfig, arch: str, steps: int, data: Tensors, seed: int, teacher: Teacher, device: torch.device):
        self.cfg, self.arch, self.data, self.teacher, self.device = cfg, arch, data, teacher, device
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.model = self.new_model().to(device)
        self.optimizer = self._new_optimizer()
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps) if cfg.train.lr_schedule == "cosine" else None
        )

    def new_model(self) -> torch.nn.Module:
        """A freshly initialised model of this region's architecture (drawn from torch's global RNG)."""
        regions = self.cfg.regions
        return build_model(self.arch, tuple(self.data.x_labeled.shape[1:]), self.data.num_classes, regions.hidden, regions.model_args)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)

    # ------------------------------------------------------------ training
    def step(self, pool: Pool | None) -> StepOutcome:
        """One optimiser step on a labeled batch and, given a pool, on a transfer batch drawn from it."""
        d, T = self.data, self.cfg.distill.temperature
        n = len(d.y_labeled)
        idx = torch.randint(0, n, (min(self.cfg.train.batch_size, n),), generator=self.gen).to(self.device)
        logits = self.model(d.x_labeled[idx])
        chosen = sample(pool, self.cfg.distill.batch_size, self.gen) if pool is not None and not pool.empty else None
        transfer_logits = target = valid = own = agreed = None
        if chosen is not None:
            transfer_logits = self.model(d.x_transfer[chosen.ids.to(self.device)])
            own = soften(transfer_logits.detach(), T).cpu()
            agreed = self.teacher.target(own, chosen)
            target, valid = agreed.target.to(self.device), agreed.valid.to(self.device)
        loss, sup, dist = codistillation_loss(
            logits, d.y_labeled[idx], transfer_logits, target, temperature=T, weight=self.cfg.distill.weight, valid=valid
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return StepOutcome(sup.item(), dist.item(), agreed, own)

    # ------------------------------------------------------------ predictions
    @torch.no_grad()
    def predict(self, x: torch.Tensor, temperature: float = 1.0, batch: int = 2048) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros(0, self.data.num_classes, device=self.device)
        was = self.model.training
        self.model.eval()
        out = torch.cat([soften(self.model(x[i : i + batch]), temperature) for i in range(0, len(x), batch)])
        self.model.train(was)
        return out

    def predict_transfer(self, ids: torch.Tensor) -> torch.Tensor:
        """Softened predictions (at the distillation temperature) for transfer examples `ids`, on the CPU."""
        return self.predict(self.data.x_transfer[ids.to(self.device)], self.cfg.distill.temperature).cpu()

    def evaluate(self) -> tuple[float, torch.Tensor]:
        """Test accuracy and test predictions."""
        probs = self.predict(self.data.x_test)
        return (probs.argmax(1) == self.data.y_test).float().mean().item(), probs

    def validate(self) -> tuple[float, torch.Tensor]:
        """Validation accuracy (NaN without a validation split) and predictions."""
        probs = self.predict(self.data.x_val)
        y = self.data.y_val
        return (float((probs.argmax(1) == y).float().mean()) if len(y) else float("nan")), probs

    def probe(self) -> np.ndarray:
        """Predicted classes on the fixed probe of the transfer set."""
        return self.predict(self.data.x_transfer[:PROBE_SIZE]).argmax(1).cpu().numpy().astype(np.int16)

    def recall(self, probs: torch.Tensor) -> list[float]:
        """Per-class recall on the test split (NaN for a class with no test example)."""
        pred, y = probs.argmax(1), self.data.y_test
        return [float((pred[y == c] == c).float().mean()) if (y == c).any() else float("nan") for c in range(self.data.num_classes)]

    # ------------------------------------------------------------ weights (fedavg)
    def share_initialisation(self, seed: int) -> None:
        """Start from the weights drawn from `seed`, as every region given the same seed does."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            common = self.new_model()
        self.model.load_state_dict(common.state_dict())

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)

    def saved_weights(self) -> bytes:
        """The model's weights as the run saves them (safetensors)."""
        return weights_to_bytes(self.model)

    def fresh_optimizer(self) -> None:
        # The scheduler keeps stepping the first optimiser: each round's fresh one runs at the base rate.
        self.optimizer = self._new_optimizer()

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
