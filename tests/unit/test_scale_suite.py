"""benchmarks/suites/scale.yaml keeps its promise: the same work and rounds at every N, bytes flat by design."""

from pathlib import Path

from codistill.bench.suite import cell_config, cells_of, load_suite
from codistill.region.exchange import first_round, publish_round

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "suites" / "scale.yaml"


def scale_cells():
    suite = load_suite(SUITE)
    return [(row, spec, cell_config(suite, row, spec, seed)) for row, spec, seed in cells_of(suite)]


def rounds(cfg) -> list[int]:
    return [s for s in range(cfg.train.steps) if publish_round(s, cfg.exchange.publish_interval, first_round(cfg)) is not None]


def test_every_row_has_the_same_total_steps_rounds_and_fanout():
    seen = {}
    for row, spec, cfg in scale_cells():
        if cfg.strategy == "centralized":
            assert cfg.exchange.transport == "inprocess" and row.name == "scale-10"
            continue
        n = cfg.regions.count
        assert row.sweep == "scale" and row.value == n
        assert n * cfg.train.steps == 8000, row.name
        assert len(rounds(cfg)) == 7 and cfg.exchange.chunk_size == 500, row.name
        assert cfg.exchange.topology == "random-k" and cfg.exchange.k == 4
        assert cfg.train.steps == 2 * cfg.train.eval_every  # two evaluations per region at every N
        seen[n] = cfg.exchange.transport, -(-n // cfg.regions.per_process) if cfg.exchange.transport == "grpc" else None
    assert seen == {10: ("grpc", 10), 50: ("grpc", 10), 100: ("grpc", 10), 200: ("grpc", 10), 1000: ("inprocess", None)}


def test_ray_rows_fit_the_machines_cores_as_one_local_ray():
    grpc = [cfg for _, _, cfg in scale_cells() if cfg.exchange.transport == "grpc"]
    # The bench sizes one local Ray for the largest cell; it must not exceed 2 logical CPUs (2 idle workers).
    assert max(cfg.regions.count * cfg.regions.num_cpus for cfg in grpc) <= 2
