"""The compose files as docker-compose reads them, and the Prometheus config as promtool does.

Nothing is started: `docker-compose config` resolves deploy/docker-compose.yml (anchors,
defaults, paths) and the checks read what it prints. The binaries are Debian's
(docker-compose 1.29, promtool); the test installs them with apt when they are missing.
tests/integration/test_compose.py starts the stack itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "docker-compose.yml"
TEST_OVERRIDE = DEPLOY / "docker-compose.test.yml"
STACK_SCRIPT = ROOT / "scripts" / "docker" / "stack.py"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "codistill.json"

CODISTILL_SERVICES = {"init": "init", "ray-head": "head", "ray-worker": "worker", "codistill": "job"}  # service -> stack.py role
DEFAULT_IMAGES = {"prometheus": "prom/prometheus:v2.53.0", "grafana": "grafana/grafana:11.1.0"}
# Variables the compose file reads; cleared so the defaults are what is checked.
SETTINGS_PREFIXES = ("CODISTILL_", "RAY_", "STACK_", "PROMETHEUS_", "GRAFANA_", "COMPOSE_")


def need(tool: str, package: str) -> str:
    """The tool's path, installing its Debian package when it is missing (as root, as CI runs)."""
    if shutil.which(tool) is None:
        if os.geteuid() != 0:
            pytest.skip(f"needs {tool} (apt-get install {package}; CI installs it as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env, check=True, capture_output=True, timeout=600)
    path = shutil.which(tool)
    assert path, f"{tool} still missing after installing {package}"
    return path


def compose_config(*files: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    args = [need("docker-compose", "docker-compose"), "-p", "codistill", *(a for f in files for a in ("-f", str(f))), "config"]
    res = subprocess.run(args, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return yaml.safe_load(res.stdout)


@pytest.fixture(scope="module")
def stack() -> dict:
    return compose_config(BASE)


def published(port) -> tuple[str, str]:
    """(host address, container port) of one `ports` entry, in 1.29's short form or v2's long form."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), str(port["target"])
    host_ip, _, rest = str(port).rpartition(":")
    return host_ip.rpartition(":")[0] if host_ip.count(":") else "", rest.split("/")[0]


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        source, target = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
        if source.startswith("/"):
            out[target] = Path(source)
    return out


def test_every_service_has_its_image_or_build_and_command(stack):
    services = stack["services"]
    assert set(services) == {*CODISTILL_SERVICES, *DEFAULT_IMAGES}
    for name, role in CODISTILL_SERVICES.items():
        s = services[name]
        assert s["image"] == "codistill:local", name
        assert s["build"]["dockerfile"] == "deploy/Dockerfile" and Path(s["build"]["context"]) == ROOT, s["build"]
        assert s["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"
        assert s["command"] == ["python3", "scripts/docker/stack.py", role], s["command"]
    for name, image in DEFAULT_IMAGES.items():
        assert services[name]["image"] == image and "build" not in services[name], name
    prometheus = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus
    assert mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"


def test_the_roles_the_services_run_are_the_stack_scripts_own():
    res = subprocess.run(["python3", str(STACK_SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    roles = res.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert set(CODISTILL_SERVICES.values()) <= set(roles), roles


def test_images_are_overridable_for_a_mirror():
    mirror = compose_config(
        BASE, CODISTILL_IMAGE="mirror.local/codistill:1", CODISTILL_BASE_IMAGE="mirror.local/python:3.11-slim",
        PROMETHEUS_IMAGE="mirror.local/prometheus:2", GRAFANA_IMAGE="mirror.local/grafana:11",
    )["services"]
    assert {n: s["image"] for n, s in mirror.items()} == {
        **dict.fromkeys(CODISTILL_SERVICES, "mirror.local/codistill:1"),
        "prometheus": "mirror.local/prometheus:2", "grafana": "mirror.local/grafana:11",
    }
    assert {s["build"]["args"]["BASE_IMAGE"] for n, s in mirror.items() if n in CODISTILL_SERVICES} == {"mirror.local/python:3.11-slim"}


def test_every_published_port_is_bound_to_loopback(stack):
    ports = {name: [published(p) for p in s.get("ports", [])] for name, s in stack["services"].items()}
    assert ports["grafana"] == [("127.0.0.1", "3000")] and ports["prometheus"] == [("127.0.0.1", "9090")]
    assert ports["ray-head"] == [("127.0.0.1", "8265")]  # the Ray dashboard and job API
    assert all(host == "127.0.0.1" for entries in ports.values() for host, _ in entries), ports


def test_workers_scale_and_every_node_waits_for_the_secrets(stack):
    services = stack["services"]
    worker = services["ray-worker"]
    assert "container_name" not in worker and not worker.get("ports"), worker  # --scale ray-worker=N
    for name in ("ray-head", "ray-worker", "codistill"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully", name
        assert "secrets:/secrets:ro" in services[name]["volumes"], name
    assert "runs:/runs:ro" in services["prometheus"]["volumes"]  # the run's file_sd targets
    assert {"runs:/runs:rw", "runs:/runs"} & set(services["ray-head"]["volumes"])  # where the job's driver writes
    assert services["codistill"]["environment"]["CODISTILL_CONFIG"] == "configs/quickstart.yaml"


def test_grafana_is_anonymous_read_only_with_the_dashboard_as_home(stack):
    grafana = stack["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    files = mounts(grafana)
    for target, source in files.items():
        assert source.exists(), f"grafana mounts {source} at {target}: missing"
    home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (files[str(home.parent)] / home.name).is_file(), (home, files)


def test_every_provisioning_file_grafana_mounts_parses_and_fits_together(stack):
    services = stack["services"]
    files = mounts(services["grafana"])
    provisioning = {t: yaml.safe_load(p.read_text()) for t, p in files.items() if t.startswith("/etc/grafana/provisioning/")}
    assert set(provisioning) == {"/etc/grafana/provisioning/datasources/prometheus.yml", "/etc/grafana/provisioning/dashboards/codistill.yml"}
    (datasource,) = provisioning["/etc/grafana/provisioning/datasources/prometheus.yml"]["datasources"]
    url = urllib.parse.urlsplit(datasource["url"])
    listen = next(a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    assert url.hostname == "prometheus" and f":{url.port}" == listen.split("=", 1)[1], (datasource["url"], listen)
    (provider,) = provisioning["/etc/grafana/provisioning/dashboards/codistill.yml"]["providers"]
    dashboards = files[provider["options"]["path"]]
    docs = [json.loads(p.read_text()) for p in sorted(dashboards.glob("*.json"))]
    assert [d["uid"] for d in docs] == ["codistill"]
    # Every panel and variable reads the provisioned datasource.
    used = {json.dumps(x["datasource"], sort_keys=True) for x in _with_datasource(docs[0])}
    assert used == {json.dumps({"type": "prometheus", "uid": datasource["uid"]}, sort_keys=True)}, used


def _with_datasource(doc: dict) -> list[dict]:
    out = [v for v in doc["templating"]["list"] if v.get("datasource")]
    stack = list(doc["panels"])
    while stack:
        p = stack.pop()
        out.extend(x for x in [p, *p.get("targets", [])] if x.get("datasource"))
        stack.extend(p.get("panels", []))
    return out


def test_the_test_override_keeps_everything_on_loopback():
    services = compose_config(BASE, TEST_OVERRIDE)["services"]
    assert services["init"]["network_mode"] == "none"
    assert all(s["network_mode"] == "host" for n, s in services.items() if n != "init"), {n: s.get("network_mode") for n, s in services.items()}
    nodes = {n: s["environment"]["RAY_NODE_IP"] for n, s in services.items() if "RAY_NODE_IP" in s.get("environment", {})}
    assert set(nodes) == {"ray-head", "ray-worker", "ray-worker-2"}
    assert len(set(nodes.values())) == 3, nodes  # every node its own address
    ips = [ipaddress.ip_address(ip) for ip in nodes.values()]
    assert all(ip in ipaddress.ip_network("127.0.0.0/8") and str(ip) != "127.0.0.1" for ip in ips), nodes
    listen = next(a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    assert ipaddress.ip_address(listen.split("=", 1)[1].rsplit(":", 1)[0]).is_loopback, listen
    assert services["ray-head"]["environment"]["RAY_DASHBOARD_HOST"] == nodes["ray-head"]


def test_promtool_accepts_the_compose_prometheus_config():
    promtool = need("promtool", "prometheus")
    res = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
