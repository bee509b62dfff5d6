"""A real run (Ray + gRPC, as `make quickstart` runs it) leaves models that predict what results.json reports, and a student."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
pytestmark = pytest.mark.integration


def codistill(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _accuracy(output: str) -> tuple[int, int]:
    found = re.search(r"accuracy [0-9.]+ \((\d+)/(\d+)\)", output)
    assert found, output
    return int(found.group(1)), int(found.group(2))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "run"
    res = codistill("run", QUICKSTART, "--compare", "independent", "--quiet", "--set", "train.steps=150", "--out", str(out), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_every_region_of_every_strategy_is_saved(quick_run):
    for strategy in ("codistill", "independent"):
        folders = sorted((quick_run / "models" / strategy).iterdir())
        assert [f.name for f in folders] == [f"region-{i}" for i in range(6)]
        for f in folders:
            card = json.loads((f / "model.json").read_text())
            assert (f / "model.safetensors").stat().st_size > 0
            assert card["strategy"] == strategy and card["arch"] == "mlp" and card["step"] == 150 and card["input_shape"] == [1, 8, 8]


def test_predict_on_the_test_split_gives_the_accuracies_results_json_reports(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    for region in (0, 5):
        res = codistill("predict", str(quick_run), "--split", "test", "--region", str(region), cwd=ROOT)
        correct, n = _accuracy(res.stdout)
        # results.json holds a float32 mean: the same count of correct examples.
        assert correct == round(results["regions"][region]["test_accuracy"] * n), (res.stdout, results["regions"][region])
    res = codistill("predict", str(quick_run), "--split", "test", "--ensemble", cwd=ROOT)
    correct, n = _accuracy(res.stdout)
    assert correct / n == results["ensemble_test_accuracy"], res.stdout
    res = codistill("predict", str(quick_run), "--split", "test", "--ensemble", "--strategy", "independent", cwd=ROOT)
    correct, n = _accuracy(res.stdout)
    assert correct / n == results["compare"]["independent"]["ensemble_test_accuracy"], res.stdout


def test_distill_reports_the_student_accuracy_that_predict_finds(quick_run):
    res = codistill("distill", str(quick_run), "--model", "mlp", "--steps", "300", cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    reported = float(re.search(r"│ student\s+│ ([0-9.]+)", res.stdout).group(1))
    card = json.loads((quick_run / "models" / "student" / "model.json").read_text())
    assert card["strategy"] == "student" and card["extra"]["teacher"] == "codistill"
    res = codistill("predict", str(quick_run), "--split", "test", "--student", cwd=ROOT)
    correct, n = _accuracy(res.stdout)
    assert f"{correct / n:.4f}" == f"{reported:.4f}" and correct / n == card["test_accuracy"], (res.stdout, card)
