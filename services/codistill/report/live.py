"""Terminal display: a live per-region table while training, a summary after."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from codistill.records import ProgressSnapshot
from codistill.report.summaries import hidden_class_recall


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or x != x else format(x, spec)


# A region whose loop has finished is done, whether or not its server still answers its peers.
_STATE_SHOWN = {"stopped": "done"}


def progress_table(strategy: str, snapshots: list[ProgressSnapshot]) -> Table:
    table = Table(title=f"strategy: {strategy}", title_justify="left")
    # Where each region runs, once any serves on a network (Ray); in-process regions have no node.
    nodes = any(s.node_ip for s in snapshots)
    columns = ("region", "node", "arch", "state") if nodes else ("region", "arch", "state")
    for col in (*columns, "step", "progress", "CE loss", "KD loss", "test acc", "sent", "received"):
        table.add_column(col, justify="left" if col in ("node", "arch", "state") else "right")
    for s in sorted(snapshots, key=lambda s: s.region):
        done = s.step / max(1, s.steps)
        bar = "█" * int(done * 12) + "░" * (12 - int(done * 12))
        table.add_row(
            str(s.region),
            *([s.node_ip or "?"] if nodes else []),
            s.arch,
            _STATE_SHOWN.get(s.state, s.state),
            f"{s.step}/{s.steps}",
            bar,
            _fmt(s.loss_supervised),
            _fmt(s.loss_distill),
            _fmt(s.test_accuracy),
            human_bytes(s.bytes_sent),
            human_bytes(s.bytes_received),
        )
    return table


class LiveProgress:
    def __init__(self, console: Console):
        self.console = console
        self._live: Live | None = None
        self._strategy: str | None = None

    def update(self, strategy: str, snapshots: list[ProgressSnapshot]) -> None:
        if strategy != self._strategy:
            self.close()
            self._strategy = strategy
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        assert self._live is not None
        self._live.update(progress_table(strategy, snapshots))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            if not self.console.is_terminal:
                self.console.print()


def results_table(doc: dict) -> Table:
    """Per-region accuracy per strategy side by side, then mean, ensemble, bytes and wall time."""
    runs = doc.get("compare") or {doc["strategy"]: doc}
    table = Table(title="test accuracy", title_justify="left")
    table.add_column("region")
    for name in runs:
        table.add_column(name, justify="right")
    n = max(len(r["regions"]) for r in runs.values())
    for i in range(n):
        row = [str(i)]
        for r in runs.values():
            regs = r["regions"]
            row.append(f"{regs[i]['test_accuracy']:.3f}" if i < len(regs) else "")
        table.add_row(*row)
    table.add_section()
    hidden = hidden_class_recall(doc)
    if hidden:  # Hinton's "no 3s": can regions that never saw the class labelled recognise it?
        classes = ", ".join(str(c) for c in doc["config"]["data"]["partition"]["omit_classes"])
        for side, label in (("blind", f"class {classes} recall, blind"), ("seeing", f"class {classes} recall, seeing")):
            table.add_row(label, *[f"{hidden[s][side]:.3f}" if side in hidden.get(s, {}) else "" for s in runs])
        table.add_section()
    for label, key, fmt in (
        ("mean", "mean_test_accuracy", lambda v: f"{v:.3f}"),
        ("ensemble", "ensemble_test_accuracy", lambda v: f"{v:.3f}"),
        ("bytes sent", "bytes_sent", human_bytes),
        ("bytes received", "bytes_received", human_bytes),
        ("wall time, training", "wall_seconds", lambda v: f"{v:.1f} s"),
    ):
        table.add_row(label, *[fmt(r[key]) for r in runs.values()], style="bold" if key == "mean_test_accuracy" else None)
    for label, key, shown in (
        # A resumed run: the total above counts every invocation; this one's own share apart.
        ("  of it, this invocation", "wall_seconds_this_run", lambda r: r.get("wall_seconds_this_run", r["wall_seconds"]) != r["wall_seconds"]),
        # monitor.linger_s: time the endpoints were kept up after training, not training time.
        ("endpoints kept up after", "linger_seconds", lambda r: r.get("linger_seconds", 0) > 0),
    ):
        if any(shown(r) for r in runs.values()):
            table.add_row(label, *[f"{r.get(key, 0.0):.1f} s" for r in runs.values()])
    return table
