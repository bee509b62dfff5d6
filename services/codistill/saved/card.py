"""model.json: everything needed to rebuild a saved model and feed it, beside its weights.

A model's weights travel as safetensors (tensors only: loading them runs no code), its card as
JSON. The card names the architecture and its arguments, the input shape and scaling, the
classes, and where the model came from (run, strategy, region, step) with its accuracies.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from codistill.errors import SavedModelError

FORMAT = 1
# How inputs were scaled in training (codistill.data.to_float): uint8 pixels to [0, 1], floats as they are.
UINT8_TO_UNIT = "uint8/255"
CARD_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"


@dataclass(frozen=True)
class ModelCard:
    arch: str  # mlp, cnn, or package.module:factory
    hidden: list[int]  # the MLP's hidden widths (regions.hidden)
    model_args: dict[str, Any]  # keyword arguments of a user factory (regions.model_args)
    input_shape: list[int]  # one example, e.g. [1, 28, 28]
    num_classes: int
    class_names: list[str]
    run_id: str
    strategy: str
    region: int | None  # None: not one region's (fedavg's average, the student)
    step: int
    temperature: float  # the run's distill.temperature: what its peers softened predictions with
    validation_accuracy: float = float("nan")
    test_accuracy: float = float("nan")
    input_scaling: str = UINT8_TO_UNIT
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. how a student was distilled

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("validation_accuracy", "test_accuracy"):  # JSON has no NaN
            doc[key] = None if math.isnan(doc[key]) else doc[key]
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: Path | str) -> ModelCard:
        """A card read back; anything edited into nonsense is one SavedModelError naming the file and field."""
        if not isinstance(doc, dict):
            raise SavedModelError(f"{where}: not a model card (a JSON object)")
        if doc.get("format") != FORMAT:
            raise SavedModelError(f"{where}: model card format {doc.get('format')!r}; this codistill reads format {FORMAT}")
        checks = {
            "arch": lambda v: isinstance(v, str) and v,
            "hidden": lambda v: isinstance(v, list) and all(_positive_int(h) for h in v),
            "model_args": lambda v: isinstance(v, dict),
            "input_shape": lambda v: isinstance(v, list) and v and all(_positive_int(d) for d in v),
            "num_classes": lambda v: _positive_int(v) and v >= 2,
            "class_names": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
            "run_id": lambda v: isinstance(v, str),
            "strategy": lambda v: isinstance(v, str) and v,
            "region": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
            "step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "temperature": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
            "input_scaling": lambda v: v == UINT8_TO_UNIT,
        }
        for key, ok in checks.items():
            if key not in doc or not ok(doc[key]):
                raise SavedModelError(f"{where}: field '{key}' is missing or invalid ({str(doc.get(key))[:60]!r})")
        if len(doc["class_names"]) != doc["num_classes"]:
            raise SavedModelError(f"{where}: {len(doc['class_names'])} class names for {doc['num_classes']} classes")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in doc.items() if k in known}
        for key in ("validation_accuracy", "test_accuracy"):
            values[key] = float("nan") if values.get(key) is None else float(values[key])
        return cls(**values)

    def write(self, folder: Path) -> Path:
        path = folder / CARD_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelCard:
        path = folder / CARD_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise SavedModelError(f"{folder}: no {CARD_FILE}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SavedModelError(f"{path}: not JSON ({exc})") from None
        return cls.from_json(doc, path)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1
