"""Mutual TLS set up as a user would: the error for missing certificates names a command that works."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
pytestmark = pytest.mark.integration


def codistill(*args, cwd):
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_too_few_certificates_name_the_missing_file_and_a_command_that_works(tmp_path):
    certs = tmp_path / "certs"
    assert codistill("certs", str(certs), "--regions", "4", cwd=tmp_path).returncode == 0
    res = codistill("run", QUICKSTART, "--set", f"security.tls_dir={certs}", "--out", str(tmp_path / "run"), cwd=tmp_path)
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, lines
    assert f"{certs / 'region-4.pem'} is missing" in lines[0]  # quickstart has 6 regions: 4 and 5 lack files
    command = re.search(r"`codistill (certs [^`]+)`", lines[0]).group(1).split()
    fixed = codistill(*command, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert all((certs / f"region-{i}.pem").is_file() for i in range(6))
