"""User models and datasets from a package outside the repository, through `codistill run`."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
import yaml

from plugin_package import write_plugin_package

pytestmark = pytest.mark.integration

# 4 regions on Gaussian blobs with skewed labels: seconds of training, through Ray and gRPC.
CONFIG = {
    "name": "plugin",
    "seed": 0,
    "data": {
        "dataset": "myplug.data:blobs",
        "loader_args": {"n": 1500, "classes": 4, "dims": 16, "test": 300},
        "transfer_size": 300,
        "partition": {"kind": "dirichlet", "alpha": 0.3},
    },
    "regions": {
        "count": 4,
        "models": ["mlp", "myplug.nets:wide", "mlp", "myplug.nets:wide"],
        "model_args": {"width": 48},
        "hidden": [32],
        "num_cpus": 0.25,
    },
    "train": {"steps": 60, "batch_size": 32, "eval_every": 20},
    "distill": {"burn_in": 10, "weight": 2.0},
    "exchange": {"publish_interval": 10, "round_timeout_s": 20},
    "monitor": {"metrics": False},
    "fault": {"checkpoint_every": 0},
}


@pytest.fixture
def user_project(tmp_path):
    """A plugin package in its own folder, a config naming it, and a working folder apart from both."""
    plugins = write_plugin_package(tmp_path / "plugins")
    config = tmp_path / "plugin.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    work = tmp_path / "work"
    work.mkdir()
    return plugins, config, work


@pytest.fixture
def ray_tmp():
    """An empty RAY_TMPDIR, short enough for Ray's socket paths: whether Ray started shows in it."""
    folder = Path(tempfile.mkdtemp(prefix="cd-ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def codistill(*args, plugins, cwd, ray_tmp=None, builds=None):
    # The package reaches the driver and (inherited by a local Ray) the regions through PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}
    if builds is not None:
        env["MYPLUG_BUILDS"] = str(builds)
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_user_model_and_loader_co_distil_through_ray_and_grpc(user_project, tmp_path):
    plugins, config, work = user_project
    out = tmp_path / "out"
    builds = tmp_path / "builds.txt"
    res = codistill("run", str(config), "--compare", "independent", "--quiet", "--out", str(out),
                    plugins=plugins, cwd=work, builds=builds)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "local Ray at 127.0.0.1:" in res.stdout
    doc = json.loads((out / "results.json").read_text())
    co, ind = doc["compare"]["codistill"], doc["compare"]["independent"]
    assert co["transport"] == "grpc"
    assert [r["arch"] for r in co["regions"]] == CONFIG["regions"]["models"]
    # The loader's data, its class names and its test split of 300 reached every region.
    assert doc["dataset"]["name"] == "blobs" and doc["dataset"]["classes"] == ["blob0", "blob1", "blob2", "blob3"]
    assert doc["dataset"]["test"] == 300 and doc["dataset"]["train"] == 1200
    assert all(len(r["per_class_recall"]) == 4 for r in co["regions"])
    assert co["bytes_sent"] > 0 and ind["bytes_sent"] == 0
    # The factory ran with the dataset's shape, its classes and model_args: once in the driver's dry
    # run, then in each of its two regions of both strategies, in Ray's worker processes.
    built = [line.split(" ", 1) for line in builds.read_text().splitlines()]
    assert {rest for _, rest in built} == {"[16] 4 48"} and len(built) == 5, built
    assert len({pid for pid, _ in built}) >= 3, built
    # Same split and seeds: only the exchange differs, and it helps the user's model and the MLP alike.
    assert co["mean_test_accuracy"] > ind["mean_test_accuracy"] + 0.05, (co["mean_test_accuracy"], ind["mean_test_accuracy"])
    for arch in ("mlp", "myplug.nets:wide"):
        mean = {s: np.mean([r["test_accuracy"] for r in d["regions"] if r["arch"] == arch]) for s, d in (("co", co), ("ind", ind))}
        assert mean["co"] > mean["ind"], (arch, mean)


def _npz(tmp_path, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(200, 16)).astype(np.float32),
        "y_train": rng.integers(0, 3, 200),
        "x_test": rng.normal(size=(50, 16)).astype(np.float32),
        "y_test": rng.integers(0, 3, 50),
        "class_names": np.array(["a", "b", "c"]),
    }
    arrays.update(changes)
    path = tmp_path / "user.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD = {
    "missing-module": (["regions.models=null", "regions.model=nothere.nets:wide"],
                       "regions.model 'nothere.nets:wide': does not import (ModuleNotFoundError: No module named 'nothere')"),
    "missing-attribute": (["regions.models=[mlp,mlp,myplug.nets:nope,mlp]"],
                          "regions.models.2 'myplug.nets:nope': module myplug.nets has no attribute nope"),
    "not-a-module": (["regions.models=[mlp,myplug.nets:not_a_module,mlp,mlp]"],
                     "regions.models.1 'myplug.nets:not_a_module': factory returned str, not a torch.nn.Module"),
    "wrong-logits": (["regions.models=null", "regions.model=myplug.nets:one_class_too_many"],
                     "regions.model 'myplug.nets:one_class_too_many': logits are [2, 5] float32 for a [2, 16] batch; expected"),
    "factory-fails": (["regions.models=null", "regions.model=myplug.nets:fails"],
                      "regions.model 'myplug.nets:fails': factory failed (RuntimeError: no weights for this shape)"),
    "bad-model-args": (["regions.model_args={depth: 3}"],
                       "regions.models.1 'myplug.nets:wide': factory failed (TypeError: wide() got an unexpected keyword argument 'depth')"),
    "cnn-on-flat-data": (["regions.models=[mlp,cnn,mlp,mlp]"], "regions.models.1 'cnn': forward pass on a [2, 16] batch failed"),
    "labels-out-of-range": (["data.dataset=myplug.data:label_out_of_range", "data.loader_args={}"],
                            "data.dataset 'myplug.data:label_out_of_range': y_train has 1 labels outside 0..3 (e.g. 4)"),
    "lengths-differ": (["data.dataset=myplug.data:lengths_differ", "data.loader_args={}"],
                       "data.dataset 'myplug.data:lengths_differ': x_train has 300 examples but y_train has 299 labels"),
    "not-a-dataset": (["data.dataset=myplug.data:not_a_dataset", "data.loader_args={}"],
                      "data.dataset 'myplug.data:not_a_dataset': returned tuple, not a codistill.Dataset"),
    "loader-missing": (["data.dataset=myplug.loaders:blobs"],
                       "data.dataset 'myplug.loaders:blobs': does not import (ModuleNotFoundError: No module named 'myplug.loaders')"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_plugin_is_one_line_exit_2_before_ray_starts(user_project, tmp_path, ray_tmp, case):
    plugins, config, work = user_project
    overrides, needle = BAD[case]
    _fails_before_anything_starts(config, overrides, needle, plugins, work, tmp_path, ray_tmp)


NPZ_BAD = {
    "missing-file": (None, "data.path", "file not found"),
    "missing-array": ({"y_test": None}, "data.path", "lacks y_test (expected x_train, y_train, x_test, y_test and optional class_names)"),
    "lengths-differ": ({"y_train": np.zeros(199, np.int64)}, "data.path", "x_train has 200 examples but y_train has 199 labels"),
    "labels-out-of-range": ({"y_test": np.full(50, 3)}, "data.path", "y_test has 50 labels outside 0..2 (e.g. 3), for 3 class names"),
    "shapes-differ": ({"x_test": np.zeros((50, 15), np.float32)}, "data.path", "x_train examples are [16] but x_test examples are [15]"),
}


@pytest.mark.parametrize("case", list(NPZ_BAD))
def test_a_bad_npz_file_is_one_line_exit_2_before_ray_starts(user_project, tmp_path, ray_tmp, case):
    plugins, config, work = user_project
    changes, field, needle = NPZ_BAD[case]
    path = tmp_path / "absent.npz" if changes is None else _npz(tmp_path, **changes)
    overrides = ["data.dataset=npz", f"data.path={path}", "regions.models=null"]
    _fails_before_anything_starts(config, overrides, needle, plugins, work, tmp_path, ray_tmp, field=f"{field} ")


def _fails_before_anything_starts(config, overrides, needle, plugins, work, tmp_path, ray_tmp, field=""):
    out = tmp_path / "out"
    sets = [arg for o in overrides for arg in ("--set", o)]
    res = codistill("run", str(config), *sets, "--out", str(out), plugins=plugins, cwd=work, ray_tmp=ray_tmp)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    # One line: no traceback, no run header (printed before any region starts).
    assert len(lines) == 1 and lines[0].startswith(f"codistill: error: {field}") and needle in lines[0], lines
    assert len(lines[0]) <= 240, lines[0]
    assert list(ray_tmp.iterdir()) == [], "Ray was started"
    assert not out.exists()


def test_an_npz_dataset_runs_with_its_class_names(user_project, tmp_path):
    plugins, config, work = user_project
    path = _npz(tmp_path)
    out = tmp_path / "out"
    res = codistill("run", str(config), "--quiet", "--out", str(out), "--set", "data.dataset=npz", "--set", f"data.path={path}",
                    "--set", "regions.models=null", "--set", "regions.model=myplug.nets:wide", "--set", "data.transfer_size=60",
                    "--set", "data.partition.kind=iid",
                    "--set", "exchange.transport=inprocess", "--set", "train.steps=20",
                    plugins=plugins, cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["dataset"]["name"] == "user" and doc["dataset"]["classes"] == ["a", "b", "c"]
    assert doc["dataset"]["train"] == 200 and doc["dataset"]["test"] == 50
    assert {r["arch"] for r in doc["regions"]} == {"myplug.nets:wide"}
    assert all(len(r["per_class_recall"]) == 3 for r in doc["regions"])


def test_the_runtime_env_of_a_local_ray_carries_the_drivers_sys_path(tmp_path):
    """A package the driver found only through sys.path (no PYTHONPATH, not the current folder) imports in a worker."""
    plugins = write_plugin_package(tmp_path / "plugins")
    script = tmp_path / "driver.py"
    script.write_text(dedent(f"""
        import sys
        sys.path.insert(0, {str(plugins)!r})
        import ray
        from codistill import config, plugins

        ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False,
                 runtime_env=plugins.runtime_env(config.RunConfig(), local=True))

        @ray.remote
        def build():
            from myplug.nets import wide
            return type(wide((16,), 4)).__name__

        print(ray.get(build.remote(), timeout=120))
    """))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "Wide"
