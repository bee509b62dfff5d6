"""Saved models: written as safetensors + model.json, loaded back as modules, exported, refused when broken."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from codistill import cli, load_model
from codistill.errors import SavedModelError
from codistill.models import build_model
from codistill.saved import export as export_mod
from codistill.saved.card import ModelCard
from codistill.saved.ensemble import Ensemble, predict_proba
from codistill.saved.store import load_folder, region_folder, save, weights_to_bytes

C, SHAPE = 4, [1, 8, 8]


def _card(arch="mlp", **overrides) -> ModelCard:
    values = dict(
        arch=arch, hidden=[16], model_args={"width": 4} if ":" in arch else {}, input_shape=SHAPE, num_classes=C,
        class_names=[f"c{i}" for i in range(C)], run_id="run-1", strategy="codistill", region=0, step=60, temperature=3.0,
    )
    return ModelCard(**{**values, **overrides})


def _saved(tmp_path, arch="mlp", region=0, seed=0):
    torch.manual_seed(seed)
    card = _card(arch, region=region)
    model = build_model(arch, tuple(SHAPE), C, card.hidden, card.model_args).eval()
    folder = save(region_folder(tmp_path, "codistill", region), weights_to_bytes(model), card)
    return model, folder


def test_a_user_factory_model_round_trips_with_identical_logits(tmp_path):
    original, _ = _saved(tmp_path, "examples.nets:resnet8")
    loaded = load_model(tmp_path, region=0, strategy="codistill")
    x = torch.rand(100, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
    assert type(loaded).__name__ == type(original).__name__ == "ResNet8"


def test_raw_uint8_pixels_are_scaled_as_in_training(tmp_path):
    _saved(tmp_path)
    model = load_model(tmp_path, region=0, strategy="codistill")
    pixels = torch.randint(0, 256, (10, *SHAPE), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(pixels), model(pixels.float() / 255))


def test_the_ensemble_mean_is_the_mean_of_the_regions_and_consensus_rows_are_distributions(tmp_path):
    models = [load_folder(_saved(tmp_path, region=i, seed=i)[1]) for i in range(3)]
    x = np.random.default_rng(0).integers(0, 256, (20, *SHAPE), dtype=np.uint8)
    each = np.stack([predict_proba(m, x) for m in models])
    assert np.array_equal(Ensemble(models).predict_proba(x), np.mean(each, axis=0))
    consensus = Ensemble(models, "consensus").predict_proba(x)
    assert consensus.shape == (20, C) and np.allclose(consensus.sum(1), 1, atol=1e-5)


def test_an_exported_program_runs_without_codistill_and_matches(tmp_path):
    _saved(tmp_path, "cnn")
    out = export_mod.export(tmp_path, 0, "codistill", "pt2", tmp_path / "region-0.pt2")
    x = torch.rand(7, *SHAPE, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = load_model(tmp_path, 0, "codistill")(x)
    script = textwrap.dedent(f"""
        import sys, torch
        program = torch.export.load({str(out)!r}).module()
        logits = program(torch.load({str(tmp_path / 'x.pt')!r}))
        assert not any(name.startswith("codistill") for name in sys.modules), "codistill was imported"
        torch.save(logits, {str(tmp_path / 'logits.pt')!r})
    """)
    # Not from the repository root, and without it on the path: codistill cannot be found there.
    subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, check=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda d: d.update(num_classes="many"), "num_classes"),
        (lambda d: d.update(input_shape=[]), "input_shape"),
        (lambda d: d.update(class_names=["a"]), "class names"),
        (lambda d: d.update(format=99), "format"),
        (lambda d: d.pop("arch"), "arch"),
        (lambda d: d.update(arch="nosuch.module:factory"), "cannot rebuild"),
        (lambda d: d.update(hidden=[32]), "does not fit"),
    ],
    ids=["classes", "shape", "names", "format", "no arch", "factory gone", "weights of another shape"],
)
def test_a_model_json_edited_into_nonsense_is_one_clear_error(tmp_path, edit, needle):
    _, folder = _saved(tmp_path)
    doc = json.loads((folder / "model.json").read_text())
    edit(doc)
    (folder / "model.json").write_text(json.dumps(doc))
    with pytest.raises(SavedModelError, match=needle) as info:
        load_model(tmp_path, 0, "codistill")
    assert "\n" not in str(info.value)


def test_weights_that_are_not_safetensors_are_refused(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(SavedModelError, match="does not fit"):
        load_model(tmp_path, 0, "codistill")


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, [line for line in (captured.out + captured.err).splitlines() if line.strip()]


def _run_folder(tmp_path):
    """A run folder with saved regions (state.json names the strategies) but no data of its own."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "state.json").write_text(json.dumps({"run_id": "run-1", "strategies": ["codistill"], "done": {}}))
    for i in range(2):
        _saved(tmp_path, region=i, seed=i)
    return tmp_path


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("not a run", "not a codistill run folder"),
        ("no models", "holds no saved models"),
        ("region out of range", "region 7 is not among"),
        ("wrong example shape", "the model takes [1, 8, 8]"),
        ("npz without x", "needs an array 'x'"),
        ("labels outside the classes", "labels must lie in 0..3"),
        ("not an array file", "not an .npz or .npy"),
        ("no student", "no student model"),
        ("export format missing", "--format must be one of"),
        ("input and split", "one of the two"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, needle):
    run = tmp_path / "run"
    run.mkdir()
    good = np.zeros((3, *SHAPE), dtype=np.uint8)
    argv = {  # built lazily: each case writes its own input file
        "not a run": lambda: ["predict", str(tmp_path / "elsewhere"), _npz(tmp_path / "a.npz", x=good)],
        "no models": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", x=good)],
        "region out of range": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", x=good), "--region", "7"],
        "wrong example shape": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", x=np.zeros((3, 28, 28), dtype=np.uint8))],
        "npz without x": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", images=good)],
        "labels outside the classes": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", x=good, y=np.array([0, 1, 9]))],
        "not an array file": lambda: ["predict", str(run), str(tmp_path / "junk.npz")],
        "no student": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", x=good), "--student"],
        "export format missing": lambda: ["export", str(run), "--region", "0", "--format", "tflite"],
        "input and split": lambda: ["predict", str(run), _npz(tmp_path / "a.npz", x=good), "--split", "test"],
    }[case]()
    (tmp_path / "junk.npz").write_bytes(b"no arrays here")
    if case == "no models":
        (run / "state.json").write_text(json.dumps({"run_id": "run-1", "strategies": ["codistill"], "done": {}}))
    elif case != "not a run":
        _run_folder(run)
    code, lines = _cli(capsys, *argv)
    assert code == cli.EXIT_USAGE and len(lines) == 1 and needle in lines[0], lines


def test_predict_on_a_file_prints_accuracy_and_recall_and_writes_probabilities(tmp_path, capsys):
    run = _run_folder(tmp_path / "run")
    x = np.random.default_rng(0).integers(0, 256, (12, *SHAPE), dtype=np.uint8)
    model = load_model(run, 0)
    y = predict_proba(model, x).argmax(1)
    y[:3] = (y[:3] + 1) % C  # three wrong
    code, lines = _cli(capsys, "predict", str(run), _npz(tmp_path / "in.npz", x=x, y=y), "--out", str(tmp_path / "p.npz"))
    assert code == 0 and "accuracy 0.7500 (9/12)" in lines, lines
    saved = np.load(tmp_path / "p.npz")
    assert saved["probs"].shape == (12, C) and np.array_equal(saved["classes"], saved["probs"].argmax(1))
