"""How each consensus rule holds up when 2 of 10 regions lie.

Usage: python scripts/lying_peers.py [--rules mean,attention,...]

Digits, 10 regions, IID labels, sync exchange over the in-process transport.
Regions 0 and 1 publish confident lies (all mass on the class they find least
likely); the table gives the honest regions' mean test accuracy without and
with the attack. tests/unit/test_lying_peers.py asserts the same setup.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from codistill import config
from codistill.consensus import Rule
from codistill.launch import driver

LIARS = [0, 1]
RULES = [rule.value for rule in Rule]


def lying_config(rule: str, liars: list[int]) -> config.RunConfig:
    return config.from_dict(
        {
            "name": f"liars-{rule}",
            "data": {"dataset": "digits", "transfer_size": 400, "test_size": 360, "partition": {"kind": "iid"}},
            "regions": {"count": 10, "hidden": [64]},
            "train": {"steps": 200, "batch_size": 32, "eval_every": 50},
            "distill": {"burn_in": 10, "weight": 2.0},
            "consensus": {"rule": rule},
            "exchange": {"transport": "inprocess", "publish_interval": 10},
            "chaos": {"liars": liars},
        }
    )


def honest_accuracy(rule: str, liars: list[int], out: Path) -> float:
    doc = driver.run(lying_config(rule, liars), out / f"{rule}-{len(liars)}")
    return float(np.mean([r["test_accuracy"] for r in doc["regions"] if r["id"] not in LIARS]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=",".join(RULES))
    args = parser.parse_args()
    print("| rule | honest accuracy, no attack | with 2 liars | drop (points) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.rules.split(","):
            clean, attacked = honest_accuracy(rule, [], Path(tmp)), honest_accuracy(rule, LIARS, Path(tmp))
            print(f"| {rule} | {clean:.3f} | {attacked:.3f} | {100 * (clean - attacked):.1f} |", flush=True)


if __name__ == "__main__":
    main()
