"""Checkpoint writes interrupted at random points never leave an unloadable checkpoint."""

import os
import random
import signal
import subprocess
import sys
import time

import torch

from codistill.region import checkpoint

WRITER = """
import sys, torch
from pathlib import Path
from codistill.region import checkpoint
folder = Path(sys.argv[1])
step = 0
while True:
    step += 1
    checkpoint.save(folder, step, {"weights": torch.full((200_000,), float(step))}, keep=2)
"""


def test_save_and_load_latest(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, step, {"x": torch.tensor([step])})
    # The newest KEEP (3) stay: enough for --resume to find a step every region still holds.
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-000000020.pt", "step-000000030.pt", "step-000000040.pt"]
    state = checkpoint.load_latest(tmp_path)
    assert state["step"] == 40 and state["x"].item() == 40


def test_missing_folder_has_no_checkpoint(tmp_path):
    assert checkpoint.load_latest(tmp_path / "none") is None


def test_a_damaged_newest_file_falls_back(tmp_path):
    checkpoint.save(tmp_path, 1, {"x": torch.tensor([1])})
    (tmp_path / "step-000000002.pt").write_bytes(b"torn")
    assert checkpoint.load_latest(tmp_path)["step"] == 1


def test_writes_killed_at_random_points_always_leave_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    last_step = 0
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env)
        time.sleep(1.5 + rng.random())  # import time plus a random point inside a write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = checkpoint.load_latest(tmp_path)
        if state is None:
            continue
        # The payload is the one written for that step, whole.
        assert torch.equal(state["weights"], torch.full((200_000,), float(state["step"])))
        last_step = max(last_step, state["step"])
    assert last_step > 0, "the writer never completed a checkpoint"
