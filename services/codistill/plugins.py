"""User models and datasets, named by import path, and the checks they pass before a run starts.

An import path is `package.module:attribute` (the attribute may be dotted). A model factory is
called as `factory(input_shape, num_classes, **regions.model_args)` and returns a
`torch.nn.Module` mapping [B, *input_shape] to logits [B, num_classes]; a dataset loader is
called as `loader(**data.loader_args)` and returns a `codistill.Dataset`.

Every problem is a `PluginError`: one line naming the config field, the plugin and what is
wrong, raised in the driver before any region (or Ray) starts.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

from codistill.config import ConfigError, RegionsConfig, RunConfig, is_import_path

if TYPE_CHECKING:
    import torch

    from codistill.data import Dataset

# An exception's text quoted in an error: enough to recognise it, never a wall of text.
CAUSE_CHARS = 120
# A batch this small runs any model in milliseconds, and two examples keep BatchNorm-style
# layers (even in train mode) and a wrong batch dimension (e.g. a reshape to 1) visible.
DRY_BATCH = 2


class PluginError(ConfigError):
    """A user model or dataset that cannot be used, phrased for the user (one line)."""


# Callables given to codistill.run that cannot be imported by name (a lambda, a closure, a
# function of a notebook or of __main__): reachable as `codistill.plugins:registered.NAME`,
# in this process only.
registered = SimpleNamespace()
REGISTERED_PREFIX = f"{__name__}:registered."


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception on one short line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= CAUSE_CHARS else text[: CAUSE_CHARS - 3] + "..."


def resolve(path: str, field: str) -> Callable[..., Any]:
    """The callable an import path names; a PluginError naming `field` when it cannot be had."""
    name = f"{field} {path!r}"
    if not is_import_path(path):
        raise PluginError(f"{name}: not an import path 'package.module:attribute'")
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module's own code raises on import
        raise PluginError(f"{name}: does not import ({describe(exc)})") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise PluginError(f"{name}: module {module_name} has no attribute {attribute}") from None
    if not callable(target):
        raise PluginError(f"{name}: is a {type(target).__name__}, not a callable")
    return target


def import_path_of(fn: Callable[..., Any]) -> str | None:
    """`module:qualname` when that imports back to `fn` itself (so any process can import it), else None."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__":
        return None
    path = f"{module}:{qualname}"
    if not is_import_path(path):  # a lambda or a closure: `<lambda>`, `f.<locals>.g`
        return None
    try:
        return path if resolve(path, "") is fn else None
    except PluginError:
        return None


def register(fn: Callable[..., Any]) -> str:
    """An import path to `fn` that resolves in this process only."""
    for name, known in vars(registered).items():
        if known is fn:
            return REGISTERED_PREFIX + name
    base = re.sub(r"\W", "_", getattr(fn, "__name__", "") or "plugin")
    name = f"{base if base[0].isalpha() or base[0] == '_' else '_' + base}_{len(vars(registered))}"
    setattr(registered, name, fn)
    return REGISTERED_PREFIX + name


def as_import_path(plugin: str | Callable[..., Any], field: str) -> str:
    """A plugin given as an import path or a callable, as an import path."""
    if isinstance(plugin, str):
        return plugin
    if not callable(plugin):
        raise PluginError(f"{field}: expected a callable or an import path 'package.module:attribute', got {type(plugin).__name__}")
    return import_path_of(plugin) or register(plugin)


def only_in_this_process(path: str) -> bool:
    """Whether `path` names a registered callable or one of __main__: another process cannot import it."""
    return path.startswith(REGISTERED_PREFIX) or path.partition(":")[0] == "__main__"


# ---------------------------------------------------------------- datasets
def load_dataset(path: str, loader_args: dict[str, Any], field: str = "data.dataset") -> Dataset:
    """Call a user loader and hold it to the Dataset contract."""
    from codistill.data import DataError, Dataset

    loader = resolve(path, field)
    try:
        dataset = loader(**loader_args)
    except DataError as exc:  # the Dataset constructor refused what the loader gave it
        raise PluginError(f"{field} {path!r}: {exc}") from None
    except Exception as exc:
        raise PluginError(f"{field} {path!r}: loader failed ({describe(exc)})") from None
    if not isinstance(dataset, Dataset):
        raise PluginError(f"{field} {path!r}: returned {type(dataset).__name__}, not a codistill.Dataset")
    return dataset


# ---------------------------------------------------------------- models
def architectures(regions: RegionsConfig) -> list[tuple[str, str]]:
    """(field, architecture) for every distinct architecture of a run, named where it first appears."""
    if regions.models is None:
        return [("regions.model", regions.model)]
    first: dict[str, str] = {}
    for i, arch in enumerate(regions.models):
        first.setdefault(arch, f"regions.models.{i}")
    return [(field, arch) for arch, field in first.items()]


def check_models(cfg: RunConfig, dataset: Dataset) -> None:
    """Build every architecture of the run once and run it on a tiny CPU batch of the dataset.

    Torch's global RNG is left as it was, so a checked run draws the same numbers as an unchecked one.
    """
    import torch

    from codistill.data import to_float

    batch = torch.from_numpy(to_float(dataset.train.x[:DRY_BATCH]))
    with torch.random.fork_rng(devices=[]):
        for field, arch in architectures(cfg.regions):
            check_model(arch, field, cfg.regions, dataset.num_classes, batch)


def check_model(arch: str, field: str, regions: RegionsConfig, num_classes: int, batch: torch.Tensor) -> None:
    import torch

    from codistill.models import build_model

    name = f"{field} {arch!r}"
    if is_import_path(arch):
        resolve(arch, field)  # named by its own field, before build_model resolves it again
    try:
        model = build_model(arch, tuple(batch.shape[1:]), num_classes, regions.hidden, regions.model_args)
    except Exception as exc:
        raise PluginError(f"{name}: factory failed ({describe(exc)})") from None
    if not isinstance(model, torch.nn.Module):
        raise PluginError(f"{name}: factory returned {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    try:
        with torch.no_grad():
            logits = model(batch)
    except Exception as exc:
        raise PluginError(f"{name}: forward pass on a {list(batch.shape)} batch failed ({describe(exc)})") from None
    expected = [len(batch), num_classes]
    if not isinstance(logits, torch.Tensor):
        raise PluginError(f"{name}: forward returned {type(logits).__name__}, not a tensor of logits {expected}")
    if list(logits.shape) != expected or not logits.is_floating_point():
        raise PluginError(
            f"{name}: logits are {list(logits.shape)} {str(logits.dtype).removeprefix('torch.')} for a "
            f"{list(batch.shape)} batch; expected floating point {expected} (batch, num_classes)"
        )


# ---------------------------------------------------------------- Ray
def runtime_env(cfg: RunConfig, *, local: bool) -> dict[str, Any]:
    """The runtime_env for the run's Ray workers: `ray.runtime_env`, and on a local Ray the
    driver's sys.path on PYTHONPATH, so whatever plugin the driver imports, the regions import too.

    The interpreter's own folders are left out: every worker has them already.
    """
    env = copy.deepcopy(cfg.ray.runtime_env)
    if not local:
        return env
    env_vars = dict(env.get("env_vars") or {})
    own = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)} - {os.sep}
    paths: list[str] = []
    for entry in sys.path:
        folder = os.path.realpath(entry or os.getcwd())
        inside = any(folder == p or folder.startswith(p.rstrip(os.sep) + os.sep) for p in own)
        if os.path.isdir(folder) and not inside and folder not in paths:
            paths.append(folder)
    inherited = env_vars.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    for entry in inherited.split(os.pathsep):
        if entry and entry not in paths:
            paths.append(entry)
    if paths:
        env_vars["PYTHONPATH"] = os.pathsep.join(paths)
        env["env_vars"] = env_vars
    return env
