"""Atomic checkpoints of a region: model, optimizer, step, RNG and peer versions.

A checkpoint is written to a temporary file in the same folder, fsynced,
renamed over its final name, and the folder is fsynced, so a crash at any
point leaves either the previous checkpoint or the new one, never a torn file.
Older checkpoints beyond `keep` are pruned only after the new one is durable.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step-(\d{9})\.pt$")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Enough that, when a run stops, every region still holds a step they all reached (see `align`).
KEEP = 3


def save(folder: Path, step: int, state: dict[str, Any], keep: int = KEEP) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".step-*.tmp"):  # left by a writer that died mid-write
        if not stale.name.endswith(f".{os.getpid()}.tmp"):
            stale.unlink(missing_ok=True)
    final = folder / f"step-{step:09d}.pt"
    tmp = folder / f".step-{step:09d}.pt.{os.getpid()}.tmp"
    buffer = io.BytesIO()
    torch.save({"step": step, **state}, buffer)
    with open(tmp, "wb") as fh:
        fh.write(buffer.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(folder)
    for old in checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    assert match, path
    return int(match.group(1))


def align(folders: list[Path]) -> int:
    """Make every region resume from the same step: the newest one all of `folders` hold a checkpoint of.

    Regions stop a step or a round apart; resuming each from its own newest
    checkpoint would replay rounds some peers already counted. Newer
    checkpoints are removed; with no common step, all are (a fresh start).
    Returns the step the regions will resume from (0: the beginning).
    """
    held = [{step_of(p) for p in checkpoints(f)} for f in folders]
    common = set.intersection(*held) if held else set()
    step = max(common, default=0)
    for folder in folders:
        for path in checkpoints(folder):
            if step_of(path) > step:
                path.unlink()
    return step


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; None when there is none."""
    for path in reversed(checkpoints(folder)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # a damaged file (e.g. disk error): fall back to the previous one
            continue
    return None
