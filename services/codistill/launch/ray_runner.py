"""Regions as Ray actors that talk to each other over gRPC.

Ray places the actors; each builds its region fully wired (serves, prepares
its inbox, registers its address in a directory), and finds its peers
through that directory when it first publishes. The driver then steps back:
predictions travel region to region, never through the driver.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import warnings
from dataclasses import replace

import ray
import ray.util
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from codistill import plugins
from codistill.config import RunConfig
from codistill.data import Split
from codistill.errors import RegionError
from codistill.launch.fedavg import WeightAverager
from codistill.launch import placement
from codistill.launch.interrupt import keep_sigterm_handler
from codistill.launch.loopback import keep_local_ray_on_loopback
from codistill.launch.placement import PlacementError
from codistill.launch.plan import SharedData, region_data
from codistill.records import ProgressSnapshot, RegionData, RegionPlan, RegionResult, Role
from codistill.region import checkpoint
from codistill.region.network import GrpcNetwork
from codistill.region.service import build_region
from codistill.storage import Location

LOOPBACK = "127.0.0.1"
# How long a PACK placement group may wait for room before the run gives up on it.
PLACEMENT_TIMEOUT_S = 120.0


class RegionDirectory:
    """Where each region of a run can be reached now; a restarted region re-registers here."""

    def __init__(self):
        self.addresses: dict[int, str] = {}
        self.metrics: dict[int, str] = {}
        self.common: list = []
        self.num_classes = 0
        self.own: dict[int, list] = {}

    def share(self, common: list, num_classes: int, own: dict[int, list]) -> None:
        """References (nested, so they stay references) to the arrays every region reads, in SharedData's
        order, and to each region's labeled slice; held for every start of every region."""
        self.common, self.num_classes, self.own = common, num_classes, own

    def shared(self) -> tuple[list, int]:
        return self.common, self.num_classes

    def arrays(self, region: int) -> list:
        return self.own[region]

    def register(self, region: int, address: str, metrics_address: str | None) -> None:
        self.addresses[region] = address
        if metrics_address:
            self.metrics[region] = metrics_address

    def lookup(self, region: int) -> str | None:
        return self.addresses.get(region)

    def metrics_targets(self) -> dict[int, str]:
        return dict(self.metrics)


class RegionHost:
    """Hosts a group of regions (`regions.per_process` of them, usually one) inside one Ray worker process.

    Each region is built exactly as it would be alone: its own model, optimiser, inbox, gRPC server and
    /metrics, registered in the directory. Built the same way on its first start and when Ray restarts
    the process after a crash; then each region's `run` (retried by Ray) resumes from its own checkpoint.
    The regions run concurrently, one `run` call each on the actor's threads.
    """

    def __init__(
        self, cfg: RunConfig, run_id: str, plans: tuple[RegionPlan, ...], host: str | None, names: tuple[str, str | None],
        checkpoint_dirs: tuple[Location | None, ...],
    ):
        # No constructor argument is an object-store reference or an actor handle: Ray cannot promise
        # those to a restarted actor. The run's directory and hub are found by name, and each region
        # fetches its arrays from the directory, which holds them for the whole run, so a region
        # Ray restarts after a crash gets the very same objects.
        directory = ray.get_actor(names[0])
        hub = ray.get_actor(names[1]) if names[1] else None
        torch.set_num_threads(cfg.regions.torch_threads)
        self.directory = directory
        with warnings.catch_warnings():  # the property warns about an unrelated deprecation
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        network = GrpcNetwork(
            host or ray.util.get_node_ip_address(),
            register=lambda region, address, metrics: ray.get(directory.register.remote(region, address, metrics)),
            lookup=self._lookup,
            average=(lambda r, k, state: ray.get(hub.average.remote(r, k, state))) if hub is not None else None,
        )
        # The shared arrays once for the whole process: read-only views of the object store that
        # every region here wraps as its tensors (no copy per process, none per region).
        common, num_classes = ray.get(directory.shared.remote())
        shared = SharedData(*ray.get(common), num_classes)
        self.regions = {
            plan.id: _build(cfg, run_id, plan, shared, directory, network, folder, restarted)
            for plan, folder in zip(plans, checkpoint_dirs)
        }

    def _lookup(self, region: int) -> str | None:
        return ray.get(self.directory.lookup.remote(region), timeout=10)

    def _region(self, region: int | None):
        """One hosted region; the first when none is named."""
        return self.regions[next(iter(self.regions)) if region is None else region]

    def ready(self) -> None:
        """Returns once every hosted region is built and registered."""

    def run(self, region: int | None = None) -> RegionResult:
        hosted = self._region(region)
        try:
            return hosted.run()
        except Exception as exc:
            raise RegionError(hosted.id, f"{type(exc).__name__}: {exc}") from None

    def metrics_address(self, region: int | None = None) -> str | None:
        return self._region(region).metrics_address

    def progress(self, region: int | None = None) -> ProgressSnapshot:
        return self._region(region).progress()

    def stop(self) -> None:
        for hosted in self.regions.values():
            hosted.stop()

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        for hosted in self.regions.values():
            hosted.close()


def _build(
    cfg: RunConfig, run_id: str, plan: RegionPlan, shared: SharedData, directory, network: GrpcNetwork, folder: Location | None,
    restarted: bool,
):
    """One region of a host, its slice from the directory beside the shared arrays, its restart count from its own checkpoints."""
    x_labeled, y_labeled = ray.get(ray.get(directory.arrays.remote(plan.id)))
    data = RegionData(
        x_labeled, y_labeled, shared.x_transfer, shared.x_test, shared.y_test, shared.num_classes, shared.x_val, shared.y_val,
    )
    restarts = 0
    if restarted:
        last = checkpoint.load_latest(folder) if folder else None
        restarts = (last["restarts"] if last else 0) + 1
    return build_region(cfg, plan, data, network, run_id=run_id, checkpoint_dir=folder, restarts=restarts)


def ensure_ray(cfg: RunConfig, address: str | None) -> bool:
    """Start a local Ray (loopback only) or join `address`; returns True when local."""
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address.startswith(LOOPBACK)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # How user code reaches the workers: ray.runtime_env on a cluster; locally also the driver's sys.path.
    runtime_env = plugins.runtime_env(cfg, local=not address) or None
    if address:
        with keep_sigterm_handler():  # `codistill run` stops on SIGTERM as on Ctrl-C, not by Ray's handlers
            ray.init(address=address, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)
        return False
    keep_local_ray_on_loopback()
    # Ray turns token auth on for a new local cluster (good) and announces it on every start; the
    # announcement is noise on a user's screen, so only that logger is quietened.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    needed = math.ceil(cfg.regions.count * cfg.regions.num_cpus)
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, needed)
    # address="local": a Ray of this run's own, never a `ray start` cluster that happens to run on this machine.
    with keep_sigterm_handler():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False, runtime_env=runtime_env)
    return True


class RayRunner:
    """The runner protocol (start, poll, stop, results, close) over Ray actors."""

    def __init__(self, cfg: RunConfig, split: Split, plans: list[RegionPlan], run_id: str, *, local: bool, checkpoints: Location | None = None):
        self.cfg, self.split, self.plans, self.run_id, self.checkpoints = cfg, split, plans, run_id, checkpoints
        self.local = local
        self._group = None  # the PACK placement group, in pack mode
        self.bind = cfg.exchange.host if cfg.exchange.host != "auto" else (LOOPBACK if local else None)
        self.host = self.bind or ray.util.get_node_ip_address()  # where run-level metrics are served
        self.hosts: list = []  # one Ray actor per group of regions (regions.per_process)
        self.actors: list = []  # the host of each region, by region
        self._pending: dict = {}
        self._results: dict[int, RegionResult] = {}
        self._last: list[ProgressSnapshot | None] = [None] * len(plans)
        self._late: dict[int, list] = {i: [] for i in range(len(plans))}  # progress calls a poll gave up on, by region

    def start(self) -> None:
        cfg, restarts = self.cfg, self.cfg.fault.max_restarts if self.checkpoints else 0
        groups = placement.groups(cfg.regions)
        for members in groups:
            placement.group_pin(cfg.regions, members)  # refuse conflicting pins before anything starts
        host = ray.remote(RegionHost)
        bundles = self._pack_group(groups)
        tag = f"codistill-{self.run_id}-{cfg.strategy}-{uuid.uuid4().hex[:8]}"
        # The run's directory and hub live on the driver's node: the run ends with that node anyway,
        # and a worker node that dies must not take them (its regions restart by asking them).
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.directory = ray.remote(RegionDirectory).options(num_cpus=0, name=f"{tag}-directory", scheduling_strategy=here).remote()
        hub, hub_name = None, None
        if any(p.role is Role.WEIGHTS for p in self.plans):
            sizes = [len(p.labeled) for p in self.plans]
            hub_name = f"{tag}-hub"
            hub = ray.remote(WeightAverager).options(
                num_cpus=0, max_concurrency=len(self.plans) + 2, name=hub_name, scheduling_strategy=here,
            ).remote(sizes)
        self._hub = hub  # named actors live while a handle does
        self._share()
        self.actors = [None] * len(self.plans)
        for g, members in enumerate(groups):
            plans = tuple(self.plans[i] for i in members)
            folders = tuple(self.checkpoints.child(f"region-{p.id}") if self.checkpoints else None for p in plans)
            options = dict(
                num_cpus=cfg.regions.num_cpus * len(members),
                num_gpus=cfg.regions.num_gpus * len(members),
                max_concurrency=2 * len(members) + 2,  # each region's run(), plus progress/status calls while they are busy
                max_restarts=restarts,
                max_task_retries=restarts,  # each run() resumes from its region's checkpoint on the restarted actor
            )
            where = placement.group_options(cfg.regions, self.local, members, bundles.get(g), self._group)
            handle = host.options(**options, **where).remote(cfg, self.run_id, plans, self.bind, (f"{tag}-directory", hub_name), folders)
            self.hosts.append(handle)
            for i in members:
                self.actors[i] = handle
        _gather([h.ready.remote() for h in self.hosts], [self.plans[members[0]] for members in groups])
        self._pending = {a.run.remote(p.id): i for i, (a, p) in enumerate(zip(self.actors, self.plans))}

    def _pack_group(self, groups: list[tuple[int, ...]]) -> dict[int, int]:
        """pack: one placement group (PACK) holding every unpinned group of regions; returns each one's bundle index."""
        regions = self.cfg.regions
        if placement.mode(regions, self.local) != "pack":
            return {}
        members = placement.pack_groups(regions)
        if not members:
            return {}
        shapes = [placement.group_needs(regions, groups[g], None) for g in members]
        self._group = ray.util.placement_group(shapes, strategy="PACK")
        try:
            ray.get(self._group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            held = sum(len(groups[g]) for g in members)
            shared = f" in {len(members)} processes" if regions.per_process > 1 else ""
            raise PlacementError(
                f"regions.placement: pack: the cluster cannot hold {held} regions of {placement.needs(regions, None)}{shared} "
                f"within {PLACEMENT_TIMEOUT_S:g} s (free: {ray.available_resources()})"
            ) from None
        return {g: i for i, g in enumerate(members)}

    def _share(self) -> None:
        """Every array into the object store, once: the shared ones as float32 made here, not once per region."""
        shared = SharedData.of(self.split)  # not kept here: the object store holds the run's one copy
        common = [ray.put(a) for a in shared.arrays()]
        own = {}
        for p in self.plans:
            d = region_data(self.split, p, shared)
            own[p.id] = [ray.put(d.x_labeled), ray.put(d.y_labeled)]
        # Held for the whole run (as the directory holds them): a region Ray restarts fetches them again.
        self._shared = common + [ref for refs in own.values() for ref in refs]
        ray.get(self.directory.share.remote(common, shared.num_classes, own))

    def poll(self, timeout_s: float) -> tuple[list[ProgressSnapshot], bool]:
        """Every region's progress after at most `timeout_s`, and whether all have finished."""
        if self._pending:
            done, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout_s)
            for ref in done:
                i = self._pending.pop(ref)
                self._results[i] = _gather([ref], [self.plans[i]])[0]
        return self._progress(), not self._pending

    def _progress(self, timeout_s: float = 2.0) -> list[ProgressSnapshot]:
        """Progress of every region; a region that is restarting keeps its last snapshot."""
        refs = [a.progress.remote(p.id) for a, p in zip(self.actors, self.plans)]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=timeout_s)[0])
        for i, ref in enumerate(refs):
            if ref in ready:
                try:
                    self._last[i] = self._with_late(i, ray.get(ref))
                    continue
                except ray.exceptions.RayError:
                    pass
            else:
                self._late[i].append(ref)
            if self._last[i] is not None:
                self._last[i] = self._last[i].restarting()
        return [snap or ProgressSnapshot.placeholder(i) for i, snap in enumerate(self._last)]

    def _with_late(self, i: int, snap: ProgressSnapshot) -> ProgressSnapshot:
        """`snap` plus the records of the region's earlier calls that answered after their poll gave up on them.

        Each call drains the records it returns (a restarted region's resume among them), so a late
        answer must still be read, not dropped.
        """
        if not self._late[i]:
            return snap
        answered, self._late[i] = ray.wait(self._late[i], num_returns=len(self._late[i]), timeout=0)
        records, evals = (), ()
        for ref in answered:
            try:
                late = ray.get(ref)
            except ray.exceptions.RayError:  # asked of an incarnation that died: it drained nothing
                continue
            records, evals = records + tuple(late.records), evals + tuple(late.evals)
        return replace(snap, records=records + tuple(snap.records), evals=evals + tuple(snap.evals)) if records or evals else snap

    def stop(self) -> None:
        ray.get([h.stop.remote() for h in self.hosts])

    def metrics_targets(self) -> dict[int, str]:
        """Where regions serve metrics now (a restarted region serves on a new port)."""
        return ray.get(self.directory.metrics_targets.remote())

    def region_pids(self) -> list[int]:
        """The worker process hosting each region now, by region."""
        return ray.get([a.pid.remote() for a in self.actors])

    def results(self) -> list[RegionResult]:
        return [self._results[i] for i in range(len(self.plans))]

    def close(self) -> None:
        for h in self.hosts:
            try:
                ray.get(h.close.remote(), timeout=10)
            except Exception:
                pass
            ray.kill(h)
        if self._group is not None:
            ray.util.remove_placement_group(self._group)


def _gather(refs: list, plans: list[RegionPlan]) -> list:
    """ray.get each result, turning any Ray failure into a RegionError naming the region."""
    out = []
    for ref, plan in zip(refs, plans):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            if isinstance(cause, RegionError):
                raise RegionError(cause.region, cause.message) from None
            raise RegionError(plan.id, _last_line(exc)) from None
        except ray.exceptions.RayError as exc:
            raise RegionError(plan.id, _last_line(exc)) from None
    return out


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
