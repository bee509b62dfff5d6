"""Prepare step of the npz example: scikit-learn's bundled digits as an .npz file, as a user's data.

The file holds x_train, y_train, x_test, y_test and class_names; x is flat float32 features
[N, 64] in [0, 1] (not images: any example shape works with the built-in MLP or a user model).

Run from the repository root, then the example:
    python examples/make_digits_npz.py              # writes runs/digits.npz
    codistill run examples/digits_npz.yaml --compare independent
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

TEST_SIZE = 360


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits.npz"), help="where the .npz goes (default runs/digits.npz)")
    args = parser.parse_args()
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
        class_names=np.array([f"digit {d}" for d in range(10)]),
    )
    print(f"wrote {args.out}: {len(train)} train, {len(test)} test, {x.shape[1]} features")


if __name__ == "__main__":
    main()
