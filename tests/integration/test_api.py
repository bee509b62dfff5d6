"""`codistill.run` from Python: callables instead of YAML, a typed result equal to results.json."""

import dataclasses
import json
import os
import subprocess
import sys
from textwrap import dedent

import numpy as np
import pytest
import torch
from torch import nn

import codistill
from codistill import plugins
from codistill.api import RunResult
from codistill.launch import driver
from plugin_package import write_plugin_package

pytestmark = pytest.mark.integration

# Seconds long: 3 regions, sync exchange, no metrics server, no checkpoints.
CONFIG = {
    "name": "api",
    "data": {"transfer_size": 200, "partition": {"kind": "dirichlet", "alpha": 0.5}},
    "regions": {"count": 3, "hidden": [32], "model_args": {"width": 24}, "num_cpus": 0.25},
    "train": {"steps": 40, "batch_size": 32, "lr": 0.01, "eval_every": 20},
    "distill": {"burn_in": 10, "weight": 2.0},
    "exchange": {"publish_interval": 10, "round_timeout_s": 20},
    "monitor": {"metrics": False},
    "fault": {"checkpoint_every": 0},
}


def tiny_net(input_shape, num_classes, width=16):
    features = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.Tanh(), nn.Linear(width, num_classes))


def clusters():
    """Three clusters in the plane, as float64 tensors: [N, 2] examples, not images."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 900)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    x = centers[y] + rng.normal(0, 1.0, (900, 2))
    x, y = torch.tensor(x), torch.tensor(y)
    return codistill.Dataset(x[150:], y[150:], x[:150], y[:150], ["north", "east", "west"], name="clusters")


def _same_document(a: dict, b: dict) -> bool:
    # Through JSON text: NaN figures (a run without validation) compare equal there.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_run_with_callables_returns_what_results_json_holds(tmp_path):
    out = tmp_path / "run"
    result = codistill.run(CONFIG, model=tiny_net, dataset=clusters, out=out, transport="inprocess", compare=["independent"])
    doc = json.loads((out / "results.json").read_text())
    assert isinstance(result, RunResult) and result.out == out
    assert _same_document(json.loads(result.to_json()), doc)
    # The typed fields are the document's figures.
    assert result.strategy == "codistill" and result.transport == "inprocess"
    assert result.mean_test_accuracy == doc["mean_test_accuracy"] and result.wall_seconds == doc["wall_seconds"]
    assert result.bytes_sent == doc["bytes_sent"] > 0
    assert [r.test_accuracy for r in result.regions] == [r["test_accuracy"] for r in doc["regions"]]
    assert [r.curve for r in result.regions] == [tuple(tuple(p) for p in r["curve"]) for r in doc["regions"]]
    assert result.regions[0].curve[-1][0] == CONFIG["train"]["steps"]
    assert set(result.compare) == {"codistill", "independent"}
    assert result.compare["independent"].mean_test_accuracy == doc["compare"]["independent"]["mean_test_accuracy"]
    # The callables ran as import paths: the run folder says what ran, and the user's data reached the regions.
    assert result.config.regions.model == "test_api:tiny_net" == doc["config"]["regions"]["model"]
    assert result.config.data.dataset == "test_api:clusters"
    assert result.dataset.name == "clusters" and result.dataset.classes == ("north", "east", "west")
    assert result.dataset.train == 750 and result.dataset.test == 150
    assert all(r.arch == "test_api:tiny_net" for r in result.regions)
    assert result.mean_test_accuracy > 0.6  # three clusters: chance is 1/3
    assert RunResult.load(out).to_json() == result.to_json()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.mean_test_accuracy = 1.0


def test_a_lambda_model_and_a_dataset_object_run_in_process(tmp_path):
    result = codistill.run(
        CONFIG, model=[lambda shape, classes, width: tiny_net(shape, classes, width), "mlp", tiny_net], dataset=clusters(),
        out=tmp_path / "run", transport="inprocess", overrides=["train.steps=20"],
    )
    archs = [r.arch for r in result.regions]
    assert archs[0].startswith(plugins.REGISTERED_PREFIX + "_lambda_") and archs[1:] == ["mlp", "test_api:tiny_net"]
    assert result.dataset.name == "clusters" and all(r.steps == 20 for r in result.regions)


@pytest.fixture
def nothing_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run started despite bad input")

    monkeypatch.setattr(driver, "run", refuse)


def test_ray_refuses_a_model_only_this_process_has_before_anything_starts(tmp_path, nothing_may_start):
    def local_net(input_shape, num_classes, **kwargs):
        return tiny_net(input_shape, num_classes)

    with pytest.raises(codistill.ConfigError, match=r"^regions.model 'codistill.plugins:registered.local_net_\d+': Ray's workers cannot import"):
        codistill.run(CONFIG, model=local_net, dataset=clusters, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"model": lambda shape, classes, **kw: "not a model"}, "factory returned str, not a torch.nn.Module"),
        ({"model": lambda shape, classes, **kw: nn.Linear(2, classes + 1)}, "logits are [2, 4] float32 for a [2, 2] batch"),
        ({"model": "nothere:net"}, "regions.model 'nothere:net': does not import"),
        ({"dataset": lambda: "clusters"}, "data.dataset 'codistill.plugins:registered._lambda__"),
        ({"transport": "carrier-pigeon"}, "exchange.transport: Input should be 'grpc' or 'inprocess'"),
    ],
)
def test_a_bad_plugin_is_a_config_error_before_anything_starts(tmp_path, nothing_may_start, kwargs, needle):
    args = {"model": tiny_net, "dataset": clusters, "transport": "inprocess", **kwargs}
    with pytest.raises(codistill.ConfigError) as caught:
        codistill.run(CONFIG, out=tmp_path / "run", **args)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_run_through_ray_imports_the_callables_in_the_regions(tmp_path):
    """A script hands codistill.run functions of the user's package; Ray's region actors import them by name."""
    plugins_dir = write_plugin_package(tmp_path / "plugins")
    script = tmp_path / "train.py"
    script.write_text(dedent(f"""
        import json
        import codistill
        from myplug.data import blobs
        from myplug.nets import wide

        config = {CONFIG!r}
        config["data"]["loader_args"] = {{"n": 900, "classes": 3, "dims": 8, "test": 150}}
        result = codistill.run(config, model=[wide, "mlp", wide], dataset=blobs, out={str(tmp_path / "run")!r})
        print(json.dumps({{"transport": result.transport, "archs": [r.arch for r in result.regions],
                          "mean": result.mean_test_accuracy, "sent": result.bytes_sent}}))
    """))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins_dir), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert printed == {"transport": "grpc", "archs": ["myplug.nets:wide", "mlp", "myplug.nets:wide"],
                       "mean": doc["mean_test_accuracy"], "sent": doc["bytes_sent"]}
    assert doc["bytes_sent"] > 0 and doc["dataset"]["name"] == "blobs"
