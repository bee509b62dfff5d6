"""Placement: pins checked against what the cluster's nodes offer; spread/pack turned into Ray scheduling."""

import pytest

from codistill import config
from codistill.launch import placement
from codistill.launch.placement import NodeOffer, PlacementError


def regions(**kw):
    return config.from_dict({"regions": {"count": 4, "num_cpus": 0.5, **kw}}).regions


NODES = [
    NodeOffer("a" * 8, "10.0.0.1", {"CPU": 4.0, "zone_a": 1.0, "memory": 1e9}, {"rack": "r1"}),
    NodeOffer("b" * 8, "10.0.0.2", {"CPU": 4.0, "gpu_box": 2.0}, {"rack": "r2"}),
]


def test_pins_any_node_can_host_pass():
    placement.check_pins(regions(pins=[{"region": 3, "resources": {"zone_a": 1}}, {"region": 1, "labels": {"rack": "r2"}}]), NODES)


@pytest.mark.parametrize(
    "pin, named",
    [
        ({"region": 3, "resources": {"zone_x": 1}}, "resource zone_x=1"),
        ({"region": 2, "resources": {"zone_a": 2}}, "resource zone_a=2"),  # more than any node has
        ({"region": 1, "labels": {"rack": "r9"}}, "label rack=r9"),
        # Each exists, but on different nodes: no single node fits.
        ({"region": 0, "resources": {"zone_a": 1, "gpu_box": 1}}, "together on one node"),
    ],
)
def test_a_pin_no_node_can_host_is_refused_in_one_line(pin, named):
    with pytest.raises(PlacementError) as err:
        placement.check_pins(regions(pins=[pin]), NODES)
    text = str(err.value)
    assert "\n" not in text and f"region {pin['region']}" in text and named in text, text
    assert "zone_a" in text and "memory" not in text  # what is on offer, without Ray's bookkeeping


def test_modes_and_ray_options():
    assert placement.mode(regions(), local=True) == "default"
    assert placement.mode(regions(), local=False) == "spread"
    assert placement.mode(regions(placement="pack"), local=False) == "pack"
    cfg = regions(placement="spread", pins=[{"region": 2, "resources": {"zone_a": 1}, "labels": {"rack": "r1"}}])
    assert placement.actor_options(cfg, False, 0, None) == {"scheduling_strategy": "SPREAD"}
    pinned = placement.actor_options(cfg, False, 2, None)
    assert pinned["resources"] == {"zone_a": 1.0} and pinned["label_selector"] == {"rack": "r1"}
    assert placement.pack_bundles(regions(placement="pack", pins=[{"region": 1, "resources": {"zone_a": 1}}])) == [0, 2, 3]
    assert placement.actor_options(regions(), True, 0, None) == {}


@pytest.mark.parametrize(
    "pins, message",
    [
        ([{"region": 9, "resources": {"a": 1}}], "outside 0..3"),
        ([{"region": 1, "resources": {"a": 1}}, {"region": 1, "labels": {"b": "c"}}], "twice"),
        ([{"region": 1}], "names no resources or labels"),
        ([{"region": 1, "resources": {"a": 0}}], "<= 0"),
    ],
)
def test_bad_pins_are_config_errors(pins, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_dict({"regions": {"count": 4, "pins": pins}})
