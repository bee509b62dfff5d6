"""Run-level convergence is judged on the unlabeled transfer probe, never on test inputs."""

import numpy as np

from codistill.config import MonitorConfig
from codistill.launch.monitor import RunMonitor
from codistill.records import Evaluation, ProgressSnapshot


def snapshots(test_probs, probes, step):
    return [
        ProgressSnapshot(i, "mlp", "training", step, 100, 0.5, 0.0, 0.0, 0, 0, evals=(Evaluation(step, 0.5, t, p),))
        for i, (t, p) in enumerate(zip(test_probs, probes))
    ]


def test_stop_when_converged_reads_the_transfer_probe_not_the_test_split():
    y_test = np.array([0, 1, 0, 1])
    # On test inputs the two regions disagree everywhere; on the transfer probe they agree.
    test_a, test_b = np.eye(2)[[0, 1, 0, 1]], np.eye(2)[[1, 0, 1, 0]]
    probe = np.array([0, 1, 1, 0, 1], dtype=np.int16)
    monitor = RunMonitor(MonitorConfig(stop_when_converged=True, patience=2), "run", "codistill", y_test, 2, None)
    assert not monitor.observe(snapshots([test_a, test_b], [probe, probe], 10))
    assert monitor.observe(snapshots([test_a, test_b], [probe, probe], 20))
    assert monitor.records[-1].disagreement == 0.0
    # And the other way round: agreement on test inputs alone never counts as convergence.
    other = RunMonitor(MonitorConfig(stop_when_converged=True, patience=1), "run", "codistill", y_test, 2, None)
    assert not other.observe(snapshots([test_a, test_a], [probe, 1 - probe], 10))
    assert other.records[-1].disagreement == 1.0


def test_the_printed_prometheus_command_stays_on_loopback_and_in_the_run_folder(tmp_path):
    from codistill.launch.monitor import TARGETS_GLOB, prometheus_command, write_prometheus_config

    folder = tmp_path / "run" / "prometheus"
    config = write_prometheus_config(folder, folder / TARGETS_GLOB)
    command = prometheus_command(config)
    assert "--web.listen-address=127.0.0.1:9090" in command
    assert f"--storage.tsdb.path={folder / 'data'}" in command  # not ./data wherever the user stands
    assert command in config.read_text()


def test_each_strategy_keeps_its_own_targets_file_and_prometheus_reads_them_all(tmp_path):
    """--compare: the second strategy's targets must not replace the first's."""
    import json

    folder = tmp_path / "prometheus"
    y = np.array([0, 1])
    addresses = {"codistill": "127.0.0.1:5000", "independent": "127.0.0.1:6000"}
    for strategy, addr in addresses.items():
        RunMonitor(MonitorConfig(), "run", strategy, y, 1, None, folder).set_targets({0: addr})
    files = sorted(folder.glob("targets-*.json"))
    assert [f.name for f in files] == ["targets-codistill.json", "targets-independent.json"]
    for f in files:
        groups = json.loads(f.read_text())
        strategy = f.stem.removeprefix("targets-")
        assert [g["targets"] for g in groups] == [[addresses[strategy]]]
        assert all(g["labels"]["strategy"] == strategy for g in groups)
    prom = (folder / "prometheus.yml").read_text()
    assert f"files: ['{(folder / 'targets-*.json').resolve()}']" in prom
    assert "honor_labels: true" in prom
