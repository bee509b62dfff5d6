"""A bench cell: one (row, strategy, seed), computed once and cached under OUT/cells/.

A cell's file is named by a hash of its effective config and of the code
that computes it, so an interrupted suite resumes where it stopped, a cell
whose config or code changed is run again, and one computation shared by
several rows (centralized ignores the partition) runs once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from codistill import config as config_mod
from codistill.records import StrategyResult

ROOT = Path(__file__).resolve().parents[1]
# What only renders results (codistill.report, as a whole): changing it cannot change a cell's numbers.
RENDERING = ("report",)


def code_version() -> str:
    """Hash of the package's source that computes cells: everything but the reporting subpackage."""
    digest = hashlib.sha256()
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in RENDERING:
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def effective_config(cfg: config_mod.RunConfig) -> dict[str, Any]:
    """What a cell's numbers depend on: the resolved config without its name and secrets, and without
    the partition for centralized, which trains on the union of all slices (the same for every partition)."""
    doc = cfg.model_dump(mode="json")
    doc.pop("name")
    doc["security"]["token"] = None
    if cfg.strategy == "centralized":
        doc["data"].pop("partition")
    return doc


def config_key(cfg: config_mod.RunConfig) -> str:
    return hashlib.sha256(json.dumps(effective_config(cfg), sort_keys=True).encode()).hexdigest()[:20]


def find_cell(cells_dir: Path, cfg: config_mod.RunConfig, version: str | None) -> Path | None:
    """The cached cell of this config computed by code `version`; with None, by any version (the
    newest), for reporting on what is finished: the report then refuses cells of mixed versions."""
    key = config_key(cfg)
    if version is not None:
        path = cells_dir / f"{key}-{version}.json"
        return path if path.is_file() else None
    found = sorted(cells_dir.glob(f"{key}-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def extras(cfg: config_mod.RunConfig, result: StrategyResult) -> dict[str, float]:
    """Row-specific measures: honest regions' accuracy under lies, hidden-class recall under omit."""
    out: dict[str, float] = {}
    if cfg.chaos.liars and result.strategy != "centralized":
        honest = [r for r in result.regions if r.id not in cfg.chaos.liars]
        out["honest_mean_test_accuracy"] = float(np.mean([r.test_accuracy for r in honest]))
        out["honest_mean_validation_accuracy"] = float(np.mean([r.validation_accuracy for r in honest]))
    if cfg.data.partition.kind == "omit":
        blind = set(cfg.omit_regions()) if result.strategy != "centralized" else set()
        hidden = cfg.data.partition.omit_classes
        for label, group in (("blind", [r for r in result.regions if r.id in blind]), ("seeing", [r for r in result.regions if r.id not in blind])):
            if group:
                out[f"hidden_recall_{label}"] = float(np.mean([np.mean([r.per_class_recall[c] for c in hidden]) for r in group]))
    return out


def cell_document(cfg: config_mod.RunConfig, result: StrategyResult, row: str, spec: str, seed: int, version: str) -> dict[str, Any]:
    """What a cell's file holds: the strategy's figures, where it sits in the suite, and what computed it."""
    doc = {
        **result.to_json(), "row": row, "spec": spec, "seed": seed, "extras": extras(cfg, result),
        "config": cfg.model_dump(mode="json"), "code_version": version,
    }
    doc["config"]["security"]["token"] = None
    return doc
