"""--resume puts every region on the newest checkpoint step all of them hold."""

import os

import pytest

from codistill.region import checkpoint

# A region's folder as a Path or as a file:// URI.
FORMS = pytest.mark.parametrize("form", [lambda p: p, lambda p: f"file://{p}"], ids=["path", "file-uri"])


def _folders(tmp_path, held, form):
    folders = []
    for i, steps in enumerate(held):
        folder = form(tmp_path / f"region-{i}")
        for step in steps:
            checkpoint.save(folder, step, {"region": i}, keep=10)
        folders.append(folder)
    return folders


@FORMS
def test_regions_a_checkpoint_apart_resume_from_the_step_they_all_hold(tmp_path, form):
    folders = _folders(tmp_path, [[700, 800, 900], [700, 800], [800, 900]], form)
    assert checkpoint.align(folders) == 800
    assert [[checkpoint.step_of(p) for p in checkpoint.checkpoints(f)] for f in folders] == [[700, 800], [700, 800], [800]]
    assert os.listdir(tmp_path / "region-2") == ["step-000000800.pt"]  # removed where the folder points
    assert {checkpoint.load_latest(f)["step"] for f in folders} == {800}


@FORMS
def test_no_common_step_means_a_fresh_start(tmp_path, form):
    folders = _folders(tmp_path, [[100], [200], []], form)
    assert checkpoint.align(folders) == 0
    assert all(checkpoint.load_latest(f) is None for f in folders)
