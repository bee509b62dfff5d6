"""Checkpoint writes interrupted at random points never leave an unloadable checkpoint."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codistill import storage
from codistill.errors import CheckpointError
from codistill.region import checkpoint

WRITER = """
import sys, torch
from pathlib import Path
from codistill.region import checkpoint
folder = Path(sys.argv[1])
print("ready", flush=True)
step = 0
while True:
    step += 1
    checkpoint.save(folder, step, {"weights": torch.full((200_000,), float(step))}, keep=2)
"""


# The same folder named three ways: a Path, a str, a file:// URI.
FOLDER_FORMS = [lambda p: p, str, lambda p: f"file://{p}", storage.location]


@pytest.mark.parametrize("form", FOLDER_FORMS, ids=["path", "str", "file-uri", "location"])
def test_save_and_load_latest(tmp_path, form):
    folder = form(tmp_path / "region-0")
    for step in (10, 20, 30, 40):
        saved = checkpoint.save(folder, step, {"x": torch.tensor([step])})
        assert saved == tmp_path / "region-0" / f"step-{step:09d}.pt" and saved.is_file()
    # The newest KEEP (3) stay: enough for --resume to find a step every region still holds.
    names = ["step-000000020.pt", "step-000000030.pt", "step-000000040.pt"]
    assert [p.name for p in checkpoint.checkpoints(folder)] == names
    assert [checkpoint.step_of(p) for p in checkpoint.checkpoints(folder)] == [20, 30, 40]
    assert sorted(os.listdir(tmp_path / "region-0")) == names  # where the folder points, no tmp file left
    state = checkpoint.load_latest(folder)
    assert state["step"] == 40 and state["x"].item() == 40


def test_tmp_files_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / ".step-000000005.pt.999999999.tmp"
    dead.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.txt"
    other.write_text("not ours")
    checkpoint.save(tmp_path, 10, {})
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "step-000000010.pt"]


def test_missing_folder_has_no_checkpoint(tmp_path):
    assert checkpoint.load_latest(tmp_path / "none") is None
    assert checkpoint.load_latest(f"file://{tmp_path}/none") is None
    assert checkpoint.checkpoints(f"file://{tmp_path}/none") == []


def test_a_damaged_newest_file_falls_back(tmp_path):
    checkpoint.save(tmp_path, 1, {"x": torch.tensor([1])})
    (tmp_path / "step-000000002.pt").write_bytes(b"torn")
    assert checkpoint.load_latest(tmp_path)["step"] == 1


def test_writes_killed_at_random_points_always_leave_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    last_step = 0
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"  # imported (slow on a busy machine): writes start now
        time.sleep(0.05 + 0.3 * rng.random())  # a random point inside one of the next writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        # No final name ever holds a torn file: each is the payload written for its step, whole.
        for path in checkpoint.checkpoints(tmp_path):
            state = torch.load(path, weights_only=False)
            assert torch.equal(state["weights"], torch.full((200_000,), float(checkpoint.step_of(path))))
        state = checkpoint.load_latest(tmp_path)
        if state is None:
            assert last_step == 0, "a completed checkpoint was lost"
            continue
        last_step = max(last_step, state["step"])
    assert last_step > 0, "the writer never completed a checkpoint"


class _Payload:
    """Unpickled, it would create the file `marker`: what a hostile writer of the folder could plant."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant_payload(checkpoint_path: Path, marker: Path) -> None:
    """Overwrite a checkpoint with one that also carries `_Payload`, written by torch.save as ours are."""
    state = torch.load(checkpoint_path, weights_only=True)
    torch.save({**state, "extra": _Payload(marker)}, checkpoint_path)


@pytest.mark.parametrize("form", FOLDER_FORMS, ids=["path", "str", "file-uri", "location"])
def test_a_checkpoint_that_would_run_code_is_refused_by_name_and_never_runs_it(tmp_path, form):
    folder, marker = tmp_path / "region-0", tmp_path / "created-by-the-checkpoint"
    checkpoint.save(folder, 10, {"x": torch.tensor([10])})
    newest = checkpoint.save(folder, 20, {"x": torch.tensor([20])})
    plant_payload(newest, marker)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_latest(form(folder))
    message = str(info.value)
    assert "step-000000020.pt" in message and "\n" not in message, message
    assert not marker.exists()
    # It is not skipped in favour of an older one either: no region starts from a folder someone tampered with.
    newest.unlink()
    assert checkpoint.load_latest(form(folder))["x"].item() == 10
