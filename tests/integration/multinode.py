"""A real multi-node Ray cluster on this machine: a head and worker nodes as separate raylets.

`ray.cluster_utils.Cluster` starts each node's own raylet, object store and
workers, all on 127.0.0.1; runs join it with `codistill run --address`, as
they would a cluster of machines. Each node carries a custom resource naming
it (`node_<k>`), so a test can tell nodes apart and pin regions to them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every node on loopback

from ray.cluster_utils import Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LoopbackCluster:
    cluster: Cluster
    workers: list  # the worker nodes' handles, for remove_node

    @property
    def address(self) -> str:
        return self.cluster.address

    def node_ids(self) -> dict[str, str]:
        """Node id -> the node_<k> resource naming it (head: node_0)."""
        out = {}
        for k, node in enumerate([self.cluster.head_node, *self.workers]):
            out[node.node_id] = f"node_{k}"
        return out


@contextmanager
def loopback_cluster(workers: int = 2, worker_cpus: int = 2, head_cpus: int = 0, system_config: dict | None = None) -> Iterator[LoopbackCluster]:
    """A head (no CPUs for regions by default: they go to the workers) and `workers` worker nodes."""
    head = {"num_cpus": head_cpus, "resources": {"node_0": 1}, "include_dashboard": False}
    if system_config:
        head["_system_config"] = system_config
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    try:
        handles = [cluster.add_node(num_cpus=worker_cpus, resources={f"node_{k + 1}": 1}) for k in range(workers)]
        cluster.wait_for_nodes()
        yield LoopbackCluster(cluster, handles)
    finally:
        cluster.shutdown()


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (a raylet's workers are its children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def kill_node(node) -> list[int]:
    """SIGKILL a node as a power cut would: its raylet and every worker under it, at once."""
    raylet = node.all_processes["raylet"][0].process.pid
    pids = process_tree(raylet)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def codistill(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codistill", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_codistill(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "codistill", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())
