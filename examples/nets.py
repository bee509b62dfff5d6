"""User models for the examples: a small ResNet, built by a codistill model factory.

A factory is called as factory(input_shape, num_classes, **regions.model_args) and returns a
torch.nn.Module mapping [B, *input_shape] to logits [B, num_classes]. Name it in a config as
`regions.model: "examples.nets:resnet8"` (run from the repository root), or pass the function
itself to codistill.run(model=...).
"""

from __future__ import annotations

from torch import nn


class Block(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        same = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if same else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet8(nn.Module):
    """A stem and three residual blocks (width, 2x width, 4x width), global pooling, a linear head."""

    def __init__(self, channels: int, num_classes: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def resnet8(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """A ResNet-8 for images [C, H, W] of any size (8x8 digits, 28x28 Fashion-MNIST)."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet8 takes images [C, H, W], not examples of shape {list(input_shape)}")
    return ResNet8(input_shape[0], num_classes, width)
