"""`codistill distill`: one student model from the swarm, by Hinton's original distillation.

The student learns on the run's unlabeled transfer set only, from the ensemble of a strategy's
saved regions: its targets are the regions' predictions softened at the run's temperature and
averaged, its loss T²·KL(target ‖ student at T) (Hinton et al., 2015). No region's labeled data
is used, so it works where the regions' data are private. The step it keeps is the one with
the best accuracy on the run's validation split, checked every `eval_every` steps; the test
split only reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from codistill import config as config_mod
from codistill.data import Split, load_dataset, make_split, to_float
from codistill.errors import SavedModelError
from codistill.models import build_model
from codistill.saved.card import ModelCard
from codistill.saved.ensemble import load_ensemble, predict_proba
from codistill.saved.store import MODELS, STUDENT, save, weights_from_bytes, weights_to_bytes

STEPS, EVAL_EVERY = 2000, 100


@dataclass(frozen=True)
class StudentReport:
    student_test_accuracy: float
    student_validation_accuracy: float
    step: int
    mean_region_test_accuracy: float
    best_region_test_accuracy: float
    ensemble_test_accuracy: float
    teacher: str  # the strategy whose regions taught
    arch: str


def distill(
    run_dir: Path, arch: str, steps: int = STEPS, strategy: str | None = None, lr: float | None = None,
    batch_size: int | None = None, seed: int = 0, eval_every: int = EVAL_EVERY, progress=None,
) -> StudentReport:
    run_dir = Path(run_dir)
    if steps < 1 or eval_every < 1:
        raise SavedModelError("--steps and the evaluation interval must be at least 1")
    if not (run_dir / "config.yaml").is_file():
        raise SavedModelError(f"{run_dir} is not a codistill run folder (no config.yaml)")
    cfg = config_mod.load(run_dir / "config.yaml", [])
    teacher = load_ensemble(run_dir, strategy)
    split = make_split(cfg, load_dataset(cfg))
    T = cfg.distill.temperature
    x_transfer = torch.from_numpy(to_float(split.dataset.train.x[split.transfer]))
    targets = torch.from_numpy(teacher.predict_proba(x_transfer, temperature=T))  # [M, C]
    x_val, y_val = _validation(split)
    x_test, y_test = torch.from_numpy(to_float(split.dataset.test.x)), split.dataset.test.y

    card = teacher.card
    torch.manual_seed(seed)
    model = build_model(arch, tuple(card.input_shape), card.num_classes, cfg.regions.hidden, cfg.regions.model_args)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr or cfg.train.lr)
    gen = torch.Generator().manual_seed(seed)
    batch = batch_size or cfg.train.batch_size
    best = (-1.0, 0, weights_to_bytes(model))
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(len(x_transfer), (batch,), generator=gen)
        log_q = torch.log_softmax(model(x_transfer[idx]) / T, dim=1)
        p = targets[idx]
        loss = (T * T) * (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            val = _accuracy(model, x_val, y_val)
            if val > best[0]:
                best = (val, step, weights_to_bytes(model))
            if progress:
                progress(step, steps, val)
    val_acc, best_step, weights = best
    model.load_state_dict(weights_from_bytes(weights))
    test_acc = _accuracy(model, x_test, y_test)
    regions_acc = [m.codistill_card.test_accuracy for m in teacher.models]
    report = StudentReport(
        test_acc, val_acc, best_step, float(np.mean(regions_acc)), float(np.max(regions_acc)),
        float((teacher.predict_proba(x_test).argmax(1) == y_test).mean()), card.strategy, arch,
    )
    student_card = replace(
        card, arch=arch, hidden=list(cfg.regions.hidden), model_args=dict(cfg.regions.model_args), strategy=STUDENT,
        region=None, step=best_step, validation_accuracy=val_acc, test_accuracy=test_acc,
        extra={"teacher": card.strategy, "teacher_regions": len(teacher.models), "steps": steps, "eval_every": eval_every,
               "lr": lr or cfg.train.lr, "batch_size": batch, "seed": seed, "report": report.__dict__},
    )
    save(run_dir / MODELS / STUDENT, weights, student_card)
    return report


def _validation(split: Split) -> tuple[torch.Tensor, np.ndarray]:
    if len(split.validation) == 0:
        raise SavedModelError("the run held out no validation split (data.validation_size 0): the student's step cannot be chosen")
    return torch.from_numpy(to_float(split.dataset.train.x[split.validation])), split.dataset.train.y[split.validation]


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    if not len(y):
        return math.nan
    model.eval()
    return float((predict_proba(model, x).argmax(1) == y).mean())
