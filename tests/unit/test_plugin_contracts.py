"""Import paths, the Dataset contract, npz files and the dry-run checks of user models."""

import json
import os
import sys
from textwrap import dedent

import numpy as np
import pytest
import torch
from torch import nn

from codistill import config, data, plugins
from codistill.api import RunResult
from codistill.models import build_model


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `usernets` on the path: a good factory, a broken one, and a module-level value."""
    (tmp_path / "usernets.py").write_text(dedent("""
        from torch import nn

        LIMIT = 3

        def linear(input_shape, num_classes, bias=True):
            n = 1
            for d in input_shape:
                n *= d
            return nn.Sequential(nn.Flatten(), nn.Linear(n, num_classes, bias=bias))

        def batch_of_one(input_shape, num_classes, **kwargs):
            class First(nn.Module):
                def forward(self, x):
                    return x.flatten(1)[:1, :num_classes]
            return First()

        class Zoo:
            @staticmethod
            def tiny(input_shape, num_classes):
                return linear(input_shape, num_classes)
    """))
    (tmp_path / "explodes.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("usernets", "explodes"):
        sys.modules.pop(name, None)


def _cfg(**regions):
    return config.from_dict({"regions": {"count": 3, "hidden": [8], **regions}})


def _dataset(n=20, shape=(1, 4, 4), classes=3):
    rng = np.random.default_rng(0)
    return data.Dataset(rng.random((n, *shape)), np.arange(n) % classes, rng.random((6, *shape)), np.arange(6) % classes)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("name", ["mlp", "cnn", "pkg.mod:factory", "pkg:Zoo.tiny", "_p.m2:f_1"])
def test_models_are_builtins_or_import_paths(name):
    assert _cfg(model=name).regions.model == name
    assert _cfg(models=["mlp", name, "cnn"]).regions.models == ["mlp", name, "cnn"]


@pytest.mark.parametrize("name", ["resnet", "pkg.mod", "pkg.mod:", ":f", "pkg/mod:f", "pkg.mod:f()", "1pkg:f"])
def test_anything_else_is_refused_naming_the_field(name):
    with pytest.raises(config.ConfigError, match=r"^regions.models.1: expected mlp, cnn or an import path 'package.module:factory'"):
        _cfg(models=["mlp", name, "cnn"])


def test_dataset_names_and_the_npz_path_go_together():
    assert config.from_dict({"data": {"dataset": "pkg.data:load", "loader_args": {"n": 3}}}).data.loader_args == {"n": 3}
    assert config.from_dict({"data": {"dataset": "npz", "path": "x.npz"}}).data.path == "x.npz"
    for raw in ({"dataset": "npz"}, {"dataset": "digits", "path": "x.npz"}):
        with pytest.raises(config.ConfigError, match="data.path names the file of data.dataset: npz"):
            config.from_dict({"data": raw})
    with pytest.raises(config.ConfigError, match="data.dataset: expected digits, fashion-mnist, synthetic, npz or an import path"):
        config.from_dict({"data": {"dataset": "mnist"}})


def test_plugin_arguments_must_be_plain_data():
    with pytest.raises(config.ConfigError, match=r"^regions.model_args: values must be plain data"):
        _cfg(model_args={"layer": nn.Linear(2, 2)})
    with pytest.raises(config.ConfigError, match=r"^data.loader_args: values must be plain data"):
        config.from_dict({"data": {"dataset": "p:l", "loader_args": {"x": float("nan")}}})


def test_fedavg_needs_one_architecture_whether_built_in_or_imported():
    same = {"strategy": "fedavg", "regions": {"count": 2, "models": ["pkg:net", "pkg:net"]}}
    assert config.from_dict(same).regions.models == ["pkg:net", "pkg:net"]
    with pytest.raises(config.ConfigError, match="fedavg averages weights and needs one architecture"):
        config.from_dict({"strategy": "fedavg", "regions": {"count": 2, "models": ["pkg:net", "mlp"]}})


# ---------------------------------------------------------------- import paths
def test_resolve_names_the_field_the_plugin_and_the_problem(user_module):
    assert plugins.resolve("usernets:Zoo.tiny", "f").__name__ == "tiny"
    cases = {
        "nothere.mod:f": "f 'nothere.mod:f': does not import (ModuleNotFoundError: No module named 'nothere')",
        "explodes:f": "f 'explodes:f': does not import (RuntimeError: broken at import)",
        "usernets:nope": "f 'usernets:nope': module usernets has no attribute nope",
        "usernets:LIMIT": "f 'usernets:LIMIT': is a int, not a callable",
    }
    for path, message in cases.items():
        with pytest.raises(plugins.PluginError) as caught:
            plugins.resolve(path, "f")
        assert str(caught.value) == message


def test_importable_callables_become_import_paths_and_the_rest_are_registered(user_module):
    import usernets

    assert plugins.import_path_of(usernets.linear) == "usernets:linear"
    assert plugins.import_path_of(usernets.Zoo.tiny) == "usernets:Zoo.tiny"

    def closure(input_shape, num_classes):
        return usernets.linear(input_shape, num_classes)

    anonymous = lambda s, c: None  # noqa: E731
    main_like = lambda s, c: None  # noqa: E731
    main_like.__module__ = "__main__"
    for fn in (closure, anonymous, main_like):
        assert plugins.import_path_of(fn) is None
    path = plugins.as_import_path(closure, "model=")
    assert path.startswith("codistill.plugins:registered.closure_") and plugins.only_in_this_process(path)
    assert plugins.resolve(path, "x") is closure and plugins.as_import_path(closure, "model=") == path
    assert config.is_import_path(plugins.as_import_path(anonymous, "model="))
    assert not plugins.only_in_this_process("usernets:linear") and plugins.only_in_this_process("__main__:f")
    with pytest.raises(plugins.PluginError, match="^model=: expected a callable or an import path"):
        plugins.as_import_path(3, "model=")


def test_build_model_calls_a_factory_with_the_model_args(user_module):
    model = build_model("usernets:linear", (2, 3), 5, [8], {"bias": False})
    assert model[1].in_features == 6 and model[1].out_features == 5 and model[1].bias is None
    with pytest.raises(plugins.PluginError, match="regions.model 'usernets:gone': module usernets has no attribute gone"):
        build_model("usernets:gone", (2, 3), 5, [8], {})


# ---------------------------------------------------------------- the Dataset contract
def test_dataset_takes_tensors_or_arrays_and_keeps_pixels_compact():
    x = torch.rand(10, 3, dtype=torch.float64)
    ds = data.Dataset(x, torch.tensor([0, 1] * 5), x[:4].numpy(), np.array([1.0, 0.0, 1.0, 0.0]), name="t")
    assert ds.train.x.dtype == np.float32 and np.allclose(ds.train.x, x.numpy())
    assert ds.train.y.dtype == np.int64 and ds.test.y.tolist() == [1, 0, 1, 0]
    assert ds.class_names == ["0", "1"] and ds.num_classes == 2 and ds.input_shape == (3,) and ds.name == "t"
    pixels = data.Dataset(np.zeros((4, 1, 2, 2), np.uint8), [0, 1, 2, 0], np.full((2, 1, 2, 2), 255, np.uint8), [0, 0], list("abcd"))
    assert pixels.train.x.dtype == np.uint8 and pixels.num_classes == 4
    assert data.to_float(pixels.test.x).max() == 1.0


@pytest.mark.parametrize(
    "change,message",
    [
        ({"x_train": np.zeros(10)}, "x_train must be [N, *input_shape] with N >= 1 (got shape [10])"),
        ({"x_test": np.zeros((4, 2))}, "x_train examples are [3] but x_test examples are [2]"),
        ({"y_train": np.zeros(9, np.int64)}, "x_train has 10 examples but y_train has 9 labels"),
        ({"y_test": np.zeros((4, 1), np.int64)}, "y_test must be one class id per example, [N] (got shape [4, 1])"),
        ({"y_train": np.full(10, 0.5)}, "y_train must hold whole-number class ids"),
        ({"y_train": np.array(["a"] * 10)}, "y_train must hold integer class ids (got dtype <U1)"),
        ({"y_test": np.array([0, 1, 1, -1])}, "y_test has 1 labels outside 0..1 (e.g. -1), for 2 class names"),
        ({"x_train": np.full((10, 3), np.nan)}, "x_train holds NaN or infinite values"),
        ({"x_train": np.array([["a"] * 3] * 10)}, "x_train must hold numbers (got dtype <U1)"),
        ({"class_names": ["only"]}, "class_names must name at least 2 classes (got 1)"),
    ],
)
def test_dataset_refuses_what_breaks_the_contract(change, message):
    arrays = {"x_train": np.zeros((10, 3)), "y_train": np.arange(10) % 2, "x_test": np.zeros((4, 3)), "y_test": np.array([0, 1, 1, 0]),
              "class_names": ["a", "b"], **change}
    with pytest.raises(data.DataError) as caught:
        data.Dataset(**arrays)
    assert str(caught.value).startswith(message)


def test_npz_round_trip_and_refusals(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=np.ones((8, 5), np.float32), y_train=np.arange(8) % 3, x_test=np.ones((2, 5)), y_test=[2, 0],
             class_names=np.array(["x", "y", "z"]))
    ds = data.load_npz(path)
    assert ds.name == "mine" and ds.class_names == ["x", "y", "z"] and ds.train.x.shape == (8, 5) and ds.test.y.tolist() == [2, 0]
    np.savez(tmp_path / "typo.npz", x_train=np.ones((8, 5)), y_train=np.arange(8) % 3, x_test=np.ones((2, 5)), y_test=[2, 0],
             class_name=np.array(["x", "y", "z"]))
    np.savez(tmp_path / "objects.npz", x_train=np.array([{}, {}], dtype=object), y_train=[0, 1], x_test=np.ones((2, 5)), y_test=[0, 1])
    np.save(tmp_path / "array.npy", np.ones(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:40])
    cases = {
        "typo.npz": "holds unknown arrays class_name (expected x_train, y_train, x_test, y_test and optional class_names)",
        "objects.npz": "holds arrays of Python objects; save plain arrays (class_names as strings)",
        "array.npy": "not an .npz archive (save it with numpy.savez)",
        "junk.npz": "not an .npz archive (save it with numpy.savez)",
        "cut.npz": "not a readable .npz file (BadZipFile)",
        "absent.npz": "file not found",
    }
    for name, message in cases.items():
        with pytest.raises(data.DataError) as caught:
            data.load_npz(tmp_path / name)
        assert str(caught.value).startswith(f"data.path {tmp_path / name}: {message}"), caught.value


def test_a_loader_is_held_to_the_contract(user_module):
    assert plugins.load_dataset(plugins.register(lambda n: _dataset(n)), {"n": 12}).train.x.shape == (12, 1, 4, 4)
    wrong = plugins.register(lambda: (np.zeros((3, 2)), np.zeros(3)))
    with pytest.raises(plugins.PluginError, match=r"^data.dataset '.*': returned tuple, not a codistill.Dataset$"):
        plugins.load_dataset(wrong, {})
    short = plugins.register(lambda: data.Dataset(np.zeros((3, 2)), [0, 1], np.zeros((1, 2)), [0]))
    with pytest.raises(plugins.PluginError, match=r"^data.dataset '.*': x_train has 3 examples but y_train has 2 labels$"):
        plugins.load_dataset(short, {})
    with pytest.raises(plugins.PluginError, match=r"loader failed \(TypeError: .*unexpected keyword argument 'm'"):
        plugins.load_dataset(plugins.register(lambda n: None), {"m": 1})


# ---------------------------------------------------------------- model checks
def test_check_models_runs_every_architecture_once_and_leaves_the_rng_alone(user_module):
    before = torch.random.get_rng_state()
    plugins.check_models(_cfg(models=["mlp", "usernets:linear", "cnn"]), _dataset())
    assert torch.equal(torch.random.get_rng_state(), before)
    assert plugins.architectures(_cfg(models=["mlp", "usernets:linear", "mlp"]).regions) == [
        ("regions.models.0", "mlp"), ("regions.models.1", "usernets:linear")]


@pytest.mark.parametrize(
    "models,message",
    [
        (["mlp", "mlp", "usernets:batch_of_one"], "regions.models.2 'usernets:batch_of_one': logits are [1, 3] float32 for a [2, 1, 4, 4] batch"),
        (["usernets:linear", "usernets:missing", "mlp"], "regions.models.1 'usernets:missing': module usernets has no attribute missing"),
    ],
)
def test_check_models_names_the_region_field_of_a_bad_model(user_module, models, message):
    with pytest.raises(plugins.PluginError) as caught:
        plugins.check_models(_cfg(models=models), _dataset())
    assert str(caught.value).startswith(message)


def test_the_cnn_on_flat_examples_fails_its_dry_run():
    with pytest.raises(plugins.PluginError, match=r"^regions.model 'cnn': forward pass on a \[2, 16\] batch failed \(RuntimeError"):
        plugins.check_models(_cfg(model="cnn"), _dataset(shape=(16,)))


# ---------------------------------------------------------------- Ray's runtime_env
def test_a_local_ray_gets_the_drivers_sys_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/opt/extra")
    cfg = config.from_dict({"ray": {"runtime_env": {"env_vars": {"KEEP": "1"}, "py_modules": ["m"]}}})
    env = plugins.runtime_env(cfg, local=True)
    paths = env["env_vars"]["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(tmp_path.resolve()) and paths[-1] == "/opt/extra"
    assert not any(p.startswith(os.path.realpath(sys.prefix)) for p in paths)  # the venv: every worker has it
    assert env["env_vars"]["KEEP"] == "1" and env["py_modules"] == ["m"]
    assert cfg.ray.runtime_env == {"env_vars": {"KEEP": "1"}, "py_modules": ["m"]}  # the config is left as it was
    assert plugins.runtime_env(cfg, local=False) == cfg.ray.runtime_env


# ---------------------------------------------------------------- the result
def test_a_result_keeps_keys_it_does_not_name(tmp_path):
    region = {"id": 0, "arch": "mlp", "steps": 5, "labeled_samples": 9, "test_accuracy": 0.5, "validation_accuracy": float("nan"),
              "per_class_recall": [0.5, 0.5], "bytes_sent": 1, "bytes_received": 2, "cpu_seconds": 0.1, "restarts": 0,
              "curve": [[5, 0.5]], "future_key": {"a": 1}}
    strategy = {"strategy": "codistill", "transport": "grpc", "mean_test_accuracy": 0.5, "min_test_accuracy": 0.5,
                "max_test_accuracy": 0.5, "ensemble_test_accuracy": 0.5, "mean_validation_accuracy": float("nan"),
                "ensemble_validation_accuracy": float("nan"), "cpu_seconds": 0.1, "bytes_sent": 1, "bytes_received": 2,
                "wall_seconds": 1.0, "regions": [region]}
    doc = {"run_id": "r", **strategy, "dataset": {"name": "d", "train": 9, "test": 2, "transfer": 3, "validation": 0,
                                                  "labeled_per_region": [9], "classes": ["a", "b"]},
           "config": config.RunConfig().model_dump(mode="json"), "compare": {"codistill": strategy}, "hidden_recall": [1]}
    result = RunResult.from_json(json.dumps(doc))
    assert result.regions[0].curve == ((5, 0.5),) and result.regions[0].extra["future_key"] == {"a": 1}
    assert result.extra["hidden_recall"] == [1] and result.compare["codistill"].regions[0].id == 0
    assert json.dumps(json.loads(result.to_json()), sort_keys=True) == json.dumps(doc, sort_keys=True)
    del doc["regions"][0]["curve"]
    with pytest.raises(ValueError, match="not a codistill results document: no curve"):
        RunResult.from_json(doc)
