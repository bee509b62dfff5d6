"""Atomic checkpoints of a region: model, optimizer, step, RNG and peer versions.

A region's folder is a local path, a shared mount or a URI (codistill.storage).
Locally a checkpoint is written to a temporary file in the same folder,
fsynced, renamed over its final name, and the folder is fsynced, so a crash at
any point leaves either the previous checkpoint or the new one, never a torn
file. In an object store the final name is written directly: one upload is
visible whole or not at all. Either way, older checkpoints beyond `keep` are
pruned only after the new one is written.

Functions take a folder as a `Path`, a `str` or a `Location`. A checkpoint is
named by a `Path` when its folder is local and by a `Location` otherwise.

A checkpoint holds tensors and plain values only, and is read with torch's
weights-only unpickler: a file that asks for anything else (whoever can write to
the folder or bucket could otherwise run code on every node that restores a
region) is refused by name, and no region starts from it.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from codistill import storage
from codistill.errors import CheckpointError
from codistill.storage import Location

_NAME = re.compile(r"^step-(\d{9})\.pt$")
# Left by a writer that died mid-write: storage writes a local NAME through .NAME.PID.tmp first.
_TMP = re.compile(r"^\.step-\d{9}\.pt\.\d+\.tmp$")

Folder = Path | str | Location
Checkpoint = Path | Location

# Enough that, when a run stops, every region still holds a step they all reached (see `align`).
KEEP = 3


def save(folder: Folder, step: int, state: dict[str, Any], keep: int = KEEP) -> Checkpoint:
    loc = storage.location(folder)
    if loc.is_local:
        _remove_stale_tmp(loc)
    buffer = io.BytesIO()
    torch.save({"step": step, **state}, buffer)
    final = loc.child(f"step-{step:09d}.pt")
    storage.write_bytes(final, buffer.getvalue())
    for old in checkpoints(loc)[:-keep]:
        _delete(old)
    return _named(final)


def checkpoints(folder: Folder) -> list[Checkpoint]:
    """Complete checkpoints, oldest first (temporary files are ignored)."""
    loc = storage.location(folder)
    return [_named(loc.child(name)) for name in sorted(storage.list_names(loc)) if _NAME.match(name)]


def step_of(path: Checkpoint | str) -> int:
    name = path.name if isinstance(path, (Path, Location)) else storage.location(path).name
    match = _NAME.match(name)
    assert match, path
    return int(match.group(1))


def align(folders: list[Folder]) -> int:
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
                _delete(path)
    return step


def load_latest(folder: Folder) -> dict[str, Any] | None:
    """The newest checkpoint that loads; None when there is none.

    Raises CheckpointError for one that holds more than tensors and plain values."""
    for path in reversed(checkpoints(folder)):
        try:
            return load(path)
        except CheckpointError:
            raise
        except Exception:  # a damaged file (e.g. disk error) or one pruned meanwhile: fall back to the previous one
            continue
    return None


def load(path: Checkpoint) -> dict[str, Any]:
    """One checkpoint, read without running code: anything but tensors and plain values is refused."""
    try:
        return torch.load(_source(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names what it refused ("Unsupported global: GLOBAL os.system ..."); the rest of its text is advice for developers.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it asks for {found.group(1)}" if found else "it holds more than tensors and plain values"
        raise CheckpointError(
            f"checkpoint {path} was not loaded: {what}, which no codistill checkpoint does"
            " (it was changed since it was written; move it away to resume from an earlier one)"
        ) from None


def _named(loc: Location) -> Checkpoint:
    return loc.path if loc.is_local else loc


def _source(path: Checkpoint) -> Path | io.BytesIO:
    return path if isinstance(path, Path) else io.BytesIO(storage.read_bytes(path))


def _delete(path: Checkpoint) -> None:
    storage.delete(storage.location(path))


def _remove_stale_tmp(loc: Location) -> None:
    """Remove the temporary files of writers that died mid-write (never this process's own)."""
    own = f".{os.getpid()}.tmp"
    for name in storage.list_names(loc):
        if _TMP.match(name) and not name.endswith(own):
            (loc.path / name).unlink(missing_ok=True)
