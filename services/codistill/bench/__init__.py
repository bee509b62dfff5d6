"""Benchmarking: suites of strategies x settings, run cell by cell on identical splits and seeds.

  suite.py  the suite file: rows, strategy specs, each cell's config
  cells.py  a cell's cache key, the code version, the figures a cell keeps
  run.py    `codistill bench`: run or reuse every cell, then aggregate and report

Aggregation, statistics, the Markdown report and the plots only render cells:
they live in codistill.report, outside the code version.
"""

from codistill.bench.cells import code_version
from codistill.bench.run import run_bench
from codistill.bench.suite import TRANSPORTS, BenchRow, Suite, cell_config, cells_of, load_suite, parse_strategy

__all__ = ["TRANSPORTS", "BenchRow", "Suite", "cell_config", "cells_of", "code_version", "load_suite", "parse_strategy", "run_bench"]
