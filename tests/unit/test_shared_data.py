"""The transfer, test and validation sets are made once per run and shared: regions in one process wrap one copy."""

import numpy as np
import pytest

from codistill.launch import driver
from codistill.launch.inprocess import InProcessRunner
from codistill.launch.plan import plan_regions, shared_data

SHARED = ("x_transfer", "x_test", "y_test", "x_val", "y_val")


def _tensors(region):
    return region._loop.learner.data


def _started(cfg):
    split = driver.prepare(cfg)
    runner = InProcessRunner(cfg, split, plan_regions(cfg, split, "codistill"), "shared")
    runner.start()
    return split, runner


def _finish(runner):
    done = False
    while not done:
        _, done = runner.poll(1.0)
    results = runner.results()
    runner.close()
    return results


@pytest.mark.parametrize("dataset", ["synthetic", "digits"])  # float32 inputs, and uint8 pixels made float32 once
def test_in_process_regions_wrap_one_copy_of_the_shared_arrays(tiny_cfg, dataset):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.data.dataset = dataset
    split, runner = _started(cfg)
    try:
        shared = shared_data(split)
        assert all(not getattr(shared, name).flags.writeable for name in SHARED)  # a write would reach every region
        for region in runner.regions:
            data = _tensors(region)
            for name in SHARED:
                tensor, array = getattr(data, name), getattr(shared, name)
                assert len(array) > 0 and tensor.data_ptr() == array.ctypes.data, (region.id, name)
                assert np.shares_memory(tensor.numpy(), array), (region.id, name)
        # Each region's labeled slice is its own.
        assert len({_tensors(r).x_labeled.data_ptr() for r in runner.regions}) == len(runner.regions)
    finally:
        results = _finish(runner)
    assert all(r.steps == cfg.train.steps for r in results)
