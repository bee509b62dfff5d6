"""Everything that only renders results: nothing here can change a figure.

  live.py         the terminal: a live per-region table while training, the results table after
  run_plots.py    `codistill report RUN_DIR`: PNG plots from a run's metrics.jsonl and results.json
  summaries.py    figures derived from a results document (hidden-class recall)
  aggregate.py    bench cells -> per-row figures, tuning choices, paired comparisons
  targets.py      the suite's targets, judged on its declared headline strategy
  stats.py        spread over seeds, paired differences with 95% intervals
  markdown.py     the bench's Markdown report (or tuning report)
  suite_plots.py  the bench report's PNG plots
  budget.py       accuracy against bytes: each strategy's validation-chosen point at every byte budget
  scale.py        the scale section: memory, bytes and wall time against the number of regions

The bench's code version (codistill.bench.cells) leaves this whole subpackage out.
"""

from pathlib import Path

from codistill.errors import ReportError


def report(run_dir: Path) -> list[Path]:
    """`codistill report`: write RUN_DIR/plots/*.png; returns their paths (raises ReportError)."""
    from codistill.report.run_plots import report as plot_run

    return plot_run(run_dir)


__all__ = ["ReportError", "report"]
