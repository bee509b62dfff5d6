"""Validated run configuration, loaded from YAML with `--set key=value` overrides.

Every field has a default and a one-line reason for it. Unknown keys and
out-of-range values fail before anything starts, with a message that names the
field and what it accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

# selftrain: independent regions that distil from their own earlier predictions on the transfer
# set, with codistill's compute per step and no exchange (the control for "is it the peers?").
Strategy = Literal["codistill", "independent", "centralized", "fedavg", "selftrain"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (one line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionConfig(_Strict):
    # Label skew is the interesting case for co-distillation; iid is the easy baseline.
    kind: Literal["iid", "dirichlet", "omit"] = "iid"
    # 0.5 is a common moderate-skew setting in the federated literature.
    alpha: float = Field(0.5, gt=0)
    # Hinton et al. hid the digit 3.
    omit_classes: list[int] = Field(default_factory=lambda: [3])
    # Regions that never see omit_classes labelled; None = the first half.
    omit_regions: list[int] | None = None


class DataConfig(_Strict):
    # digits ships with scikit-learn, so the default needs no network.
    dataset: Literal["digits", "fashion-mnist", "synthetic"] = "digits"
    # Unlabeled examples shared by all regions for exchanging predictions.
    transfer_size: int = Field(400, ge=1)
    # Held out for evaluating every region (digits/synthetic; fashion-mnist uses its own test set).
    test_size: int = Field(360, ge=1)
    # Labeled examples held out of the training data for every choice (rule, hyperparameters,
    # baselines' settings), never trained or distilled on; the test split only reports.
    # None = 10% of the training examples, at most 5,000: at 85% accuracy that is a standard
    # error of 0.5 points on Fashion-MNIST, while costing each region under a tenth of its data.
    validation_size: int | None = Field(None, ge=0)
    # Where fashion-mnist IDX files are looked for first; None = $CODISTILL_DATA_DIR.
    data_dir: str | None = None
    # Small enough for a unit test, large enough to separate strategies.
    synthetic_samples: int = Field(2000, ge=10)
    synthetic_classes: int = Field(4, ge=2)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)


class RegionsConfig(_Strict):
    # Four regions make a peer-to-peer graph that is more than a pair.
    count: int = Field(4, ge=1)
    # An MLP trains fast on CPU; cnn is there for heterogeneous runs.
    model: Literal["mlp", "cnn"] = "mlp"
    # Per-region architectures, overriding `model` (length must equal count).
    models: list[Literal["mlp", "cnn"]] | None = None
    # Two hidden layers of 256: the classic MNIST MLP, scaled down.
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    # Fractional CPUs let several regions share a small machine.
    num_cpus: float = Field(0.5, gt=0)
    # GPUs per region when CUDA is present (fractional allowed); 0 = CPU.
    num_gpus: float = Field(0.0, ge=0)
    # auto picks cuda when the region was given a GPU, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # One intra-op thread per region keeps N regions from fighting over cores.
    torch_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _models_length(self) -> RegionsConfig:
        if self.models is not None and len(self.models) != self.count:
            raise ValueError(f"regions.models has {len(self.models)} entries but regions.count is {self.count}")
        return self

    def architecture(self, region: int) -> str:
        return self.models[region] if self.models else self.model


class TrainConfig(_Strict):
    # Optimisation steps per region; each step sees one labeled batch.
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=1)
    # Adam at 1e-3 is robust across both models without tuning.
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # constant: a decaying rate stops regions from absorbing late consensus (measured worse).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Evaluate on the test split this often (steps).
    eval_every: int = Field(50, ge=1)


class DistillConfig(_Strict):
    # T=3 exposes dark knowledge without flattening predictions to uniform.
    temperature: float = Field(3.0, gt=0)
    # λ: weight of the distillation term relative to the supervised loss.
    weight: float = Field(1.0, ge=0)
    # Steps before distillation starts, so random-init predictions are not copied.
    burn_in: int = Field(50, ge=0)
    # Transfer examples per distillation step.
    batch_size: int = Field(128, ge=1)


class ConsensusConfig(_Strict):
    # attention: GLOM-style weighting that trusts peers who agree with the region.
    rule: Literal["mean", "attention", "confidence", "median", "trimmed_mean", "robust_attention", "screened_mean"] = "attention"
    # Inverse temperature of the peer softmax; 0 makes attention/confidence a plain mean.
    beta: float = Field(5.0, ge=0)
    # Fraction trimmed at each end by trimmed_mean.
    trim: float = Field(0.2, ge=0, lt=0.5)
    # screened_mean: a peer whose agreement with the crowd falls this many (normal-scaled) MADs
    # below the typical peer's is left out; 3 is the usual outlier cut.
    screen: float = Field(3.0, gt=0)
    # Cap on one peer's weight (weighted rules); 1 = no cap.
    max_weight: float = Field(1.0, gt=0, le=1)


class ExchangeConfig(_Strict):
    # sync rounds are reproducible; async never waits (Anil et al.: stale is fine).
    mode: Literal["sync", "async"] = "sync"
    topology: Literal["full", "ring", "random-k"] = "full"
    # Peers each region sends to under random-k.
    k: int = Field(2, ge=1)
    # grpc is the real service; inprocess is the reference for tests and benchmarks.
    transport: Literal["grpc", "inprocess"] = "grpc"
    # Steps between publishes (= one round in sync mode).
    publish_interval: int = Field(25, ge=1)
    # Transfer examples per published message; None = the whole transfer set.
    chunk_size: int | None = Field(None, ge=1)
    # async: a peer prediction is used for this many of the receiver's steps after it arrives.
    max_staleness: int = Field(100, ge=1)
    # sync: fraction of senders a round waits for (1.0 = all).
    quorum: float = Field(1.0, gt=0, le=1)
    # sync: longest wait for a round's quorum before going on with what arrived.
    round_timeout_s: float = Field(30.0, gt=0)
    # Deadline on every peer RPC.
    rpc_timeout_s: float = Field(10.0, gt=0)
    # float16 halves the bytes; probabilities need no more precision.
    dtype: Literal["float16", "float32"] = "float16"
    # Explicit gRPC message cap on both sides (bytes).
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # fedavg: steps between weight averages (the weight-sharing baseline).
    average_every: int = Field(50, ge=1)
    # fedavg: "fresh" starts a new optimiser after every average, as common FedAvg clients do;
    # "keep" carries each region's Adam moments across averages. Pick on validation.
    average_optimizer: Literal["fresh", "keep"] = "fresh"
    # Interface regions bind; auto = loopback for a local Ray, the node address on a cluster.
    host: str = "auto"


class MonitorConfig(_Strict):
    # Metrics cost little and show convergence live; --no-metrics turns them off.
    metrics: bool = True
    # A run is "converged" once mean pairwise disagreement stays under this...
    disagreement_threshold: float = Field(0.05, ge=0, le=1)
    # ...for this many consecutive evaluations.
    patience: int = Field(3, ge=1)
    # End the run early once converged.
    stop_when_converged: bool = False
    # Keep /metrics up this long after training so the final values get scraped.
    linger_s: float = Field(0.0, ge=0)


class FaultConfig(_Strict):
    # Checkpoint every N steps so a crashed region resumes instead of restarting; 0 = never.
    checkpoint_every: int = Field(100, ge=0)
    # Where checkpoints go; None = RUN_DIR/checkpoints (must be reachable from every node on a cluster).
    checkpoint_dir: str | None = None
    # Ray restarts a crashed region this often before the run fails.
    max_restarts: int = Field(3, ge=0)


class ChaosConfig(_Strict):
    """Deliberate faults, for tests and demonstrations of the failure model."""

    # These regions publish confident lies: all mass on the class they find least likely.
    liars: list[int] = Field(default_factory=list)
    # This region stops answering (its handler and its loop sleep) at hang_at_step, for hang_seconds.
    hang_region: int | None = None
    hang_at_step: int = Field(0, ge=0)
    hang_seconds: float = Field(0.0, ge=0)


class SecurityConfig(_Strict):
    # Shared bearer token every region presents; None = no token check. Never written to run folders.
    token: SecretStr | None = None
    # Read the token from this file instead, keeping it out of configs and process lists.
    token_file: str | None = None
    # Folder made by `codistill certs`: mutual TLS between regions; None = plaintext (loopback default).
    tls_dir: str | None = None

    @model_validator(mode="after")
    def _one_token_source(self) -> SecurityConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set security.token or security.token_file, not both")
        return self

    def resolved_token(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            path = Path(self.token_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"security.token_file: {path} not found")
            token = path.read_text().strip()
            if not token:
                raise ConfigError(f"security.token_file: {path} is empty")
            return token
        return None


class RayConfig(_Strict):
    # None starts a local Ray in-process; set (or RAY_ADDRESS / --address) to join a cluster.
    address: str | None = None
    # CPUs a local Ray may use; None = all cores.
    num_cpus: int | None = Field(None, ge=1)


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
    strategy: Strategy = "codistill"
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
        if not v or any(ch in v for ch in "/\\\0") or v.startswith("."):
            raise ValueError("must be a plain folder-safe name (no slashes, not starting with '.')")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        n = self.regions.count
        if self.data.partition.omit_regions is not None:
            bad = [r for r in self.data.partition.omit_regions if not 0 <= r < n]
            if bad:
                raise ValueError(f"data.partition.omit_regions has ids {bad} outside 0..{n - 1}")
        if self.data.dataset == "synthetic" and self.data.transfer_size + self.data.test_size >= self.data.synthetic_samples:
            raise ValueError("data.transfer_size + data.test_size must leave labeled samples in data.synthetic_samples")
        bad = [r for r in self.chaos.liars + ([self.chaos.hang_region] if self.chaos.hang_region is not None else []) if not 0 <= r < n]
        if bad:
            raise ValueError(f"chaos names regions {bad} outside 0..{n - 1}")
        if self.strategy == "fedavg" and self.regions.models and len(set(self.regions.models)) > 1:
            raise ValueError("strategy fedavg averages weights and needs one architecture; regions.models mixes several")
        if self.exchange.topology == "random-k" and n > 1 and self.exchange.k > n - 1:
            raise ValueError(f"exchange.k={self.exchange.k} exceeds the {n - 1} other regions")
        return self

    def omit_regions(self) -> list[int]:
        p = self.data.partition
        return list(range(self.regions.count // 2)) if p.omit_regions is None else list(p.omit_regions)


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    if err["type"] == "literal_error":
        return f"{loc}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{loc}: {msg}{shown}"


def parse_value(text: str) -> Any:
    """Parse an override value as YAML, so `3`, `0.5`, `true`, `[1,2]` and `null` work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = parse_value(value)
    return raw


def from_dict(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of config keys")
        raw = loaded
    return from_dict(apply_overrides(raw, overrides or []))


def dump(cfg: RunConfig) -> str:
    """YAML of the resolved config; a literal token is left out (use security.token_file to keep one)."""
    doc = cfg.model_dump(mode="json")
    doc["security"]["token"] = None
    return yaml.safe_dump(doc, sort_keys=False)
