"""Predictions of saved models: one model's, or an ensemble's over every region of a strategy.

The ensemble's default is the plain mean of the regions' probabilities, the rule behind
results.json's `ensemble_test_accuracy`; `rule="consensus"` forms the run's own consensus rule
(its `consensus` settings) per example, with the mean as the query that attention weighs against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from codistill import config as config_mod
from codistill import consensus as consensus_math
from codistill.data import to_float
from codistill.losses import soften
from codistill.saved.store import default_strategy, load_folder, region_folder, regions

# As a region evaluates: the same batches give the same floating-point sums.
BATCH = 2048


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """[N, C] probabilities of one model for raw inputs (uint8 pixels or floats), as a region computes them."""
    inputs = torch.from_numpy(to_float(np.asarray(x))) if not isinstance(x, torch.Tensor) else x
    if len(inputs) == 0:
        return np.zeros((0, model.codistill_card.num_classes), dtype=np.float32)
    return torch.cat([soften(model(inputs[i : i + BATCH]), temperature) for i in range(0, len(inputs), BATCH)]).numpy()


class Ensemble:
    """Every saved region of one strategy, predicting together."""

    def __init__(self, models: list[nn.Module], rule: Literal["mean", "consensus"] = "mean", settings: config_mod.ConsensusConfig | None = None):
        if rule not in ("mean", "consensus"):
            raise ValueError(f"rule must be 'mean' or 'consensus', not {rule!r}")
        self.models, self.rule = models, rule
        self.settings = settings or config_mod.ConsensusConfig()

    @property
    def card(self):
        return self.models[0].codistill_card

    def predict_proba(self, x: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
        probs = np.stack([predict_proba(m, x, temperature) for m in self.models])  # [P, N, C]
        mean = np.mean(probs, axis=0)
        if self.rule == "mean":
            return mean
        s = self.settings
        peers = torch.from_numpy(probs)
        target = consensus_math.consensus(
            s.rule, torch.from_numpy(mean), peers, torch.ones(peers.shape[:2], dtype=torch.bool),
            beta=s.beta, trim=s.trim, screen=s.screen, max_weight=s.max_weight,
        ).target
        return target.numpy()


def load_ensemble(run_dir: str | Path, strategy: str | None = None, rule: Literal["mean", "consensus"] = "mean") -> Ensemble:
    """Every saved region of `strategy` (the run's own by default) as one predictor with `predict_proba(x)`."""
    run_dir = Path(run_dir)
    strategy = strategy or default_strategy(run_dir)
    models = [load_folder(region_folder(run_dir, strategy, i)) for i in regions(run_dir, strategy)]
    settings = config_mod.load(run_dir / "config.yaml", []).consensus if (run_dir / "config.yaml").is_file() else None
    return Ensemble(models, rule, settings)
