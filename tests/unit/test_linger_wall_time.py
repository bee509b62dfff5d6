"""Time the endpoints are kept up after training is said on screen and kept apart from training time."""

from codistill.launch import driver
from codistill.report.live import results_table


class Runner:
    host, plans = "127.0.0.1", []

    def start(self): ...
    def poll(self, timeout_s): return [], True
    def stop(self): ...
    def metrics_targets(self): return {}
    def results(self): return ["result"]
    def close(self): ...


class Monitor:
    def set_targets(self, targets): ...
    def observe(self, snapshots): return False
    def drain(self): return []
    def close(self): ...


def test_lingering_is_announced_with_its_end_and_not_counted_as_training():
    lines = []
    done = driver.supervise(Runner(), Monitor(), None, linger_s=0.3, announce=lines.append)
    assert done.results == ["result"]
    assert done.train_seconds < 0.2 <= 0.3 <= done.linger_seconds + 0.01
    assert len(lines) == 1 and "kept up 0.3 s more, until " in lines[0] and "training done in" in lines[0], lines


def test_the_final_table_shows_training_and_kept_up_time_apart():
    doc = {"strategy": "codistill", "regions": [{"test_accuracy": 0.5}], "mean_test_accuracy": 0.5,
           "ensemble_test_accuracy": 0.5, "bytes_sent": 1, "bytes_received": 1, "wall_seconds": 13.0,
           "wall_seconds_this_run": 13.0, "linger_seconds": 60.0, "config": {"data": {"partition": {"kind": "iid"}}}}
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(results_table(doc))
    text = console.export_text()
    assert "wall time, training" in text and "13.0 s" in text and "endpoints kept up after" in text and "60.0 s" in text
    assert "this invocation" not in text
