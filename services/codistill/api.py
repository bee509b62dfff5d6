"""`codistill.run`: a run from Python, on the same path as `codistill run`, with a typed result.

    import codistill
    result = codistill.run("configs/quickstart.yaml", model=my_factory, dataset=my_loader)
    print(result.mean_test_accuracy, [r.test_accuracy for r in result.regions])

A model factory given here must be importable by name (a module-level function of a module,
not of `__main__`) for Ray's workers to build it; anything else (a lambda, a closure, a
function of a notebook or script) runs with `transport="inprocess"` and is refused, before
anything starts, for Ray. A dataset loader runs in this process only, so any callable or a
`codistill.Dataset` itself will do.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Union

from codistill import config as config_mod
from codistill import plugins, preflight
from codistill.config import ConfigError, RunConfig
from codistill.data import Dataset

ModelPlugin = Union[str, Callable[..., Any]]
DatasetPlugin = Union[str, Callable[[], Dataset], Dataset]


# ---------------------------------------------------------------- the result
def _typed(cls, doc: Mapping[str, Any], convert: Mapping[str, Callable[[Any], Any]] | None = None):
    """An instance of `cls` from a results.json mapping: its named keys typed, every other key kept in `extra`."""
    convert = convert or {}
    named = [f.name for f in fields(cls) if f.name != "extra"]
    missing = [k for k in named if k not in doc]
    if missing:
        raise ValueError(f"not a codistill results document: no {', '.join(missing)}")
    values = {k: convert.get(k, _identity)(doc[k]) for k in named}
    return cls(**values, extra=MappingProxyType({k: v for k, v in doc.items() if k not in named}))


def _identity(value: Any) -> Any:
    return value


def _plain(value: Any) -> Any:
    """A result's value as it stands in results.json."""
    if isinstance(value, (RegionSummary, StrategySummary, DatasetSummary)):
        return value.to_dict()
    if isinstance(value, RunConfig):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _document(obj: Any, cls: type) -> dict[str, Any]:
    """The results.json mapping of `obj` as a `cls`: its named keys, then the kept ones."""
    doc = {f.name: _plain(getattr(obj, f.name)) for f in fields(cls) if f.name != "extra"}
    return {**doc, **_plain(obj.extra)}


class _Document:
    def to_dict(self) -> dict[str, Any]:
        return _document(self, type(self))


@dataclass(frozen=True)
class RegionSummary(_Document):
    """One region's outcome (an entry of `regions` in results.json)."""

    id: int
    arch: str
    steps: int
    labeled_samples: int
    test_accuracy: float
    validation_accuracy: float
    per_class_recall: tuple[float, ...]
    bytes_sent: int
    bytes_received: int
    cpu_seconds: float
    restarts: int
    curve: tuple[tuple[int, float], ...]  # test accuracy at every evaluation: (step, accuracy)
    extra: Mapping[str, Any]  # the entry's other keys (messages, peer weights, timings, ...)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RegionSummary:
        return _typed(cls, doc, {"per_class_recall": tuple, "curve": lambda c: tuple((int(s), float(a)) for s, a in c)})


@dataclass(frozen=True)
class StrategySummary(_Document):
    """One strategy's outcome over all its regions."""

    strategy: str
    transport: str
    mean_test_accuracy: float
    min_test_accuracy: float
    max_test_accuracy: float
    ensemble_test_accuracy: float
    mean_validation_accuracy: float
    ensemble_validation_accuracy: float
    cpu_seconds: float
    bytes_sent: int
    bytes_received: int
    wall_seconds: float
    regions: tuple[RegionSummary, ...]
    extra: Mapping[str, Any]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> StrategySummary:
        return _typed(cls, doc, {"regions": lambda rs: tuple(RegionSummary.from_dict(r) for r in rs)})


@dataclass(frozen=True)
class DatasetSummary(_Document):
    """Sizes of the run's split."""

    name: str
    train: int
    test: int
    transfer: int
    validation: int
    labeled_per_region: tuple[int, ...]
    classes: tuple[str, ...]
    extra: Mapping[str, Any]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DatasetSummary:
        return _typed(cls, doc, {"labeled_per_region": tuple, "classes": tuple})


@dataclass(frozen=True, kw_only=True)
class RunResult(StrategySummary):
    """A finished run: its own strategy's outcome, the split, the config, and each compared strategy.

    Holds what `results.json` holds; `to_json()` gives that document back.
    """

    run_id: str
    dataset: DatasetSummary
    config: RunConfig
    # Every strategy run (this one included) when there was more than one, as in results.json.
    compare: Mapping[str, StrategySummary]
    out: Path | None  # the run folder; not part of the document

    @classmethod
    def from_json(cls, doc: str | Mapping[str, Any], out: Path | None = None) -> RunResult:
        """A result from a results.json document (its text, or the parsed mapping)."""
        doc = json.loads(doc) if isinstance(doc, str) else doc
        base = StrategySummary.from_dict({k: v for k, v in doc.items() if k not in ("run_id", "dataset", "config", "compare")})
        compare = {name: StrategySummary.from_dict(s) for name, s in doc.get("compare", {}).items()}
        values = {f.name: getattr(base, f.name) for f in fields(StrategySummary)}
        return cls(
            **values,
            run_id=doc["run_id"],
            dataset=DatasetSummary.from_dict(doc["dataset"]),
            config=RunConfig.model_validate(doc["config"]),
            compare=MappingProxyType(compare),
            out=out,
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResult:
        """The result of a finished run, from its folder's results.json."""
        folder = Path(run_dir)
        return cls.from_json((folder / "results.json").read_text(), out=folder)

    def to_dict(self) -> dict[str, Any]:
        doc = {"run_id": self.run_id, **_document(self, StrategySummary), "dataset": _plain(self.dataset), "config": _plain(self.config)}
        if self.compare:
            doc["compare"] = _plain(dict(self.compare))
        return doc

    def to_json(self) -> str:
        """The results.json document of this run."""
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------- the run
def run(
    config: str | Path | Mapping[str, Any] | RunConfig | None = None,
    *,
    model: ModelPlugin | Sequence[ModelPlugin] | None = None,
    dataset: DatasetPlugin | None = None,
    out: str | Path | None = None,
    transport: str | None = None,
    compare: Sequence[str] = (),
    overrides: Sequence[str] = (),
    force: bool = False,
) -> RunResult:
    """Run `config` as `codistill run` does and return its result (also written to `out`/results.json).

    config: a YAML path, a mapping of config keys, a RunConfig, or None for the defaults.
    model: a factory (or its import path) for every region, `regions.model`; or one per region,
        `regions.models`. Called as factory(input_shape, num_classes, **regions.model_args).
    dataset: a loader (or its import path) called as loader(**data.loader_args), or a Dataset.
    out: the run folder; None = runs/<timestamp>-<name>/, as on the command line.
    transport: "grpc" (Ray actors talking gRPC) or "inprocess" (threads); None = exchange.transport.
    compare: further strategies run on the same split, as --compare.
    overrides: `key=value` strings, as --set.
    force: write into an existing, non-empty `out`.

    Every check of the command line runs first and raises a ConfigError (or DataError) before
    Ray or any region starts; a region that fails raises RegionError.
    """
    cfg = resolve_config(config, model=model, dataset=dataset, transport=transport, overrides=overrides)
    compare = [s for s in compare if s != cfg.strategy]
    preflight.check_compare(cfg, compare)
    folder = Path(out) if out is not None else preflight.default_out(cfg.name)
    preflight.check_out(folder, force=force)
    split = preflight.prepare(cfg)
    from codistill.launch import driver

    doc = driver.run(cfg, folder, compare=compare, split=split)
    return RunResult.from_json(doc, out=folder)


def resolve_config(
    config: str | Path | Mapping[str, Any] | RunConfig | None,
    *,
    model: ModelPlugin | Sequence[ModelPlugin] | None = None,
    dataset: DatasetPlugin | None = None,
    transport: str | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The RunConfig `run` would run: config, overrides, then the plugins and transport given."""
    raw = _raw(config)
    config_mod.apply_overrides(raw, list(overrides))
    regions, data = raw.setdefault("regions", {}), raw.setdefault("data", {})
    if not isinstance(regions, dict) or not isinstance(data, dict):
        raise ConfigError("config: regions and data must be sections (mappings)")
    if model is not None:
        _set_model(regions, model)
    if dataset is not None:
        data["dataset"] = _dataset_path(dataset)
    if transport is not None:
        raw.setdefault("exchange", {})["transport"] = transport
    cfg = config_mod.from_dict(raw)
    if cfg.exchange.transport == "grpc":
        _refuse_local_models(cfg)
    return cfg


def _raw(config: str | Path | Mapping[str, Any] | RunConfig | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, RunConfig):
        return config.model_dump()
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if isinstance(config, (str, Path)):
        return config_mod.read_yaml(Path(config))
    raise ConfigError(f"config: expected a YAML path, a mapping or a RunConfig, got {type(config).__name__}")


def _set_model(regions: dict[str, Any], model: ModelPlugin | Sequence[ModelPlugin]) -> None:
    if isinstance(model, str) or callable(model):
        if regions.get("models") is not None:
            raise ConfigError("model= sets regions.model, but the config lists regions.models; pass model=[...] with one per region")
        regions["model"] = plugins.as_import_path(model, "model=")
        return
    regions["models"] = [plugins.as_import_path(m, f"model[{i}]") for i, m in enumerate(model)]


def _dataset_path(dataset: DatasetPlugin) -> str:
    if isinstance(dataset, Dataset):
        given = dataset

        def given_dataset() -> Dataset:
            return given

        given_dataset.__name__ = f"dataset_{dataset.name}"
        return plugins.register(given_dataset)
    return plugins.as_import_path(dataset, "dataset=")


def _refuse_local_models(cfg: RunConfig) -> None:
    """Ray's workers import a model factory by name; one only this process holds cannot reach them."""
    for field, arch in plugins.architectures(cfg.regions):
        if plugins.only_in_this_process(arch):
            raise plugins.PluginError(
                f"{field} {arch!r}: Ray's workers cannot import a factory defined in __main__, a notebook, a lambda or "
                "a closure; define it in a module, or pass transport='inprocess'"
            )
