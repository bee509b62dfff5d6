"""The classifiers a region can run: a built-in MLP or CNN, or a user's factory.

Every model maps inputs [B, *input_shape] to logits [B, C], so regions with
different architectures can co-distil: only predictions cross the wire.
"""

from __future__ import annotations

import torch
from torch import nn

from codistill import plugins
from codistill.config import is_import_path


class MLP(nn.Module):
    """Flattens any input shape, then hidden ReLU layers."""

    def __init__(self, in_features: int, num_classes: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two conv blocks and a small head for images [C, H, W]; adaptive pooling fits 8x8 and 28x28 inputs."""

    def __init__(self, num_classes: int, channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(32 * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    arch: str, input_shape: tuple[int, ...], num_classes: int, hidden: list[int], model_args: dict | None = None
) -> nn.Module:
    """A region's model: `mlp`, `cnn`, or `package.module:factory`, called as
    factory(input_shape, num_classes, **model_args) (see codistill.plugins)."""
    if arch == "mlp":
        in_features = 1
        for d in input_shape:
            in_features *= d
        return MLP(in_features, num_classes, hidden)
    if arch == "cnn":
        return CNN(num_classes, channels=input_shape[0])
    if is_import_path(arch):
        factory = plugins.resolve(arch, "regions.model")
        return factory(tuple(input_shape), num_classes, **(model_args or {}))
    raise ValueError(f"unknown architecture '{arch}' (expected mlp, cnn or an import path 'package.module:factory')")


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
