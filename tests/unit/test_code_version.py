"""The bench's code version covers what computes a cell and nothing that only renders one."""

import shutil
from pathlib import Path

import pytest

from codistill.bench import cells

PACKAGE = Path(cells.__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path, monkeypatch):
    copy = tmp_path / "codistill"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cells, "ROOT", copy)
    return copy


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# changed\n")


@pytest.mark.parametrize("module", ["report/markdown.py", "report/aggregate.py", "report/suite_plots.py", "report/live.py", "report/run_plots.py"])
def test_reporting_modules_leave_the_version_alone(package, module):
    before = cells.code_version()
    _touch(package / module)
    (package / "report" / "new_plot.py").write_text("x = 1\n")
    assert cells.code_version() == before


@pytest.mark.parametrize("module", ["region/loop.py", "region/exchange.py", "launch/driver.py", "bench/cells.py", "records.py", "losses.py"])
def test_modules_that_compute_cells_change_the_version(package, module):
    before = cells.code_version()
    _touch(package / module)
    assert cells.code_version() != before
