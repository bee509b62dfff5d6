"""`codistill export`: a saved model as a program that runs without codistill.

`pt2`: a `torch.export` program (torch.export.load(path).module()(x)), its batch size free.
`onnx`: the same graph through torch's ONNX exporter, where its packages (onnx, onnxscript:
`pip install 'codistill[onnx]'`) are installed. Either takes float inputs already scaled as
in training (uint8 pixels / 255), shape [N, *input_shape].
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from codistill.errors import SavedModelError
from codistill.models import build_model
from codistill.saved.card import ModelCard
from codistill.saved.store import load_model

FORMATS = {"pt2": ".pt2", "onnx": ".onnx"}
_ONNX_NEEDS = ("onnx", "onnxscript")


def export(run_dir: Path, region: int | None, strategy: str | None, fmt: str, out: Path | None) -> Path:
    if fmt not in FORMATS:
        raise SavedModelError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    missing = [name for name in _ONNX_NEEDS if importlib.util.find_spec(name) is None] if fmt == "onnx" else []
    if missing:
        raise SavedModelError(f"--format onnx needs the packages {' and '.join(missing)}: pip install 'codistill[onnx]'")
    loaded = load_model(run_dir, region, strategy)
    card: ModelCard = loaded.codistill_card
    # The module itself, without the loader's uint8 hook: the program's inputs are floats.
    model = build_model(card.arch, tuple(card.input_shape), card.num_classes, card.hidden, card.model_args)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    name = "student" if card.region is None and card.strategy == "student" else f"{card.strategy}-region-{card.region}"
    out = out or Path(run_dir) / "exported" / f"{name}{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.rand(2, *card.input_shape),)
    batch = torch.export.Dim("batch", min=1)
    try:
        if fmt == "pt2":
            program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
            torch.export.save(program, out)
        else:
            torch.onnx.export(model, example, out, dynamo=True, dynamic_shapes=({0: batch},))
    except Exception as exc:  # a user model torch cannot trace: say which and why, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SavedModelError(f"{card.arch} could not be exported to {fmt}: {first}") from None
    return out
