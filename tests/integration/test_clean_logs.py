"""A clean run says nothing alarming: no error-level line from Ray or from codistill."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
# Ray's native log lines: "[2026-12-01 13:27:15,863 E 5010 5010] core_worker.cc:...": E is error level.
RAY_ERROR = re.compile(r"^\S*\[\d{4}-\d\d-\d\d [\d:,]+ [EF] \d+ \d+\]")


def test_a_clean_quickstart_run_logs_no_error_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "codistill", "run", str(ROOT / "configs" / "quickstart.yaml"), "--set", "train.steps=60",
         "--set", "monitor.metrics=false", "--out", str(tmp_path / "run"), "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = (res.stdout + res.stderr).splitlines()
    alarming = [line for line in lines if RAY_ERROR.match(line) or re.search(r"\b(ERROR|Traceback)\b", line)]
    assert not alarming, alarming
    # Nor Ray's banners (token auth stays on; its announcement is kept off the screen).
    banners = [line for line in lines if "Token authentication is" in line or "WARNING" in line]
    assert not banners, banners
