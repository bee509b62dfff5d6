"""Orchestrates a run: split once, run each strategy on it, gather results.

Data flows one way: config -> split -> regions (train <-> exchange) ->
results. The driver never relays predictions; it only starts a runner (Ray
actors or in-process threads), supervises it, and collects the regions'
final evaluations.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from codistill import config as config_mod
from codistill import storage
from codistill.config import RunConfig
from codistill.data import Split, load_dataset, make_split
from codistill.errors import ResumeError
from codistill.launch import placement
from codistill.launch.interrupt import Interrupted, Interrupts, deferred_interrupts
from codistill.launch.loopback import keep_local_ray_on_loopback
from codistill.launch.memory import RunMemory
from codistill.launch.monitor import RunMonitor, ensemble_accuracy
from codistill.launch.plan import plan_regions
from codistill.records import DatasetInfo, ProgressSnapshot, RegionPlan, RegionResult, RunEvent, RunState, StrategyResult, write_json
from codistill.region import checkpoint
from codistill.saved.store import MODELS
from codistill.saved.writer import save_strategy
from codistill.storage import Location

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
# How often the driver looks at the regions, and how many looks between re-reading where they serve metrics.
POLL_S = 0.5
RETARGET_EVERY = 10

Progress = Callable[[list[ProgressSnapshot], list[RunEvent]], None]
# How long a stopping run may take to drain its regions after Ctrl-C before the driver gives up on them
# (the grace period of the signal, interrupt.GRACE_S, usually ends the wait first).
DRAIN_S = 60.0


class Stopped(Interrupted):
    """Ctrl-C or SIGTERM (`signum`) stopped a strategy after `seconds` of training; its regions were stopped and drained."""

    def __init__(self, seconds: float, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.args = (seconds, signum)  # as the constructor takes them: the exception pickles
        self.seconds = seconds


@dataclass(frozen=True)
class Supervised:
    """A strategy's region results, with its training time apart from the time its endpoints were kept up."""

    results: list[RegionResult]
    train_seconds: float
    linger_seconds: float


class Runner(Protocol):
    """Where a strategy's regions run. `host`: where run-level metrics are served (None: nowhere)."""

    host: str | None
    plans: list[RegionPlan]

    def start(self) -> None: ...

    def poll(self, timeout_s: float) -> tuple[list[ProgressSnapshot], bool]: ...

    def stop(self) -> None: ...

    def metrics_targets(self) -> dict[int, str]: ...

    def results(self) -> list[RegionResult]: ...

    def close(self) -> None: ...


Placed = Callable[[Runner], None]


def supervise(
    runner: Runner, monitor: RunMonitor, on_progress: Progress | None, linger_s: float = 0.0,
    announce: Callable[[str], None] | None = None, placed: Placed | None = None,
) -> Supervised:
    """Start the regions, watch them until every one has finished, and return their results.

    Stops them early once the monitor says the run converged (monitor.stop_when_converged).
    On Ctrl-C or SIGTERM, stops the regions, waits for them to drain and raises Stopped; a second
    signal, or interrupt.GRACE_S after the first, cuts the wait short.
    `placed(runner)` is called once the regions have started and again before their results are read.
    """
    start = time.perf_counter()
    try:
        # The drain stays inside the block: a signal while draining must find this handler, not Ray's.
        with deferred_interrupts() as interrupts:
            try:
                results = _watch(runner, monitor, on_progress, interrupts, placed)
            except KeyboardInterrupt:
                _drain(runner, monitor, on_progress)
                raise Stopped(time.perf_counter() - start, interrupts.signum or signal.SIGINT) from None
        train_seconds = time.perf_counter() - start
        lingered = _linger(linger_s, train_seconds, announce) if runner.host is not None else 0.0
        return Supervised(results, train_seconds, lingered)
    finally:
        monitor.close()
        runner.close()


def _watch(
    runner: Runner, monitor: RunMonitor, on_progress: Progress | None, interrupts: Interrupts, placed: Placed | None = None,
) -> list[RegionResult]:
    """Start the regions and poll them until every one has finished; stop them once the run converged.

    A Ctrl-C or SIGTERM meanwhile surfaces here, as Interrupted (a KeyboardInterrupt), at the next poll."""
    runner.start()
    if placed:
        placed(runner)
    monitor.set_targets(runner.metrics_targets())
    stopping, polls = False, 0
    while True:
        interrupts.check()
        snapshots, done = runner.poll(POLL_S)
        if monitor.observe(snapshots) and not stopping:
            stopping = True
            runner.stop()
        polls += 1
        if polls % RETARGET_EVERY == 0:  # a restarted region serves metrics on a new port
            monitor.set_targets(runner.metrics_targets())
        if on_progress:
            on_progress(snapshots, monitor.drain())
        if done:
            break
    monitor.set_targets(runner.metrics_targets())  # a region restarted since the last look: its final values get scraped
    if placed:  # a region restarted since the start runs in a new process
        placed(runner)
    return runner.results()


def _drain(runner: Runner, monitor: RunMonitor, on_progress: Progress | None) -> None:
    """Stop every region at its next step and wait (bounded) until each has finished.

    What they report meanwhile is still recorded: --resume continues the series from it."""
    deadline = time.monotonic() + DRAIN_S
    try:
        runner.stop()
        done = False
        while time.monotonic() < deadline and not done:
            snapshots, done = runner.poll(POLL_S)
            monitor.observe(snapshots)
            if on_progress:
                on_progress(snapshots, monitor.drain())
    except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM, or the grace period is over: stop waiting, close at once
        pass
    except Exception as exc:  # a region that fails while stopping (e.g. its worker got the Ctrl-C too): its checkpoints stay
        log.warning("while stopping: %s", " ".join(str(exc).splitlines()))


def _linger(linger_s: float, train_seconds: float, announce: Callable[[str], None] | None) -> float:
    """Keep the endpoints up for a last scrape, saying so; Ctrl-C ends it early. Returns the seconds kept."""
    if not linger_s:
        return 0.0
    until = time.strftime("%H:%M:%S", time.localtime(time.time() + linger_s))
    if announce:
        announce(f"training done in {train_seconds:.1f} s; metrics endpoints kept up {linger_s:g} s more, "
                 f"until {until} (monitor.linger_s; Ctrl-C ends it)")
    start = time.perf_counter()
    try:
        time.sleep(linger_s)
    except KeyboardInterrupt:  # the results are in: ending the wait early loses nothing
        pass
    return time.perf_counter() - start


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def prepare(cfg: RunConfig) -> Split:
    """Load data and split it; raises DataError/PartitionError before anything starts."""
    return make_split(cfg, load_dataset(cfg))


def _runner(cfg: RunConfig, split: Split, strategy: str, run_id: str, address, announce, checkpoints: Location | None) -> Runner:
    plans = plan_regions(cfg, split, strategy)
    if cfg.exchange.transport == "inprocess":
        from codistill.launch.inprocess import InProcessRunner

        return InProcessRunner(cfg, split, plans, run_id, checkpoints)
    if not (address or cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        keep_local_ray_on_loopback()  # before Ray is imported
    from codistill.launch import ray_runner

    local = ray_runner.ensure_ray(cfg, address)
    import ray

    nodes = [placement.NodeOffer.from_ray(n) for n in ray.nodes() if n.get("Alive")]
    placement.check_pins(cfg.regions, nodes)  # before any actor starts
    if announce:
        where = "local Ray" if local else f"Ray cluster of {len(nodes)} nodes"
        how = placement.mode(cfg.regions, local)
        placed = "" if how == "default" else f", regions {how}"
        announce(f"{strategy}: {where} at {ray.get_runtime_context().gcs_address}{placed}")
    return ray_runner.RayRunner(cfg, split, plans, run_id, local=local, checkpoints=checkpoints)


def run_strategy(
    cfg: RunConfig,
    split: Split,
    strategy: str,
    run_id: str,
    *,
    address: str | None = None,
    on_progress: Progress | None = None,
    out_dir: Path | None = None,
    announce: Callable[[str], None] | None = None,
    spent_s: float = 0.0,
) -> StrategyResult:
    """One strategy's regions, run to the end; `spent_s`: its training seconds in earlier, stopped invocations."""
    checkpoints = checkpoint_folder(cfg, out_dir, strategy, run_id)
    # The regions read cfg.strategy for their metrics' `strategy` label (--compare runs several on one run id).
    runner = _runner(cfg.model_copy(update={"strategy": strategy}), split, strategy, run_id, address, announce, checkpoints)
    sd_folder = out_dir / "prometheus" if out_dir is not None else None
    monitor = RunMonitor(cfg.monitor, run_id, strategy, split.dataset.test.y, len(runner.plans), runner.host, sd_folder, announce)
    # Sampled from before the regions are built (the in-process baseline) until they are closed.
    with RunMemory(cfg.exchange.transport != "inprocess", len(runner.plans)) as memory:
        done = supervise(runner, monitor, on_progress, cfg.monitor.linger_s, announce, placed=memory.placed)
    results = done.results
    return StrategyResult(
        strategy,
        tuple(results),
        ensemble_accuracy([r.test_probs for r in results], split.dataset.test.y),
        spent_s + done.train_seconds,
        cfg.exchange.transport,
        ensemble_accuracy([r.validation_probs for r in results], split.dataset.train.y[split.validation]),
        wall_seconds_this_run=done.train_seconds,
        linger_seconds=done.linger_seconds,
        memory=memory.figures(),
    )


def checkpoint_folder(cfg: RunConfig, out_dir: Path | None, strategy: str, run_id: str) -> Location | None:
    """Where a strategy's regions keep their checkpoints (one folder each inside); None: they keep none.

    With `storage`, under the run's folder there, by run id: a fresh run never finds another's checkpoints
    (nothing is deleted from shared storage), and --resume, which keeps the run id, finds its own.
    """
    if not cfg.fault.checkpoint_every:
        return None
    if cfg.storage:
        return storage.run_location(cfg.storage, out_dir or Path(cfg.name)).child("checkpoints", run_id, strategy)
    if cfg.fault.checkpoint_dir:
        return storage.location(cfg.fault.checkpoint_dir).child(strategy)
    return storage.location(out_dir / "checkpoints").child(strategy) if out_dir else None


def mirror(cfg: RunConfig, out_dir: Path) -> None:
    """Copy the run's record (results, metrics, state, config) to `storage`, beside its checkpoints."""
    if not cfg.storage:
        return
    where = storage.run_location(cfg.storage, out_dir)
    for name in ("config.yaml", STATE_FILE, "metrics.jsonl", "results.json"):
        if (out_dir / name).is_file():
            storage.upload(out_dir / name, where.child(name))
    for path in sorted((out_dir / MODELS).rglob("*")):  # the saved models, file by file
        if path.is_file() and not path.name.startswith("."):
            storage.upload(path, where.child(*path.relative_to(out_dir).parts))


def _align_resume(cfg: RunConfig, out_dir: Path, strategy: str, run_id: str) -> int:
    """Before resuming `strategy`: every region at one common checkpoint step, metrics.jsonl cut back to it.

    Returns how many run-level evaluations of `strategy` metrics.jsonl keeps (the resumed ones number on from there).
    """
    folder = checkpoint_folder(cfg, out_dir, strategy, run_id)
    regions = [folder.child(f"region-{i}") for i in range(cfg.regions.count)] if folder else []
    step = checkpoint.align(regions) if folder else 0
    for region in regions:  # every region resumes from a checkpoint read here first: a tampered one stops the run now
        checkpoint.load_latest(region)
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, evaluations = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line torn by the stop
            continue
        if rec.get("strategy") == strategy and rec.get("step", 0) > step:
            continue  # redone after the resume: kept once, from the resumed run
        evaluations += rec.get("strategy") == strategy and rec.get("kind") == "run"
        kept.append(line + "\n")
    path.write_text("".join(kept))
    return evaluations


def dataset_info(split: Split) -> DatasetInfo:
    ds = split.dataset
    return DatasetInfo(
        ds.name, int(len(ds.train.y)), int(len(ds.test.y)), int(len(split.transfer)), int(len(split.validation)),
        [int(len(s)) for s in split.slices], ds.class_names,
    )


def write_results(out_dir: Path, cfg: RunConfig, run_id: str, split: Split, summaries: dict[str, dict]) -> dict:
    """results.json: the figures of cfg.strategy at the top, every strategy's under `compare` when there are several."""
    doc = {"run_id": run_id, **summaries[cfg.strategy], "dataset": dataset_info(split).to_json(), "config": cfg.model_dump(mode="json")}
    if len(summaries) > 1:
        doc["compare"] = dict(summaries)
    write_json(out_dir / "results.json", doc)
    return doc


def load_state(out_dir: Path) -> RunState:
    """What `--resume` needs: run id, strategy order, finished strategies' figures."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise ResumeError(f"{out_dir} has no {STATE_FILE}: not a codistill run folder, or it never started")
    try:
        return RunState.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ResumeError(f"{path} is damaged") from None


def _start(cfg: RunConfig, out_dir: Path, compare: list[str] | None) -> RunState:
    strategies = [cfg.strategy] + [s for s in (compare or []) if s != cfg.strategy]
    state = RunState(new_run_id(cfg.name), tuple(strategies))
    # A fresh run must never resume from checkpoints another run left here (--force).
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    (out_dir / "config.yaml").write_text(config_mod.dump(cfg))
    write_json(out_dir / STATE_FILE, state.to_json())
    return state


def run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    compare: list[str] | None = None,
    address: str | None = None,
    on_progress: Callable[[str, list[ProgressSnapshot]], None] | None = None,
    split: Split | None = None,
    announce: Callable[[str], None] | None = None,
    resume: bool = False,
) -> dict:
    """Run cfg.strategy (and each of `compare`) on one split; write results into out_dir; return results.json's document.

    With `resume`, continue the run recorded in out_dir: finished strategies are
    kept, and regions of the unfinished one restore their latest checkpoints.
    """
    split = split or prepare(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(out_dir) if resume else _start(cfg, out_dir, compare)
    offset = _align_resume(cfg, out_dir, state.pending[0], state.run_id) if resume and state.pending else 0
    with open(out_dir / "metrics.jsonl", "a" if resume else "w") as metrics:
        for strategy in state.pending:

            def progress(
                snapshots: list[ProgressSnapshot], run_records: list[RunEvent], strategy: str = strategy, offset: int = offset,
            ) -> None:
                for rec in [r for snap in snapshots for r in snap.records]:
                    metrics.write(json.dumps({"strategy": strategy, **rec.to_json()}) + "\n")
                for rec in run_records:  # a resumed run's evaluations number on from those kept
                    doc = rec.to_json()
                    metrics.write(json.dumps({"strategy": strategy, **doc, "evaluation": doc["evaluation"] + offset}) + "\n")
                metrics.flush()
                if on_progress:
                    on_progress(strategy, snapshots)

            try:
                result = run_strategy(
                    cfg, split, strategy, state.run_id, address=address, on_progress=progress, out_dir=out_dir,
                    announce=announce, spent_s=state.spent.get(strategy, 0.0),
                )
            except Stopped as stopped:  # what --resume needs to count this invocation's time
                write_json(out_dir / STATE_FILE, state.stopped(strategy, stopped.seconds).to_json())
                mirror(cfg, out_dir)
                raise
            offset = 0
            save_strategy(out_dir, cfg, split, state.run_id, result)  # models/<strategy>/: before the state says it finished
            state = state.finished(strategy, result.to_json())
            write_json(out_dir / STATE_FILE, state.to_json())
            # A strategy that fails later must not cost the results of those that finished.
            write_results(out_dir, cfg, state.run_id, split, state.summaries())
            mirror(cfg, out_dir)
    doc = write_results(out_dir, cfg, state.run_id, split, state.summaries())
    mirror(cfg, out_dir)
    return doc
