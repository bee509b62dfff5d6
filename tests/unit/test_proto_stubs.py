"""The committed stubs must equal a fresh generation from protos/."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "services" / "codistill" / "v1"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is a test dependency")
def test_committed_stubs_are_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True)
    fresh = tmp_path / "codistill" / "v1"
    names = sorted(p.name for p in fresh.glob("*_pb2*.py*"))
    assert names == ["region_pb2.py", "region_pb2.pyi", "region_pb2_grpc.py"]
    for name in names:
        assert (COMMITTED / name).read_bytes() == (fresh / name).read_bytes(), (
            f"{name} is stale: run `python scripts/gen_proto.py` and commit the result"
        )
