"""--resume puts every region on the newest checkpoint step all of them hold."""

from codistill.region import checkpoint


def _folders(tmp_path, held):
    folders = []
    for i, steps in enumerate(held):
        folder = tmp_path / f"region-{i}"
        for step in steps:
            checkpoint.save(folder, step, {"region": i}, keep=10)
        folders.append(folder)
    return folders


def test_regions_a_checkpoint_apart_resume_from_the_step_they_all_hold(tmp_path):
    folders = _folders(tmp_path, [[700, 800, 900], [700, 800], [800, 900]])
    assert checkpoint.align(folders) == 800
    assert [[checkpoint.step_of(p) for p in checkpoint.checkpoints(f)] for f in folders] == [[700, 800], [700, 800], [800]]
    assert {checkpoint.load_latest(f)["step"] for f in folders} == {800}


def test_no_common_step_means_a_fresh_start(tmp_path):
    folders = _folders(tmp_path, [[100], [200], []])
    assert checkpoint.align(folders) == 0
    assert all(checkpoint.load_latest(f) is None for f in folders)
