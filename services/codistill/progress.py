"""Moved to codistill.report.live; this name stays until the command line imports it from there."""

from codistill.report.live import LiveProgress, progress_table, results_table

__all__ = ["LiveProgress", "progress_table", "results_table"]
