"""Through Ray, regions train on the object store's copy of the shared arrays: no copy per process or per region."""

import sys

import numpy as np
import pytest
import ray
from ray import cloudpickle

from codistill.launch import driver
from codistill.launch.plan import plan_regions
from codistill.launch.ray_runner import RayRunner

pytestmark = pytest.mark.integration

SHARED = ("x_transfer", "x_test", "y_test", "x_val", "y_val")  # SharedData's order, as in the object store
# `_look` runs in the hosts' processes, which cannot import this test module: send it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _look(host):
    """Run inside a host process: where each region's tensors live, and whether that is the object store's memory."""
    common, _ = ray.get(host.directory.shared.remote())
    store = ray.get(common)  # this process's read-only views of the object store
    seen = {}
    for region, hosted in host.regions.items():
        data = hosted._loop.learner.data
        tensors = [getattr(data, name) for name in SHARED]
        seen[region] = {
            "pointers": [t.data_ptr() for t in tensors],
            "in_store": [bool(len(a)) and np.shares_memory(t.numpy(), a) for t, a in zip(tensors, store)],
            "store_read_only": [not a.flags.writeable for a in store],
            "labeled": data.x_labeled.data_ptr(),
        }
    return seen


@pytest.mark.parametrize("dataset", ["synthetic", "digits"])
def test_regions_wrap_the_object_stores_arrays_and_a_process_shares_them(local_ray, tiny_cfg, dataset):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.data.dataset = dataset
    cfg.regions.count, cfg.regions.per_process, cfg.regions.num_cpus = 4, 2, 0.25
    cfg.exchange.transport = "grpc"
    cfg.train.steps = 30
    split = driver.prepare(cfg)
    runner = RayRunner(cfg, split, plan_regions(cfg, split, "codistill"), "shared", local=True)
    try:
        runner.start()
        seen = [ray.get(host.__ray_call__.remote(_look)) for host in runner.hosts]
        done = False
        while not done:
            _, done = runner.poll(1.0)
        results = runner.results()
    finally:
        runner.close()

    assert [sorted(s) for s in seen] == [[0, 1], [2, 3]]
    for host in seen:
        for region, view in host.items():
            assert all(view["store_read_only"]) and all(view["in_store"]), (region, view)
        first, second = host.values()
        assert first["pointers"] == second["pointers"]  # the two regions of a process read one copy
        assert first["labeled"] != second["labeled"]  # each its own slice
    assert all(r.steps == cfg.train.steps for r in results)
