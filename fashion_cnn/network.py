"""The journal's CNN as a plain ``nn.Module``: a configurable block and the network built from it.

Nothing here imports Lightning, so the network can be built, inspected and tested on its own.

Architecture (the only one consistent with the journal's two regularised parameter counts, see
``docs/network.md``)::

    [Conv2d(k, same padding) -> Norm -> ReLU -> Dropout2d -> MaxPool2d(2)?] x layers
    -> Flatten -> Linear(filters[-1] * H * W, hidden) -> ReLU -> Linear(hidden, num_classes)

With ``skip=True`` each block's output is added to its input (a residual connection, He et al.
2016): an identity when the widths match, else a 1x1 convolution; the pool, if any, follows the
add. Off by default, so the journal's networks and their parameter counts are unchanged.

``filters`` is one width for every block (the journal's networks) or one width per block (e.g.
doubling after each pool, the usual way to spend parameters where the maps are small).

By default a 2x2 max-pool closes every third block (``pool_every=3``): one pool at 4 layers
(28 -> 14) and two at 6 layers (28 -> 14 -> 7). That rule reproduces the journal's counts exactly:
4 layers / 32 filters -> 832,298 parameters, 6 layers / 64 filters -> 588,106.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from torch import nn

NormName = Literal["none", "batch", "instance", "layer", "group"]

# The single table of what each norm name means: name -> builder(channels, groups). NormName, the
# validation and the layer built all read from it (timm's create_norm pattern).
#
# - none: identity.
# - batch: BatchNorm2d, statistics over the batch and space, per channel.
# - instance: InstanceNorm2d with PyTorch's defaults (no affine parameters, no running
#   statistics): each sample and channel normalised over space. The journal's parameter counts
#   only add up with these defaults.
# - layer: GroupNorm(1, channels), each sample normalised over all channels and space, with a
#   per-channel scale and shift. This is what "LayerNorm" means for conv nets (as in ConvNeXt-style
#   code); nn.LayerNorm over (C, H, W) would tie the parameters to the image size.
# - group: GroupNorm(groups, channels), each sample normalised over groups of channels.
NORM_LAYERS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda channels, groups: nn.Identity(),
    "batch": lambda channels, groups: nn.BatchNorm2d(channels),
    "instance": lambda channels, groups: nn.InstanceNorm2d(channels),
    "layer": lambda channels, groups: nn.GroupNorm(1, channels),
    "group": lambda channels, groups: nn.GroupNorm(groups, channels),
}
NORMS: tuple[str, ...] = get_args(NormName)


def make_norm(norm: str, channels: int, groups: int) -> nn.Module:
    """Build the normalisation layer named ``norm`` for ``channels`` feature maps (see
    :data:`NORM_LAYERS` for what each name means)."""
    try:
        build = NORM_LAYERS[norm]
    except KeyError:
        raise ValueError(
            f"norm={norm!r} is not a known normalisation; use one of {', '.join(NORMS)}"
        ) from None
    return build(channels, groups)


class ConvBlock(nn.Sequential):
    """Conv2d (same padding) -> Norm -> ReLU -> Dropout2d -> optional MaxPool2d(2).

    Args:
        in_channels: Channels of the input feature map.
        out_channels: Filters of the convolution.
        kernel_size: Odd kernel size; padding ``kernel_size // 2`` keeps the spatial size.
        norm: Normalisation after the convolution (see :func:`make_norm`).
        dropout: Probability of zeroing a whole channel (``Dropout2d``); 0 disables it.
        pool: Whether the block ends with a 2x2 max-pool that halves height and width.
        groups: Number of groups for ``norm="group"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: NormName = "none",
        dropout: float = 0.0,
        pool: bool = False,
        groups: int = 8,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            make_norm(norm, out_channels, groups),
            nn.ReLU(inplace=True),
        ]
        # Dropout2d before the pool, as in the journal: it drops whole feature maps, which suits
        # convolutions better than element-wise dropout (neighbouring pixels are correlated).
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """A :class:`ConvBlock` (without its pool) whose output is added to its input, then the pool.

    The shortcut is the identity when ``in_channels == out_channels``, else a 1x1 convolution (a
    projection), so the add always sees matching shapes (the convolution keeps the spatial size).

    Args:
        in_channels: Channels of the input feature map.
        out_channels: Filters of the convolution.
        kernel_size: Odd kernel size.
        norm: Normalisation after the convolution.
        dropout: Dropout2d probability.
        pool: Whether a 2x2 max-pool follows the add.
        groups: Number of groups for ``norm="group"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: NormName = "none",
        dropout: float = 0.0,
        pool: bool = False,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.body = ConvBlock(
            in_channels, out_channels, kernel_size, norm, dropout, pool=False, groups=groups
        )
        self.shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )
        self.pool: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``pool(body(x) + shortcut(x))``."""
        return self.pool(self.body(x) + self.shortcut(x))


def pool_positions(layers: int, pool_every: int, pool_after: Sequence[int] | None) -> list[int]:
    """Return the 1-based indices of the blocks that end with a max-pool.

    ``pool_after`` (explicit block indices) wins over ``pool_every`` (a pool after every
    ``pool_every``-th block; 0 means no pooling).
    """
    if pool_after is not None:
        return sorted(set(pool_after))
    if pool_every == 0:
        return []
    return list(range(pool_every, layers + 1, pool_every))


def block_widths(layers: int, filters: int | Sequence[int]) -> list[int]:
    """Return the output channels of each block: ``filters`` repeated, or the per-block list."""
    if isinstance(filters, int):
        return [filters] * layers
    return list(filters)


def check_config(
    *,
    layers: int,
    filters: int | Sequence[int],
    kernel_size: int,
    norm: str,
    dropout: float,
    norm_groups: int,
    pool_every: int,
    pool_after: Sequence[int] | None,
    hidden: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
) -> list[int]:
    """Validate an architecture and return its pool positions.

    Every impossible combination fails here, at construction, with a ``ValueError`` that names the
    argument, the value and what would work, instead of a shape error deep inside a training run.
    """

    def at_least(name: str, value: int, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r} is invalid: use an integer >= {minimum}")

    at_least("layers", layers, 1)
    if isinstance(filters, (str, bytes)) or not isinstance(filters, (int, Sequence)):
        raise ValueError(f"filters={filters!r} is invalid: use an integer >= 1 or a list of them")
    if isinstance(filters, Sequence):
        if len(filters) != layers:
            raise ValueError(
                f"filters={list(filters)} has {len(filters)} widths for layers={layers}: give one "
                f"width per block, or a single integer for a constant width"
            )
        for i, width in enumerate(filters):
            at_least(f"filters[{i}]", width, 1)
    else:
        at_least("filters", filters, 1)
    widths = block_widths(layers, filters)
    at_least("hidden", hidden, 1)
    at_least("num_classes", num_classes, 2)
    at_least("in_channels", in_channels, 1)
    at_least("image_size", image_size, 1)
    at_least("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size={kernel_size} is even: use an odd size (1, 3, 5, ...) so that padding "
            "kernel_size // 2 keeps the feature map's size"
        )
    if kernel_size > image_size:
        raise ValueError(f"kernel_size={kernel_size} is larger than image_size={image_size}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not a known normalisation; use one of {', '.join(NORMS)}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} is outside [0, 1): use e.g. 0.0, 0.1 or 0.5")
    if norm == "group":
        at_least("norm_groups", norm_groups, 1)
        if any(width % norm_groups for width in widths):
            divisors = [d for d in range(1, min(widths) + 1) if all(w % d == 0 for w in widths)]
            raise ValueError(
                f"norm_groups={norm_groups} does not divide filters={filters}: GroupNorm needs the "
                f"channels split evenly; use one of {divisors}"
            )
    at_least("pool_every", pool_every, 0)
    positions = pool_positions(layers, pool_every, pool_after)
    bad = [p for p in positions if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= layers]
    if bad:
        raise ValueError(f"pool_after={list(pool_after or [])} names blocks {bad} outside 1..{layers}")

    # Walk the spatial size through the blocks: each pool needs at least 2x2 to halve, and
    # InstanceNorm needs more than one value per channel (it raises on 1x1 maps in training).
    size = image_size
    for block in range(1, layers + 1):
        if norm == "instance" and size < 2:
            raise ValueError(
                f"block {block} would see a {size}x{size} feature map, but norm='instance' needs "
                f"at least 2x2 (layers={layers}, pool_every={pool_every}, pool_after={pool_after}); "
                "pool less often (larger pool_every or fewer pool_after entries) or use another norm"
            )
        if block in positions:
            if size < 2:
                raise ValueError(
                    f"the pool after block {block} would shrink a {size}x{size} map to nothing "
                    f"(layers={layers}, pool_every={pool_every}, pool_after={pool_after}); pool less "
                    "often"
                )
            size //= 2
    return positions


class FashionCNNNet(nn.Module):
    """The journal's CNN: ``layers`` conv blocks, then a two-layer MLP head.

    Args:
        layers: Number of convolutional blocks.
        filters: Channels of every block (an integer: the journal's constant width), or a list
            with one width per block.
        kernel_size: Odd convolution kernel size.
        norm: Normalisation in each block: none, batch, instance, layer (GroupNorm with one group)
            or group (GroupNorm with ``norm_groups`` groups).
        dropout: Dropout2d probability in each block, in [0, 1).
        norm_groups: Groups for ``norm="group"``; must divide ``filters``.
        pool_every: A 2x2 max-pool closes every ``pool_every``-th block (0: never). The default 3
            reproduces the journal's parameter counts.
        pool_after: Explicit 1-based block indices to pool after; overrides ``pool_every``.
        hidden: Width of the head's hidden linear layer.
        num_classes: Number of output logits.
        in_channels: Channels of the input images.
        image_size: Height and width of the (square) input images.
        skip: Add each block's input to its output (see :class:`ResidualBlock`); off in the
            journal.
    """

    def __init__(
        self,
        layers: int = 4,
        filters: int | Sequence[int] = 32,
        kernel_size: int = 3,
        norm: NormName = "none",
        dropout: float = 0.0,
        norm_groups: int = 8,
        pool_every: int = 3,
        pool_after: Sequence[int] | None = None,
        hidden: int = 128,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        skip: bool = False,
    ) -> None:
        super().__init__()
        # The constructor's arguments, so a checkpoint records how to rebuild this network.
        self.init_args = {
            "layers": layers,
            "filters": filters if isinstance(filters, int) else list(filters),
            "kernel_size": kernel_size,
            "norm": norm,
            "dropout": dropout,
            "norm_groups": norm_groups,
            "pool_every": pool_every,
            "pool_after": None if pool_after is None else list(pool_after),
            "hidden": hidden,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": image_size,
            "skip": skip,
        }
        positions = check_config(
            layers=layers,
            filters=filters,
            kernel_size=kernel_size,
            norm=norm,
            dropout=dropout,
            norm_groups=norm_groups,
            pool_every=pool_every,
            pool_after=pool_after,
            hidden=hidden,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
        )
        self.in_channels = in_channels
        self.image_size = image_size
        widths = block_widths(layers, filters)
        block = ResidualBlock if skip else ConvBlock
        self.features = nn.Sequential(
            *(
                block(
                    channels_in,
                    channels_out,
                    kernel_size,
                    norm,
                    dropout,
                    pool=i in positions,
                    groups=norm_groups,
                )
                for i, (channels_in, channels_out) in enumerate(
                    zip([in_channels, *widths[:-1]], widths, strict=True), start=1
                )
            )
        )
        out_size = image_size // 2 ** len(positions)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * out_size * out_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, H, W) to logits (B, num_classes)."""
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got {tuple(x.shape)}"
            )
        x = self.features(x)  # (B, filters[-1], image_size / 2**pools, same)
        return self.head(x)  # (B, num_classes)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (what the journal reports as 'Total params')."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
