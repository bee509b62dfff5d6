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
    monitor = RunMonitor(MonitorConfig(stop_when_converged=True, patience=2), "run", y_test, 2, None)
    assert not monitor.observe(snapshots([test_a, test_b], [probe, probe], 10))
    assert monitor.observe(snapshots([test_a, test_b], [probe, probe], 20))
    assert monitor.records[-1].disagreement == 0.0
    # And the other way round: agreement on test inputs alone never counts as convergence.
    other = RunMonitor(MonitorConfig(stop_when_converged=True, patience=1), "run", y_test, 2, None)
    assert not other.observe(snapshots([test_a, test_a], [probe, 1 - probe], 10))
    assert other.records[-1].disagreement == 1.0


def test_the_printed_prometheus_command_stays_on_loopback_and_in_the_run_folder(tmp_path):
    from codistill.launch.monitor import prometheus_command, write_prometheus_config, write_service_discovery

    folder = tmp_path / "run" / "prometheus"
    config = write_prometheus_config(folder, write_service_discovery(folder, {0: "127.0.0.1:5000"}, None))
    command = prometheus_command(config)
    assert "--web.listen-address=127.0.0.1:9090" in command
    assert f"--storage.tsdb.path={folder / 'data'}" in command  # not ./data wherever the user stands
    assert command in config.read_text()
