"""Saving a finished strategy's models into the run folder: each region's, and fedavg's average."""

from __future__ import annotations

from pathlib import Path

import torch

from codistill.config import RunConfig
from codistill.data import Split
from codistill.records import RegionResult, StrategyResult
from codistill.saved.card import ModelCard
from codistill.saved.store import AVERAGE, MODELS, save, weights_from_bytes
from safetensors.torch import save as save_weights_bytes


def save_strategy(out_dir: Path, cfg: RunConfig, split: Split, run_id: str, result: StrategyResult) -> Path:
    """models/<strategy>/region-<i>/ for every region (fedavg: also average/); returns models/<strategy>."""
    folder = Path(out_dir) / MODELS / result.strategy
    for r in result.regions:
        if r.weights:
            save(folder / f"region-{r.id}", r.weights, card(cfg, split, run_id, result.strategy, r))
    if result.strategy == "fedavg" and all(r.weights for r in result.regions):
        first = result.regions[0]
        averaged = card(cfg, split, run_id, result.strategy, first, region=None)
        save(folder / AVERAGE, save_weights_bytes(average(result.regions)), averaged)
    return folder


def card(cfg: RunConfig, split: Split, run_id: str, strategy: str, r: RegionResult, region: int | None = -1) -> ModelCard:
    ds = split.dataset
    return ModelCard(
        arch=r.arch, hidden=list(cfg.regions.hidden), model_args=dict(cfg.regions.model_args),
        input_shape=list(ds.input_shape), num_classes=ds.num_classes, class_names=list(ds.class_names),
        run_id=run_id, strategy=strategy, region=r.id if region == -1 else region, step=r.steps,
        temperature=cfg.distill.temperature,
        validation_accuracy=r.validation_accuracy if region == -1 else float("nan"),
        test_accuracy=r.test_accuracy if region == -1 else float("nan"),
    )


def average(regions: tuple[RegionResult, ...]) -> dict[str, torch.Tensor]:
    """The regions' weights averaged by their labeled-slice sizes, as fedavg's hub averages them."""
    states = [weights_from_bytes(r.weights) for r in regions]
    total = float(sum(r.labeled_samples for r in regions))
    shares = [r.labeled_samples / total for r in regions]
    return {key: sum(share * s[key].float() for share, s in zip(shares, states)).to(states[0][key].dtype) for key in states[0]}
