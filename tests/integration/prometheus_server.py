"""A real Prometheus server for integration tests, reading a run's file_sd targets, and its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from codistill.launch.monitor import TARGETS_GLOB, write_prometheus_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@contextmanager
def running_prometheus(folder: Path, run_dir: Path) -> Iterator[str]:
    """Prometheus on 127.0.0.1 scraping every second what `run_dir`'s targets files list; yields its base URL.

    The config is checked with promtool first, so a config the project writes that Prometheus would refuse
    fails here by name rather than as a server that never becomes ready."""
    config = write_prometheus_config(folder / "prom", run_dir / "prometheus" / TARGETS_GLOB, interval="1s")
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 30, "prometheus ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
