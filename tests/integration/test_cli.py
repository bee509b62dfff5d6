"""The `codistill` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def codistill(*args, cwd):
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.stepz=5", "unknown config key 'train.stepz'"),
        ("data.partition.alpha=0", "data.partition.alpha"),
        ("regions.count=5000", "regions.count=5000 exceeds"),
        ("consensus.rule=vote", "consensus.rule"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_starts_nothing(tmp_path, override, needle):
    out = tmp_path / "out"
    res = codistill("run", str(ROOT / "configs" / "quickstart.yaml"), "--set", override, "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not out.exists()
    assert "Started a local Ray" not in res.stderr


def test_existing_output_folder_is_not_clobbered(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    res = codistill("run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2 and "--force" in res.stdout
    assert (out / "results.json").read_text() == "{}"


def test_run_with_compare_writes_results(tmp_path):
    out = tmp_path / "out"
    res = codistill(
        "run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--compare", "independent",
        "--set", "train.steps=60", "--set", "regions.count=3", "--set", "exchange.transport=inprocess",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["strategy"] == "codistill" and set(doc["compare"]) == {"codistill", "independent"}
    assert "ensemble" in res.stdout and "independent" in res.stdout
    assert (out / "metrics.jsonl").stat().st_size > 0 and (out / "config.yaml").exists()


def test_local_ray_run_stays_on_loopback(tmp_path):
    out = tmp_path / "out"
    res = codistill(
        "run", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(out), "--quiet",
        "--set", "train.steps=40", "--set", "regions.count=3", "--set", "exchange.publish_interval=20",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ray_line = [line for line in res.stdout.splitlines() if "local Ray at" in line]
    assert ray_line and "127.0.0.1:" in ray_line[0], res.stdout
    endpoints = [line for line in res.stdout.splitlines() if line.startswith("metrics:")]
    addresses = [a.split("=")[1].rstrip(";") for a in endpoints[0].replace(",", " ").split() if "=" in a]
    assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), endpoints
    doc = json.loads((out / "results.json").read_text())
    assert doc["transport"] == "grpc" and doc["bytes_sent"] > 0
