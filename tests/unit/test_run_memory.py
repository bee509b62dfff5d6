"""A whole in-process run reports its peak resident memory in results.json."""

import json

from codistill.launch import driver

MiB = 2**20


def test_inprocess_run_records_its_peak_memory(tiny_cfg, tmp_path):
    driver.run(tiny_cfg, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["resident_measure"] == "pss" and doc["resident_scope"] == "driver process"
    # The driver holds torch, the data and three regions: well over 50 MiB, and far under a machine.
    assert 50 * MiB < doc["peak_total_resident_bytes"] < 4 * 2**30
    # Each region's share of what the run added to the driver: a small model on a small split.
    assert 0 <= doc["peak_region_resident_bytes"] < doc["peak_total_resident_bytes"] / 3
