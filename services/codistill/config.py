"""Validated run configuration, loaded from YAML with `--set key=value` overrides.

Every field has a default and a one-line reason for it. Unknown keys and
out-of-range values fail before anything starts, with a message that names the
field and what it accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from annotated_types import MaxLen
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from codistill.config_values import (  # noqa: F401  (the value types; importable from codistill.config too)
    EXCERPT_CHARS,
    PATH_EXCERPT_CHARS,
    MAX_CONFIG_BYTES,
    INT32_MAX,
    DAY_S,
    excerpt,
    excerpt_path,
    Int,
    Real,
    PathText,
    IMPORT_PATH,
    BUILTIN_MODELS,
    BUILTIN_DATASETS,
    is_import_path,
    ModelName,
    DatasetName,
    PluginArgs,
    PortRange,
    port_range,
)
from codistill.errors import ConfigError  # noqa: F401  (raised here; importable from here too)

# selftrain: independent regions that distil from their own earlier predictions on the transfer
# set, with codistill's compute per step and no exchange (the control for "is it the peers?").
Strategy = Literal["codistill", "independent", "centralized", "fedavg", "selftrain"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class _Strict(BaseModel):
    # allow_inf_nan=False: inf/NaN in any float (a rate, a temperature, a timeout) would hang a
    # wait or poison training, so finiteness is every float field's default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class PartitionConfig(_Strict):
    # Label skew is the interesting case for co-distillation; iid is the easy baseline.
    kind: Literal["iid", "dirichlet", "omit"] = "iid"
    # 0.5 is a common moderate-skew setting in the federated literature.
    alpha: Real = Field(0.5, gt=0)
    # Hinton et al. hid the digit 3.
    omit_classes: list[Int] = Field(default_factory=lambda: [3])
    # Regions that never see omit_classes labelled; None = the first half.
    omit_regions: list[Int] | None = None


class DataConfig(_Strict):
    # digits ships with scikit-learn, so the default needs no network. `npz` reads data.path;
    # `package.module:loader` calls loader(**data.loader_args) for a codistill.Dataset.
    dataset: DatasetName = "digits"
    # The .npz file of `dataset: npz` (x_train, y_train, x_test, y_test, optional class_names).
    path: PathText | None = None
    # Keyword arguments for a user loader (`dataset: "package.module:loader"`).
    loader_args: PluginArgs = Field(default_factory=dict)
    # Unlabeled examples shared by all regions for exchanging predictions.
    # At most 10M here and below: more than any dataset supported, and memory runs out first.
    transfer_size: Int = Field(400, ge=1, le=10_000_000)
    # Held out for evaluating every region (digits/synthetic; fashion-mnist uses its own test set).
    test_size: Int = Field(360, ge=1, le=10_000_000)
    # Labeled examples held out of the training data for every choice (rule, hyperparameters,
    # baselines' settings), never trained or distilled on; the test split only reports.
    # None = 10% of the training examples, at most 5,000: at 85% accuracy that is a standard
    # error of 0.5 points on Fashion-MNIST, while costing each region under a tenth of its data.
    validation_size: Int | None = Field(None, ge=0)
    # Where fashion-mnist IDX files are looked for first; None = $CODISTILL_DATA_DIR.
    data_dir: PathText | None = None
    # Small enough for a unit test, large enough to separate strategies; generated in memory,
    # so capped at 10M samples (2.6 GB).
    synthetic_samples: Int = Field(2000, ge=10, le=10_000_000)
    # At most 1,000: every prediction exchanged carries one probability per class.
    synthetic_classes: Int = Field(4, ge=2, le=1000)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)


class RegionsConfig(_Strict):
    # Four regions make a peer-to-peer graph that is more than a pair. At most 10,000: each is a
    # process with its own gRPC server, and a full topology opens count² connections.
    count: Int = Field(4, ge=1, le=10_000)
    # An MLP trains fast on CPU; cnn is there for heterogeneous runs; `package.module:factory`
    # is a user model, built as factory(input_shape, num_classes, **model_args).
    model: ModelName = "mlp"
    # Per-region architectures, overriding `model` (length must equal count); any mix.
    models: list[ModelName] | None = None
    # Two hidden layers of 256: the classic MNIST MLP, scaled down. At least one layer; at most
    # 16 layers of 16,384 units, beyond which one region's weights alone exhaust memory.
    hidden: list[Annotated[Int, Field(ge=1, le=16_384)]] = Field(default_factory=lambda: [256, 256], min_length=1, max_length=16)
    # Keyword arguments for a user model factory (`regions.model: "package.module:factory"`).
    model_args: PluginArgs = Field(default_factory=dict)
    # Fractional CPUs let several regions share a small machine.
    num_cpus: Real = Field(0.5, gt=0)
    # GPUs per region when CUDA is present (fractional allowed); 0 = CPU.
    num_gpus: Real = Field(0.0, ge=0)
    # auto picks cuda when the region was given a GPU, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # One intra-op thread per region keeps N regions from fighting over cores; at most 256,
    # since torch starts every one of them.
    torch_threads: Int = Field(1, ge=1, le=256)
    # Where Ray puts regions: spread over nodes, pack onto as few as possible, or auto
    # (spread when joining a cluster, Ray's default on a local one).
    placement: Literal["auto", "spread", "pack"] = "auto"
    # Regions pinned to machines by custom resource or node label; the others follow `placement`.
    pins: list[PinConfig] = Field(default_factory=list)
    # Regions sharing one Ray worker process (one interpreter and torch, G x num_cpus): many cheap regions per machine.
    per_process: Int = Field(1, ge=1, le=1000)

    @model_validator(mode="after")
    def _models_length(self) -> RegionsConfig:
        if self.models is not None and len(self.models) != self.count:
            raise ValueError(f"regions.models has {len(self.models)} entries but regions.count is {self.count}")
        return self

    def architecture(self, region: int) -> str:
        return self.models[region] if self.models else self.model


class PinConfig(_Strict):
    """One region pinned to machines: the custom resources (`ray start --resources`) or node labels it needs."""

    region: Int = Field(ge=0)
    resources: dict[Annotated[str, MaxLen(100)], Real] = Field(default_factory=dict)
    labels: dict[Annotated[str, MaxLen(100)], Annotated[str, MaxLen(200)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_pin(self) -> PinConfig:
        if not self.resources and not self.labels:
            raise ValueError(f"regions.pins: region {self.region} names no resources or labels")
        if any(v <= 0 for v in self.resources.values()):
            raise ValueError(f"regions.pins: region {self.region} asks for a resource amount <= 0")
        return self


class TrainConfig(_Strict):
    # Optimisation steps per region; each step sees one labeled batch.
    steps: Int = Field(300, ge=1)
    # At most 2**20 examples a batch here and in distill: larger only exhausts memory.
    batch_size: Int = Field(64, ge=1, le=2**20)
    # Adam at 1e-3 is robust across both models without tuning.
    lr: Real = Field(1e-3, gt=0)
    weight_decay: Real = Field(0.0, ge=0)
    # constant: a decaying rate stops regions from absorbing late consensus (measured worse).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Evaluate on the test split this often (steps).
    eval_every: Int = Field(50, ge=1)


class DistillConfig(_Strict):
    # T=3 exposes dark knowledge without flattening predictions to uniform.
    temperature: Real = Field(3.0, gt=0)
    # λ: weight of the distillation term relative to the supervised loss.
    weight: Real = Field(1.0, ge=0)
    # Steps before distillation starts, so random-init predictions are not copied.
    burn_in: Int = Field(50, ge=0)
    # Transfer examples per distillation step.
    batch_size: Int = Field(128, ge=1, le=2**20)


class ConsensusConfig(_Strict):
    # attention: GLOM-style weighting that trusts peers who agree with the region.
    rule: Literal["mean", "attention", "confidence", "median", "trimmed_mean", "robust_attention", "screened_mean"] = "attention"
    # Inverse temperature of the peer softmax; 0 makes attention/confidence a plain mean.
    beta: Real = Field(5.0, ge=0)
    # Fraction trimmed at each end by trimmed_mean.
    trim: Real = Field(0.2, ge=0, lt=0.5)
    # screened_mean: a peer whose agreement with the crowd falls this many (normal-scaled) MADs
    # below the typical peer's is left out; 3 is the usual outlier cut.
    screen: Real = Field(3.0, gt=0)
    # Cap on one peer's weight (weighted rules); 1 = no cap.
    max_weight: Real = Field(1.0, gt=0, le=1)


class ExchangeConfig(_Strict):
    # sync rounds are reproducible; async never waits (Anil et al.: stale is fine).
    mode: Literal["sync", "async"] = "sync"
    topology: Literal["full", "ring", "random-k"] = "full"
    # Peers each region sends to under random-k.
    k: Int = Field(2, ge=1)
    # grpc is the real service; inprocess is the reference for tests and benchmarks.
    transport: Literal["grpc", "inprocess"] = "grpc"
    # Steps between publishes (= one round in sync mode).
    publish_interval: Int = Field(25, ge=1)
    # Transfer examples per published message; None = the whole transfer set.
    chunk_size: Int | None = Field(None, ge=1)
    # async: a peer prediction is used for this many of the receiver's steps after it arrives.
    max_staleness: Int = Field(100, ge=1)
    # sync: fraction of senders a round waits for (1.0 = all).
    quorum: Real = Field(1.0, gt=0, le=1)
    # sync: longest wait for a round's quorum before going on with what arrived (at most a day).
    round_timeout_s: Real = Field(30.0, gt=0, le=DAY_S)
    # Deadline on every peer RPC (at most a day).
    rpc_timeout_s: Real = Field(10.0, gt=0, le=DAY_S)
    # float16 halves the bytes; probabilities need no more precision.
    dtype: Literal["float16", "float32"] = "float16"
    # gRPC message cap on both sides (bytes); None = each region derives it from the largest
    # message it can receive (ids per message x classes x dtype bytes, with headroom).
    # gRPC holds the cap in an int32, hence below 2**31.
    max_message_bytes: Int | None = Field(None, ge=1024, lt=2**31)
    # fedavg: steps between weight averages (the weight-sharing baseline).
    average_every: Int = Field(50, ge=1)
    # fedavg: "fresh" starts a new optimiser after every average, as common FedAvg clients do;
    # "keep" carries each region's Adam moments across averages. Pick on validation.
    average_optimizer: Literal["fresh", "keep"] = "fresh"
    # Interface regions bind; auto = loopback for a local Ray, the node address on a cluster.
    host: str = "auto"
    # Ports regions serve gRPC on, e.g. "50100-50199" (the ones to open between nodes); None = any free port.
    port_range: PortRange | None = None
    # How predictions travel: float16 = the dense tensor (in `dtype`); topk = the `topk` largest
    # probabilities per row with their classes; uint8 = every probability in 8 bits.
    encoding: Literal["float16", "topk", "uint8"] = "float16"
    topk: Int = Field(3, ge=1, le=1000)


class MonitorConfig(_Strict):
    # Metrics cost little and show convergence live; --no-metrics turns them off.
    metrics: bool = True
    # A run is "converged" once mean pairwise disagreement stays under this...
    disagreement_threshold: Real = Field(0.05, ge=0, le=1)
    # ...for this many consecutive evaluations.
    patience: Int = Field(3, ge=1)
    # End the run early once converged.
    stop_when_converged: bool = False
    # Keep /metrics up this long after training so the final values get scraped (at most a day).
    linger_s: Real = Field(0.0, ge=0, le=DAY_S)
    # Ports regions serve /metrics on, e.g. "50200-50299"; None = any free port.
    port_range: PortRange | None = None


class FaultConfig(_Strict):
    # Checkpoint every N steps so a crashed region resumes instead of restarting; 0 = never.
    checkpoint_every: Int = Field(100, ge=0)
    # Where checkpoints go; None = RUN_DIR/checkpoints (must be reachable from every node on a cluster).
    checkpoint_dir: PathText | None = None
    # Ray restarts a crashed region this often before the run fails.
    max_restarts: Int = Field(3, ge=0)


class ChaosConfig(_Strict):
    """Deliberate faults, for tests and demonstrations of the failure model."""

    # These regions publish confident lies: all mass on the class they find least likely.
    liars: list[Int] = Field(default_factory=list)
    # This region stops answering (its handler and its loop sleep) at hang_at_step, for
    # hang_seconds (at most a day).
    hang_region: Int | None = None
    hang_at_step: Int = Field(0, ge=0)
    hang_seconds: Real = Field(0.0, ge=0, le=DAY_S)


class SecurityConfig(_Strict):
    # Shared bearer token every region presents; None = no token check. Never written to run folders.
    token: SecretStr | None = None
    # Read the token from this file instead, keeping it out of configs and process lists.
    token_file: PathText | None = None
    # Folder made by `codistill certs`: mutual TLS between regions; None = plaintext (loopback default).
    tls_dir: PathText | None = None

    @model_validator(mode="after")
    def _one_token_source(self) -> SecurityConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set security.token or security.token_file, not both")
        # An empty token would start a run that authenticates no one.
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("security.token is empty; set a secret, or leave the key out for no token check")
        return self

    def resolved_token(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            path = Path(self.token_file).expanduser()
            shown = excerpt_path(path)
            try:
                if not path.is_file():
                    raise ConfigError(f"security.token_file: {shown} not found")
                token = path.read_bytes().decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ConfigError(f"security.token_file: {shown} is not UTF-8 text") from None
            except OSError as exc:
                raise ConfigError(f"security.token_file: cannot read {shown} ({exc.strerror})") from None
            if not token:
                raise ConfigError(f"security.token_file: {shown} is empty")
            return token
        return None


class RayConfig(_Strict):
    # None starts a local Ray in-process; set (or RAY_ADDRESS / --address) to join a cluster.
    address: str | None = None
    # CPUs a local Ray may use; None = all cores.
    num_cpus: Int | None = Field(None, ge=1)
    # Ray's runtime_env for the run's workers (e.g. working_dir, py_modules, env_vars): how user
    # models reach the regions on a cluster. Empty: workers see what the driver's machine has.
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Strict):
    # Part of the output folder's name, so at most 100 characters (filesystems allow 255 bytes).
    name: str = Field("run", max_length=100)
    # Seeds numpy and torch, which take neither negative nor arbitrarily large seeds.
    seed: Int = Field(0, ge=0)
    strategy: Strategy = "codistill"
    # Where checkpoints, metrics.jsonl and results.json are kept, besides --out: a path every node
    # reaches (a shared mount) or a URI (file://, s3://, gs://, through pyarrow.fs). None = --out,
    # which on a cluster must itself be shared for a region restarted elsewhere to find its checkpoints.
    storage: Annotated[str, MaxLen(1000)] | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    regions: RegionsConfig = Field(default_factory=RegionsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    consensus: ConsensusConfig = Field(default_factory=ConsensusConfig)
    exchange: ExchangeConfig = Field(default_factory=ExchangeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(ch in v for ch in "/\\") or not v.isprintable() or v.startswith("."):
            raise ValueError("must be a plain folder-safe name (no slashes or control characters, not starting with '.')")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        n = self.regions.count
        if self.data.partition.omit_regions is not None:
            bad = [r for r in self.data.partition.omit_regions if not 0 <= r < n]
            if bad:
                raise ValueError(f"data.partition.omit_regions has ids {excerpt(bad)} outside 0..{n - 1}")
        if (self.data.dataset == "npz") != (self.data.path is not None):
            raise ValueError("data.path names the file of data.dataset: npz, and only that; set both or neither")
        if self.data.dataset == "synthetic" and self.data.transfer_size + self.data.test_size >= self.data.synthetic_samples:
            raise ValueError("data.transfer_size + data.test_size must leave labeled samples in data.synthetic_samples")
        bad = [r for r in self.chaos.liars + ([self.chaos.hang_region] if self.chaos.hang_region is not None else []) if not 0 <= r < n]
        if bad:
            raise ValueError(f"chaos names regions {excerpt(bad)} outside 0..{n - 1}")
        if self.strategy == "fedavg" and self.regions.models and len(set(self.regions.models)) > 1:
            raise ValueError("strategy fedavg averages weights and needs one architecture; regions.models mixes several")
        bad = [pin.region for pin in self.regions.pins if not 0 <= pin.region < n]
        if bad:
            raise ValueError(f"regions.pins names regions {excerpt(bad)} outside 0..{n - 1}")
        pinned = [pin.region for pin in self.regions.pins]
        if len(pinned) != len(set(pinned)):
            raise ValueError("regions.pins names a region twice")
        if self.exchange.topology == "random-k" and n > 1 and self.exchange.k > n - 1:
            raise ValueError(f"exchange.k={self.exchange.k} exceeds the {n - 1} other regions")
        return self

    def omit_regions(self) -> list[int]:
        p = self.data.partition
        return list(range(self.regions.count // 2)) if p.omit_regions is None else list(p.omit_regions)


def _key(part: object) -> str:
    """A config key for an error message: unquoted, control characters escaped, cut when long."""
    text = repr(str(part))[1:-1]
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(_key(p) for p in err["loc"]) or "config"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    if err["type"] == "literal_error":
        return f"{loc}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {excerpt(value)})"
    return f"{loc}: {msg}{shown}"


def parse_value(text: str) -> Any:
    """Parse an override value as YAML, so `3`, `0.5`, `true`, `[1,2]` and `null` work.

    Nothing after `=` is the empty text, not YAML's null: `--set security.token=` must not
    quietly mean "no token"; null is spelled `null`."""
    if not text.strip():
        return text
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: a date such as 2024-13-45
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {excerpt(item)}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_key(key)}: '{_key(part)}' is not a section")
            node = child
        node[parts[-1]] = parse_value(value)
    return raw


def from_dict(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def for_strategy(cfg: RunConfig, strategy: str) -> RunConfig:
    """`cfg` run as `strategy` (a --compare entry), with every check a config gets before anything starts."""
    try:
        return RunConfig.model_validate({**cfg.model_dump(), "strategy": strategy})
    except ValidationError as exc:
        raise ConfigError(f"--compare {strategy}: {_format_error(exc)}") from None


def _read_text(path: Path) -> str:
    """The config file's text; a missing, unreadable, huge or binary file is a ConfigError."""
    shown = excerpt_path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {shown}")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{shown}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a short YAML file")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {exc.start}); a config is a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown} ({exc.strerror or exc.__class__.__name__})") from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping of keys, not yet validated."""
    text = _read_text(path)
    try:
        loaded = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a date such as 2024-13-45
        raise ConfigError(f"{excerpt_path(path)}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{excerpt_path(path)}: top level must be a mapping of config keys")
    return loaded


def load(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw = read_yaml(Path(path)) if path is not None else {}
    return from_dict(apply_overrides(raw, overrides or []))


def dump(cfg: RunConfig) -> str:
    """YAML of the resolved config; a literal token is left out (use security.token_file to keep one)."""
    doc = cfg.model_dump(mode="json")
    doc["security"]["token"] = None
    return yaml.safe_dump(doc, sort_keys=False)
