"""Where Ray puts regions: spread over nodes, packed onto few, or pinned by resource or label.

The choice is turned into Ray's own scheduling (a SPREAD strategy, a PACK
placement group, resource and label requirements), never into a hand-made
node list, so a region Ray restarts after a node failure is placed again by
the same rule on the nodes that are left. Pins are checked against the
cluster before any actor starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from codistill.config import PinConfig, RegionsConfig
from codistill.errors import UserError


class PlacementError(UserError):
    """No node of the cluster can host a pinned region."""


@dataclass(frozen=True)
class NodeOffer:
    """What one live node of the cluster offers: its resources and labels."""

    node_id: str
    ip: str
    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_ray(cls, node: dict[str, Any]) -> NodeOffer:
        """From an entry of ray.nodes()."""
        return cls(node["NodeID"], node.get("NodeManagerAddress", ""), dict(node.get("Resources", {})), dict(node.get("Labels") or {}))


def mode(regions: RegionsConfig, local: bool) -> str:
    """spread or pack for a run; auto spreads on a cluster and keeps Ray's default on a local one."""
    if regions.placement == "auto":
        return "default" if local else "spread"
    return regions.placement


def needs(regions: RegionsConfig, pin: PinConfig | None) -> dict[str, float]:
    """The resources one region asks for."""
    asked = {"CPU": float(regions.num_cpus)}
    if regions.num_gpus:
        asked["GPU"] = float(regions.num_gpus)
    if pin is not None:
        asked.update({k: float(v) for k, v in pin.resources.items()})
    return asked


def check_pins(regions: RegionsConfig, nodes: list[NodeOffer]) -> None:
    """Refuse, before anything starts, a pin no live node can satisfy (one line: the region and what it asks).

    A pin places the whole process hosting its region (`regions.per_process`), so a node must hold the
    group's CPUs and GPUs with the pin's resources and labels; regions of one group pinned apart are refused.
    """
    for members in groups(regions):
        pin = group_pin(regions, members)
        if pin is None:
            continue
        asked = group_needs(regions, members, pin)
        if any(_fits(asked, pin.labels, node) for node in nodes):
            continue
        missing = _missing(asked, pin.labels, nodes)
        offered = sorted({k for n in nodes for k in n.resources if not k.startswith("node:")} - {"memory", "object_store_memory"})
        shared = f" (with regions {members[0]}..{members[-1]} of its process)" if len(members) > 1 else ""
        raise PlacementError(
            f"regions.pins: region {pin.region}{shared} needs {missing}, which no node of the cluster has "
            f"(resources offered: {', '.join(offered) or 'none'}; add them with `ray start --resources` or `--labels`)"
        )


def _fits(asked: dict[str, float], labels: dict[str, str], node: NodeOffer) -> bool:
    return all(node.resources.get(k, 0.0) >= v for k, v in asked.items()) and all(node.labels.get(k) == v for k, v in labels.items())


def _missing(asked: dict[str, float], labels: dict[str, str], nodes: list[NodeOffer]) -> str:
    """The first requirement no node meets on its own, as the user wrote it."""
    for k, v in asked.items():
        if not any(n.resources.get(k, 0.0) >= v for n in nodes):
            return f"resource {k}={v:g}"
    for k, v in labels.items():
        if not any(n.labels.get(k) == v for n in nodes):
            return f"label {k}={v}"
    return "its resources and labels together on one node"


def _options(regions: RegionsConfig, local: bool, pin: PinConfig | None, bundle: int | None, group: Any) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options: dict[str, Any] = {}
    if pin is not None:
        if pin.resources:
            options["resources"] = {k: float(v) for k, v in pin.resources.items()}
        if pin.labels:
            options["label_selector"] = dict(pin.labels)
    how = mode(regions, local)
    if group is not None and bundle is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=bundle)
    elif how == "spread":
        options["scheduling_strategy"] = "SPREAD"
    return options


# Regions hosted together: `regions.per_process` of them share one Ray actor (one worker process).
# Pins, spread and pack then apply to the group, the unit Ray places and restarts.


def groups(regions: RegionsConfig) -> list[tuple[int, ...]]:
    """The regions each process hosts, in order: 0..G-1, G..2G-1, ...; the last group may be smaller."""
    size = regions.per_process
    return [tuple(range(start, min(start + size, regions.count))) for start in range(0, regions.count, size)]


def group_pin(regions: RegionsConfig, members: tuple[int, ...]) -> PinConfig | None:
    """The pin of a group: that of any of its regions, which must all agree (a process runs on one node)."""
    pins = [p for p in regions.pins if p.region in members]
    for other in pins[1:]:
        if (other.resources, other.labels) != (pins[0].resources, pins[0].labels):
            raise PlacementError(
                f"regions.pins: regions {pins[0].region} and {other.region} share a process (regions.per_process="
                f"{regions.per_process}) but are pinned differently; pin them alike or place them in different groups"
            )
    return pins[0] if pins else None


def group_needs(regions: RegionsConfig, members: tuple[int, ...], pin: PinConfig | None) -> dict[str, float]:
    """The resources one group asks for: each region's CPUs and GPUs, and its pin's resources once."""
    asked = {k: v * len(members) for k, v in needs(regions, None).items()}
    if pin is not None:
        asked.update({k: float(v) for k, v in pin.resources.items()})
    return asked


def group_options(regions: RegionsConfig, local: bool, members: tuple[int, ...], bundle: int | None, group: Any = None) -> dict[str, Any]:
    """Ray actor options placing the process that hosts `members`: its pin's resources and labels, then the run's
    spread or pack (`group`, `bundle`: the PACK placement group and this process's bundle in it)."""
    return _options(regions, local, group_pin(regions, members), bundle, group)


def pack_groups(regions: RegionsConfig) -> list[int]:
    """The groups a PACK placement group holds (by index in `groups`): every group without a pin."""
    return [i for i, members in enumerate(groups(regions)) if group_pin(regions, members) is None]
