"""`ray up` files as Ray reads them: valid against Ray's own schema, installing into a virtual environment."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema():
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_cluster_file_is_valid_for_ray_and_uses_a_virtual_environment(path, schema):
    import jsonschema

    doc = yaml.safe_load(path.read_text())
    jsonschema.validate(doc, schema)
    commands = doc["setup_commands"] + doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
    # Images that follow PEP 668 refuse a system-wide pip; Ray and codistill come from the venv.
    for command in commands:
        assert "python3 -m pip" not in command and not command.lstrip().startswith(("pip ", "ray ")), command
    assert any("-m venv" in c for c in doc["setup_commands"])
    assert all("venv/bin/ray" in c for c in doc["head_start_ray_commands"] + doc["worker_start_ray_commands"] if "ray " in c)
