"""Where a run keeps its trained models, and how one comes back as a module that predicts.

RUN_DIR/models/<strategy>/region-<i>/ holds model.safetensors (the weights: tensors only, so
reading them runs no code) and model.json (codistill.saved.card). fedavg also keeps its
average, models/fedavg/average/; `codistill distill` writes models/student/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_weights_bytes
from safetensors.torch import save as save_weights_bytes
from torch import nn

from codistill.errors import SavedModelError, UserError
from codistill.models import build_model
from codistill.saved.card import CARD_FILE, WEIGHTS_FILE, ModelCard

MODELS = "models"
AVERAGE, STUDENT = "average", "student"


def weights_to_bytes(model: nn.Module) -> bytes:
    """A model's weights as safetensors bytes (CPU, contiguous, no tensor shared between names)."""
    return save_weights_bytes({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()})


def weights_from_bytes(raw: bytes) -> dict[str, torch.Tensor]:
    return load_weights_bytes(raw)


def region_folder(run_dir: Path, strategy: str, region: int) -> Path:
    return Path(run_dir) / MODELS / strategy / f"region-{region}"


def save(folder: Path, weights: bytes, card: ModelCard) -> Path:
    """Write the weights and the card; a reader finds the old pair or the new one, never half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((WEIGHTS_FILE, weights), (CARD_FILE, (json.dumps(card.to_json(), indent=2) + "\n").encode())):
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)
    return folder


# ------------------------------------------------------------------ reading
def strategies(run_dir: Path) -> list[str]:
    """The strategies whose regions a run saved, in the order the run ran them."""
    root = Path(run_dir) / MODELS
    saved = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    order = _run_order(Path(run_dir))
    return [s for s in order if s in saved] + sorted(saved - set(order))


def default_strategy(run_dir: Path) -> str:
    """The run's own strategy (its config's), else the only one saved."""
    run_dir = Path(run_dir)
    if not (run_dir / "state.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise SavedModelError(f"{run_dir} is not a codistill run folder (no state.json or config.yaml)")
    saved = [s for s in strategies(run_dir) if s != STUDENT]
    if not saved:
        raise SavedModelError(f"{run_dir} holds no saved models (a run made before models were saved, or one that never finished a strategy)")
    return saved[0]


def regions(run_dir: Path, strategy: str) -> list[int]:
    folder = Path(run_dir) / MODELS / strategy
    found = sorted(int(p.name.split("-", 1)[1]) for p in folder.glob("region-*") if p.name.split("-", 1)[1].isdigit())
    if not found:
        raise SavedModelError(f"{run_dir} holds no saved regions of strategy '{strategy}' (saved: {', '.join(strategies(run_dir)) or 'none'})")
    return found


def model_folder(run_dir: Path, region: int | None = 0, strategy: str | None = None) -> Path:
    """The folder of one saved model: a region of `strategy` (the run's own by default), or the student with region None."""
    run_dir = Path(run_dir)
    if strategy == STUDENT or (strategy is None and region is None):
        folder = run_dir / MODELS / STUDENT
        if not (folder / CARD_FILE).is_file():
            raise SavedModelError(f"{run_dir} holds no student model; make one with: codistill distill {run_dir} --model ARCH")
        return folder
    strategy = strategy or default_strategy(run_dir)
    if region is None:
        raise SavedModelError("name a region, or ask for the student")
    held = regions(run_dir, strategy)
    if region not in held:
        raise SavedModelError(f"region {region} is not among the saved regions of '{strategy}' ({held[0]}..{held[-1]})")
    return region_folder(run_dir, strategy, region)


def load_folder(folder: Path) -> nn.Module:
    """The model a folder holds, in eval mode on the CPU, taking raw uint8 inputs as training did."""
    card = ModelCard.read(folder)
    try:
        model = build_model(card.arch, tuple(card.input_shape), card.num_classes, card.hidden, card.model_args)
    except UserError as exc:  # a user factory that no longer imports, say
        raise SavedModelError(f"{folder / CARD_FILE}: cannot rebuild the model: {exc}") from None
    try:
        state = weights_from_bytes((folder / WEIGHTS_FILE).read_bytes())
        model.load_state_dict(state)
    except FileNotFoundError:
        raise SavedModelError(f"{folder}: no {WEIGHTS_FILE}") from None
    except (SafetensorError, RuntimeError) as exc:  # not safetensors, or weights of another shape
        first = str(exc).strip().splitlines()[0][:200]
        raise SavedModelError(f"{folder / WEIGHTS_FILE}: does not fit {card.arch} as {CARD_FILE} describes it ({first})") from None
    model.eval()
    model.register_forward_pre_hook(_scale_uint8)
    model.codistill_card = card  # what it is and where it came from, for whoever holds the module
    return model


def load_model(run_dir: str | Path, region: int | None = 0, strategy: str | None = None) -> nn.Module:
    """A run's trained model: region `region` of `strategy` (the run's own by default), or the student
    (`strategy="student"`). In eval mode on the CPU; raw uint8 inputs are scaled as in training."""
    return load_folder(model_folder(Path(run_dir), region, strategy))


def _scale_uint8(module: nn.Module, args: tuple) -> tuple:
    """Raw uint8 pixels become [0, 1] floats, as codistill.data.to_float made them in training."""
    x, *rest = args
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        x = x.float() / 255.0
    return (x, *rest)


def _run_order(run_dir: Path) -> list[str]:
    """The run's strategies as state.json lists them (its own first); none when it cannot be read."""
    try:
        return [str(s) for s in json.loads((run_dir / "state.json").read_text())["strategies"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
