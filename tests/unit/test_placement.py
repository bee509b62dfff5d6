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
    assert placement.group_options(cfg, False, (0,), None) == {"scheduling_strategy": "SPREAD"}
    pinned = placement.group_options(cfg, False, (2,), None)
    assert pinned["resources"] == {"zone_a": 1.0} and pinned["label_selector"] == {"rack": "r1"}
    assert placement.pack_groups(regions(placement="pack", pins=[{"region": 1, "resources": {"zone_a": 1}}])) == [0, 2, 3]
    assert placement.group_options(regions(), True, (0,), None) == {}


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


def test_regions_are_grouped_in_order_and_the_last_group_may_be_smaller():
    assert placement.groups(regions(count=7, per_process=3)) == [(0, 1, 2), (3, 4, 5), (6,)]
    assert placement.groups(regions(per_process=1)) == [(0,), (1,), (2,), (3,)]
    assert placement.groups(regions(per_process=9)) == [(0, 1, 2, 3)]


def test_a_group_asks_for_each_region_and_takes_its_pin():
    cfg = regions(count=6, per_process=3, num_gpus=0.25, placement="spread", pins=[{"region": 4, "resources": {"zone_a": 1}, "labels": {"rack": "r1"}}])
    assert placement.group_needs(cfg, (0, 1, 2), None) == {"CPU": 1.5, "GPU": 0.75}
    pin = placement.group_pin(cfg, (3, 4, 5))
    assert pin is not None and pin.region == 4 and placement.group_pin(cfg, (0, 1, 2)) is None
    assert placement.group_needs(cfg, (3, 4, 5), pin) == {"CPU": 1.5, "GPU": 0.75, "zone_a": 1.0}  # the pin once, not per region
    pinned = placement.group_options(cfg, False, (3, 4, 5), None)
    assert pinned["resources"] == {"zone_a": 1.0} and pinned["label_selector"] == {"rack": "r1"}
    assert placement.group_options(cfg, False, (0, 1, 2), None) == {"scheduling_strategy": "SPREAD"}
    assert placement.pack_groups(cfg) == [0]


def test_regions_of_one_group_pinned_alike_pass_and_differently_are_refused_in_one_line():
    alike = regions(count=4, per_process=2, pins=[{"region": 0, "labels": {"rack": "r1"}}, {"region": 1, "labels": {"rack": "r1"}}])
    assert placement.group_pin(alike, (0, 1)).labels == {"rack": "r1"}
    apart = regions(count=4, per_process=2, pins=[{"region": 2, "labels": {"rack": "r1"}}, {"region": 3, "labels": {"rack": "r2"}}])
    assert placement.group_pin(apart, (0, 1)) is None
    with pytest.raises(PlacementError) as err:
        placement.group_pin(apart, (2, 3))
    text = str(err.value)
    assert "\n" not in text and "regions 2 and 3" in text and "per_process=2" in text, text


def test_check_pins_places_the_whole_group_a_pinned_region_shares_a_process_with():
    # Region 4 alone fits node a (zone_a, 4 CPUs), but its process hosts regions 3..5: 3 x 2 CPUs do not.
    heavy = regions(count=6, per_process=3, num_cpus=2, pins=[{"region": 4, "resources": {"zone_a": 1}}])
    with pytest.raises(PlacementError) as err:
        placement.check_pins(heavy, NODES)
    text = str(err.value)
    assert "\n" not in text and "region 4 (with regions 3..5 of its process) needs resource CPU=6" in text, text
    placement.check_pins(regions(count=6, per_process=3, num_cpus=1, pins=[{"region": 4, "resources": {"zone_a": 1}}]), NODES)
    placement.check_pins(regions(count=6, per_process=1, num_cpus=2, pins=[{"region": 4, "resources": {"zone_a": 1}}]), NODES)


def test_check_pins_refuses_regions_of_one_process_pinned_apart_in_one_line():
    apart = regions(count=4, per_process=2, pins=[{"region": 0, "resources": {"zone_a": 1}}, {"region": 1, "resources": {"gpu_box": 1}}])
    with pytest.raises(PlacementError) as err:
        placement.check_pins(apart, NODES)  # each pin alone fits a node
    text = str(err.value)
    assert "\n" not in text and "regions 0 and 1 share a process" in text, text
    placement.check_pins(apart.model_copy(update={"per_process": 1}), NODES)
