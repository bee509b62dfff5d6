"""`ray up` files as Ray reads them: valid against Ray's own schema and what `ray up` checks before it
contacts a machine; every node installing codistill and its pinned torch into a virtual environment;
token auth, mutual TLS and the head's Prometheus kept on; and every fixed port documented."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from codistill.launch.monitor import TARGETS_GLOB

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "cluster").glob("*.yaml"))
IDS = [p.name for p in FILES]
START_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")
PORT_FLAG = re.compile(r"--((?:[a-z]+-)*port)=(\d+)")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def commands(doc: dict, *keys: str) -> list[str]:
    keys = keys or ("setup_commands", "head_setup_commands", "worker_setup_commands", *START_KEYS)
    return [c for k in keys for c in doc.get(k, [])]


def ray_start_args(command: str) -> list[str]:
    """The arguments of the `ray start` in `command`, with the variables the updater sets filled in."""
    text = command.replace("$RAY_HEAD_IP", "10.0.0.10").replace("$HOME", "/home/ubuntu")
    words = shlex.split(text)
    i = next(i for i, w in enumerate(words) if w.endswith("/bin/ray") and words[i + 1 : i + 2] == ["start"])
    return words[i + 2 :]


@pytest.fixture(scope="module")
def schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_there_are_the_on_prem_and_the_aws_files():
    assert {load(p)["provider"]["type"] for p in FILES} == {"local", "aws"}


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_cluster_file_is_valid_for_rays_schema(path, schema):
    jsonschema.validate(load(path), schema)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_cluster_file_passes_what_ray_up_checks_before_contacting_a_machine(path):
    # `ray up` runs these two on the file (commands._bootstrap_config) before the provider's
    # bootstrap, which is the first step that needs machines or a cloud account.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(path)))


BREAKS = {
    "unknown top-level key": lambda d: d.update(worker_count=2),
    "top-level min_workers": lambda d: d.update(min_workers=2),
    "max_workers not a number": lambda d: d.update(max_workers="two"),
    "provider without a type": lambda d: d["provider"].pop("type"),
}


@pytest.mark.parametrize("path", FILES, ids=IDS)
@pytest.mark.parametrize("name", list(BREAKS))
def test_a_broken_copy_fails_rays_schema(path, name, schema):
    doc = copy.deepcopy(load(path))
    BREAKS[name](doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_node_installs_codistill_and_its_pinned_torch_into_a_venv(path):
    doc = load(path)
    # Images that follow PEP 668 refuse a system-wide pip; Ray and codistill come from the venv.
    for command in commands(doc):
        assert "python3 -m pip" not in command and not command.lstrip().startswith(("pip ", "ray ")), command
    assert any("-m venv" in c for c in doc["setup_commands"])
    assert all("venv/bin/ray" in c for c in commands(doc, *START_KEYS) if "ray " in c)
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    setup = " && ".join(doc["setup_commands"])  # setup_commands run on every node, head included
    assert f"pip install -q torch=={torch_pin} --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "cd ~/codistill && ~/codistill-venv/bin/pip install -q -e ." in setup
    assert doc["file_mounts"]["~/codistill"] == "."


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_command_is_valid_shell(path):
    for command in commands(load(path)):
        res = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert res.returncode == 0, f"{command}\n{res.stderr}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_ray_start_is_accepted_by_ray_and_has_token_auth(path):
    from ray.scripts.scripts import start

    starts = [c for c in commands(load(path), *START_KEYS) if "bin/ray start" in c]
    assert len(starts) == 2, starts  # the head's and the workers'
    for command in starts:
        # click rejects an option `ray start` does not have, or a value of the wrong type.
        start.make_context("start", ray_start_args(command))
        assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=$HOME/certs/ray-token" in command, command
        # Ray passes its environment on to a job's entrypoint: `codistill run` is found there.
        assert 'export PATH="$HOME/codistill-venv/bin:$PATH"' in command, command
    head = next(c for c in starts if "--head" in c)
    assert "--dashboard-port=8265" in head and "--include-dashboard=false" not in head  # the job server


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_certificates_and_the_head_prometheus_are_shipped(path):
    doc = load(path)
    assert doc["file_mounts"]["~/certs"] == "cluster/certs"
    assert doc["file_mounts"]["~/prometheus"] == "cluster/prometheus"
    assert "cluster/certs/" in (ROOT / ".gitignore").read_text().splitlines()  # keys never committed or uploaded
    head = " ".join(commands(doc, "head_setup_commands", "head_start_ray_commands"))
    assert "apt-get install -y -qq prometheus" in head
    assert '/usr/bin/prometheus --config.file="$HOME/prometheus/prometheus.yml"' in head
    assert "--web.listen-address=127.0.0.1:9090" in head


def test_head_prometheus_reads_the_targets_the_driver_writes():
    config = yaml.safe_load((ROOT / "cluster" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True
    (files,) = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    # Relative to the config's folder (~/prometheus): the run folder the docs tell runs to use.
    assert (Path("/home/ubuntu/prometheus") / files).resolve() == Path("/home/ubuntu/codistill-runs/current/prometheus") / TARGETS_GLOB


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_fixed_port_is_documented(path):
    doc = (ROOT / "docs" / "cluster.md").read_text()
    ports = {m for c in commands(load(path), *START_KEYS) for m in PORT_FLAG.findall(c)}
    assert ports
    rows = [line for line in doc.splitlines() if line.startswith("|")]
    for flag, port in ports:
        assert any(f"`--{flag}`" in row and re.search(rf"\b{port}\b", row) for row in rows), f"docs/cluster.md has no port-table row for --{flag}={port}"
