"""Every example in examples/ runs as its header says, at a reduced step count, through Ray and gRPC."""

import ast
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.integration

# Short runs that still exchange: rounds start at the burn-in.
QUICK = ["--set", "distill.burn_in=10", "--set", "exchange.publish_interval=10"]


def _run(*command, cwd=ROOT):
    return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=480)


def _codistill():
    """The console script a user runs (it, unlike `python -m`, does not put the current folder on sys.path)."""
    script = Path(sys.executable).with_name("codistill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "codistill"]


def _header(path: Path) -> str:
    """A script's docstring, or a config's leading comment lines."""
    text = path.read_text()
    if path.suffix == ".py":
        return ast.get_docstring(ast.parse(text)) or ""
    return "\n".join(line for line in itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))


def _headers():
    return {path.name: _header(path) for path in EXAMPLES.iterdir() if path.suffix in (".py", ".yaml")}


def test_every_example_says_how_to_run_it():
    headers = _headers()
    assert {"fashion_resnet_mlp.yaml", "digits_npz.yaml", "make_digits_npz.py", "api_run.py", "nets.py", "__init__.py"} <= set(headers)
    for name in ("fashion_resnet_mlp.yaml", "digits_npz.yaml"):
        assert f"codistill run examples/{name}" in headers[name], name
    assert "python examples/make_digits_npz.py" in headers["make_digits_npz.py"]
    assert "python examples/api_run.py" in headers["api_run.py"]


def test_fashion_mnist_resnet_next_to_the_mlp(tmp_path):
    out = tmp_path / "run"
    res = _run(*_codistill(), "run", "examples/fashion_resnet_mlp.yaml", "--quiet", "--out", str(out),
               "--set", "train.steps=30", *QUICK, "--set", "data.transfer_size=500", "--set", "data.validation_size=500")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["transport"] == "grpc" and doc["dataset"]["name"] == "fashion-mnist"
    assert doc["dataset"]["train"] == 60_000 and doc["dataset"]["test"] == 10_000
    assert [r["arch"] for r in doc["regions"]] == ["mlp", "examples.nets:resnet8"] * 2
    assert all(r["steps"] == 30 and r["bytes_received"] > 0 for r in doc["regions"])
    # 30 steps are enough to leave chance (0.1) behind, for both architectures.
    assert all(r["test_accuracy"] > 0.15 for r in doc["regions"]), [r["test_accuracy"] for r in doc["regions"]]
    assert f"{doc['mean_test_accuracy']:.3f}" in res.stdout  # the final table


def test_npz_dataset_made_from_digits(tmp_path):
    npz = tmp_path / "digits.npz"
    made = _run(sys.executable, "examples/make_digits_npz.py", "--out", str(npz))
    assert made.returncode == 0, made.stdout + made.stderr
    assert made.stdout.strip() == f"wrote {npz}: 1437 train, 360 test, 64 features"
    with np.load(npz) as arrays:
        assert arrays["x_train"].shape == (1437, 64) and arrays["x_train"].dtype == np.float32
        assert 0.0 <= arrays["x_train"].min() and arrays["x_train"].max() <= 1.0
    out = tmp_path / "run"
    res = _run(*_codistill(), "run", "examples/digits_npz.yaml", "--quiet", "--out", str(out), "--set", f"data.path={npz}",
               "--set", "train.steps=60", *QUICK)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["transport"] == "grpc" and doc["bytes_sent"] > 0
    assert doc["dataset"]["name"] == "digits" and doc["dataset"]["classes"] == [f"digit {d}" for d in range(10)]
    assert doc["dataset"]["train"] == 1437 and doc["dataset"]["test"] == 360
    assert len(doc["regions"]) == 6 and doc["mean_test_accuracy"] > 0.2


def test_python_api_script(tmp_path):
    out = tmp_path / "run"
    res = _run(sys.executable, str(EXAMPLES / "api_run.py"), "--out", str(out), "--set", "train.steps=60", *QUICK, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["transport"] == "grpc" and [r["arch"] for r in doc["regions"]] == ["nets:resnet8", "mlp"] * 2
    ind = doc["compare"]["independent"]
    lines = res.stdout.strip().splitlines()
    for mine, alone in zip(doc["regions"], ind["regions"]):
        assert any(re.fullmatch(rf"region {mine['id']} {re.escape(mine['arch'])} +codistill {mine['test_accuracy']:.3f}  "
                                rf"independent {alone['test_accuracy']:.3f}", line) for line in lines), lines
    assert f"mean test accuracy: codistill {doc['mean_test_accuracy']:.3f}, independent {ind['mean_test_accuracy']:.3f}" in lines
    assert f"bytes sent: {doc['bytes_sent']};" in res.stdout and doc["bytes_sent"] > 0
    assert os.fspath(out / "results.json") in lines[-1]
