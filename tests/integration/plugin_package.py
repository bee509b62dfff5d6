"""A user's plugin package, written into a folder outside the repository by the tests that need one."""

from pathlib import Path
from textwrap import dedent

NETS = '''
import os

import torch
from torch import nn


class Wide(nn.Module):
    """Unlike the built-in MLP: one wide tanh layer beside a linear skip."""

    def __init__(self, features, num_classes, width):
        super().__init__()
        self.hidden = nn.Linear(features, width)
        self.out = nn.Linear(width, num_classes)
        self.skip = nn.Linear(features, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(torch.tanh(self.hidden(x))) + self.skip(x)


def features_of(input_shape):
    n = 1
    for d in input_shape:
        n *= d
    return n


def wide(input_shape, num_classes, width=64):
    builds = os.environ.get("MYPLUG_BUILDS")
    if builds:  # which processes built this model, and with what: the tests read it
        with open(builds, "a") as fh:
            fh.write(f"{os.getpid()} {list(input_shape)} {num_classes} {width}\\n")
    return Wide(features_of(input_shape), num_classes, width)


def not_a_module(input_shape, num_classes, **kwargs):
    return "a string"


def one_class_too_many(input_shape, num_classes, **kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(features_of(input_shape), num_classes + 1))


def fails(input_shape, num_classes, **kwargs):
    raise RuntimeError("no weights for this shape")
'''

DATA = '''
import numpy as np
import torch

import codistill


def _blobs(n, classes, dims, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (classes, dims))
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(0.0, 1.5, (n, dims))
    return x, y


def blobs(n=1500, classes=4, dims=16, test=300, seed=0):
    """Gaussian classes as float64 torch tensors, which the Dataset turns into float32 arrays."""
    x, y = _blobs(n, classes, dims, seed)
    x, y = torch.tensor(x), torch.tensor(y)
    return codistill.Dataset(x[test:], y[test:], x[:test], y[:test], [f"blob{i}" for i in range(classes)], name="blobs")


def label_out_of_range():
    x, y = _blobs(400, 4, 16, 0)
    y[150] = 4  # a training label
    return codistill.Dataset(x[100:], y[100:], x[:100], y[:100], ["a", "b", "c", "d"])


def lengths_differ():
    x, y = _blobs(400, 4, 16, 0)
    return codistill.Dataset(x[100:], y[101:], x[:100], y[:100])


def not_a_dataset():
    return _blobs(400, 4, 16, 0)
'''


def write_plugin_package(root: Path, name: str = "myplug") -> Path:
    """`root/name` with `nets` (model factories) and `data` (loaders); returns root, the folder to put on the path."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(dedent(NETS))
    (package / "data.py").write_text(dedent(DATA))
    return root
