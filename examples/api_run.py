"""Co-distillation from Python, no YAML: codistill.run with model factories and a dataset loader.

Four regions on scikit-learn's digits: two small ResNets (examples/nets.py) and two built-in
MLPs, with label skew, co-distilled and, on the same split, trained alone. Through Ray and gRPC.

Run from anywhere:
    python examples/api_run.py                          # results in runs/api-example/
    python examples/api_run.py --set train.steps=60 --transport inprocess --out /tmp/api
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits

import codistill
from nets import resnet8  # a module beside this script (not __main__), so Ray's workers import it too

CONFIG = {
    "name": "api-example",
    "data": {"transfer_size": 500, "partition": {"kind": "dirichlet", "alpha": 0.3}},
    "regions": {"count": 4, "hidden": [128, 128], "model_args": {"width": 8}, "num_cpus": 0.5},
    "train": {"steps": 300, "batch_size": 32, "eval_every": 50},
    "distill": {"temperature": 3.0, "weight": 2.0, "burn_in": 50},
    "exchange": {"publish_interval": 25},
}


def digits() -> codistill.Dataset:
    """A dataset loader: images [N, 1, 8, 8] in [0, 1], 360 held out for testing."""
    bunch = load_digits()
    x = (bunch.images[:, None] / 16.0).astype(np.float32)
    y = bunch.target
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:360], order[360:]
    return codistill.Dataset(x[train], y[train], x[test], y[test], [str(d) for d in range(10)], name="digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/api-example", help="run folder (default runs/api-example)")
    parser.add_argument("--transport", choices=["grpc", "inprocess"], default=None, help="default: Ray + gRPC")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as codistill run --set")
    args = parser.parse_args()

    result = codistill.run(
        CONFIG,
        model=[resnet8, "mlp", resnet8, "mlp"],  # one per region: any mix of factories and built-ins
        dataset=digits,
        out=args.out,
        transport=args.transport,
        compare=["independent"],
        overrides=args.overrides,
        force=True,
    )
    alone = result.compare["independent"]
    for mine, other in zip(result.regions, alone.regions):
        print(f"region {mine.id} {mine.arch:<14} codistill {mine.test_accuracy:.3f}  independent {other.test_accuracy:.3f}")
    print(f"mean test accuracy: codistill {result.mean_test_accuracy:.3f}, independent {alone.mean_test_accuracy:.3f}")
    print(f"bytes sent: {result.bytes_sent}; wall time: {result.wall_seconds:.1f} s; results: {result.out / 'results.json'}")


if __name__ == "__main__":
    main()
