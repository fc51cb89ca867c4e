"""A network of the user's own, outside the package (docs/extending.md; tests/test_extending.py)."""

from torch import nn


class TinyResNet(nn.Module):
    """Two residual conv stages and a linear head; num_classes and in_channels come from the data."""

    def __init__(self, width: int = 8, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.block(x))


class WrongWidth(nn.Module):
    """Returns 3 logits whatever the data has: the CLI refuses it before any training."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))

    def forward(self, x):
        return self.head(x)
