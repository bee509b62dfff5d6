"""The committed benchmark suites load, keep tuning and headline seeds apart, and the GPU script refuses a machine without a GPU."""

import subprocess
from pathlib import Path

import pytest

from codistill.bench.suite import cell_config, cells_of, load_suite

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "benchmarks" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_suite_loads_with_a_valid_config_for_every_cell(path):
    suite = load_suite(path)  # builds every cell's config: an invalid one raises
    assert cells_of(suite)


def seeds_by_dataset(tuning: bool) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for path in SUITES:
        suite = load_suite(path)
        if all(row.group for row in suite.rows) != tuning:
            continue
        for row, spec, seed in cells_of(suite):
            cfg = cell_config(suite, row, spec, seed)
            out.setdefault(cfg.data.dataset, set()).add(cfg.seed)
    return out


def test_no_reporting_suite_runs_a_seed_a_tuning_suite_tuned_on():
    # The published suites run Fashion-MNIST; the synthetic smoke suites exercise the machinery in CI only.
    tuned, reported = seeds_by_dataset(True)["fashion-mnist"], seeds_by_dataset(False)["fashion-mnist"]
    assert tuned == {100} and reported
    assert not reported & tuned


def test_the_gpu_suite_puts_every_region_on_cuda_sharing_one_gpu():
    suite = load_suite(ROOT / "benchmarks" / "suites" / "gpu.yaml")
    for row, spec, seed in cells_of(suite):
        cfg = cell_config(suite, row, spec, seed)
        assert cfg.regions.device == "cuda" and cfg.exchange.transport == "grpc"
        assert 0 < cfg.regions.num_gpus * cfg.regions.count <= 1


def test_gpu_script_stops_with_one_line_where_there_is_no_nvidia_driver(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "dirname", "python3"):  # what the script may reach before its check; no nvidia-smi
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (bare / tool).symlink_to(found)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env={"PATH": str(bare)}, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == "gpu.sh: nvidia-smi not found: this machine has no NVIDIA driver"
