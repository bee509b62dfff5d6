"""Keep a local Ray on 127.0.0.1.

By default Ray advertises the machine's network address even for a
single-node run, so its own processes talk over that interface. Ray reads
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine mode) when it is
imported; this sets it, and the constant it feeds if Ray was imported already,
so that a local run sends every byte over loopback. Not used when joining a
cluster.
"""

from __future__ import annotations

import os
import sys

_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback() -> None:
    os.environ.setdefault(_ENV, "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ[_ENV] == "0" and "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
