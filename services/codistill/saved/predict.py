"""`codistill predict`: a saved model's (or the ensemble's, or the student's) predictions for a file or a split of the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codistill import config as config_mod
from codistill.data import load_dataset, make_split
from codistill.errors import SavedModelError
from codistill.saved.card import ModelCard
from codistill.saved.ensemble import load_ensemble, predict_proba
from codistill.saved.store import load_model

SPLITS = ("test", "validation")


@dataclass(frozen=True)
class Predictions:
    source: str  # what predicted: "region 0 of codistill", "the ensemble of codistill", "the student"
    probs: np.ndarray  # [N, C]
    labels: np.ndarray | None  # [N] where given
    class_names: list[str]

    @property
    def classes(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def correct(self) -> int:
        return int((self.classes == self.labels).sum()) if self.labels is not None else 0

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.labels) if self.labels is not None and len(self.labels) else float("nan")

    def recall(self) -> list[tuple[str, int, float]]:
        """(class, examples, recall) for every class with examples."""
        assert self.labels is not None
        rows = []
        for c, name in enumerate(self.class_names):
            held = self.labels == c
            if held.any():
                rows.append((name, int(held.sum()), float((self.classes[held] == c).mean())))
        return rows

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"labels": self.labels} if self.labels is not None else {}
        with open(path, "wb") as fh:  # a file object: np.savez would add .npz to any other name
            np.savez(fh, probs=self.probs, classes=self.classes, class_names=np.array(self.class_names), **extra)
        return path


def predict(run_dir: Path, inputs: Path | None, split: str | None, region: int | None, ensemble: bool, student: bool, strategy: str | None = None) -> Predictions:
    if student:
        model = load_model(run_dir, None, "student")
        card, predictor, source = model.codistill_card, (lambda x: predict_proba(model, x)), "the student"
    elif ensemble:
        ens = load_ensemble(run_dir, strategy)
        card, predictor, source = ens.card, ens.predict_proba, f"the ensemble of {ens.card.strategy} ({len(ens.models)} regions)"
    else:
        model = load_model(run_dir, region or 0, strategy)
        card, predictor, source = model.codistill_card, (lambda x: predict_proba(model, x)), f"region {region or 0} of {model.codistill_card.strategy}"
    x, y = run_split(run_dir, split) if split else read_inputs(inputs)
    check_inputs(x, y, card, inputs or split)
    return Predictions(f"{source} on {f'the {split} split' if split else inputs.name}", predictor(x), y, card.class_names)


def run_split(run_dir: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's own test or validation split, made again from its saved config (same seed, same examples)."""
    if which not in SPLITS:
        raise SavedModelError(f"--split must be one of {', '.join(SPLITS)}, not {which!r}")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SavedModelError(f"{run_dir} has no config.yaml to make its {which} split from")
    split = make_split(cfg := config_mod.load(path, []), load_dataset(cfg))
    if which == "test":
        return split.dataset.test.x, split.dataset.test.y
    if len(split.validation) == 0:
        raise SavedModelError(f"{run_dir}: the run held out no validation split (data.validation_size 0)")
    return split.dataset.train.x[split.validation], split.dataset.train.y[split.validation]


def read_inputs(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """x (and y) from an .npz, or x from an .npy; arrays only (allow_pickle off: a file runs no code)."""
    if not path.is_file():
        raise SavedModelError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SavedModelError(f"{path}: not an .npz or .npy file of arrays ({str(exc)[:100]})") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        if "x" not in loaded.files:
            raise SavedModelError(f"{path}: an .npz needs an array 'x' (it holds {', '.join(loaded.files) or 'nothing'})")
        return loaded["x"], (loaded["y"] if "y" in loaded.files else None)


def check_inputs(x: np.ndarray, y: np.ndarray | None, card: ModelCard, where) -> None:
    if x.dtype.kind not in "uif" or x.ndim < 1 or list(x.shape[1:]) != list(card.input_shape):
        raise SavedModelError(
            f"{where}: examples of shape {list(x.shape[1:])} ({x.dtype}); the model takes {card.input_shape} (uint8 pixels or floats)"
        )
    if y is None:
        return
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise SavedModelError(f"{where}: labels 'y' must be {len(x)} integers, one per example (got {y.dtype} of shape {list(y.shape)})")
    if len(y) and (y.min() < 0 or y.max() >= card.num_classes):
        raise SavedModelError(f"{where}: labels must lie in 0..{card.num_classes - 1} (found {int(y.min())}..{int(y.max())})")
