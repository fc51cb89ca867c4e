"""The plain network: shapes, gradients, parameter counts and construction errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fashion_cnn.network import ConvBlock, FashionCNNNet, count_parameters


@pytest.mark.parametrize("norm", ["none", "batch", "instance", "layer", "group"])
@pytest.mark.parametrize("layers", [1, 2, 4, 6, 8])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_every_variant_trains(layers: int, norm: str, dropout: float) -> None:
    torch.manual_seed(0)
    net = FashionCNNNet(layers=layers, filters=8, norm=norm, dropout=dropout, hidden=16)
    net.train()
    x = torch.randn(4, 1, 28, 28)
    logits = net(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize(
    ("layers", "filters", "expected"),
    [(4, 32, 832_298), (6, 64, 588_106)],
)
@pytest.mark.parametrize("norm", ["instance", "none"])
def test_journal_parameter_counts(layers: int, filters: int, expected: int, norm: str) -> None:
    # InstanceNorm2d with PyTorch's defaults has no parameters, so the count is the same with or
    # without it: the journal's regularised counts are reproduced exactly.
    net = FashionCNNNet(layers=layers, filters=filters, kernel_size=3, norm=norm, dropout=0.1)
    assert count_parameters(net) == expected


def test_parameter_count_by_hand() -> None:
    # 4 layers / 32 filters: 320 + 3 * 9,248 + Linear(32*14*14, 128) + Linear(128, 10).
    net = FashionCNNNet(layers=4, filters=32)
    assert count_parameters(net) == 320 + 3 * 9_248 + (32 * 14 * 14 * 128 + 128) + 1_290


def test_default_pooling_rule() -> None:
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in FashionCNNNet(layers=4).modules()) == 1
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in FashionCNNNet(layers=6).modules()) == 2
    net = FashionCNNNet(layers=3, filters=4, pool_after=[1, 2])
    assert net.features(torch.zeros(1, 1, 28, 28)).shape == (1, 4, 7, 7)


def test_block_order() -> None:
    block = ConvBlock(1, 8, 3, norm="batch", dropout=0.1, pool=True)
    kinds = [type(m).__name__ for m in block]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout2d", "MaxPool2d"]
    assert block(torch.zeros(2, 1, 28, 28)).shape == (2, 8, 14, 14)


def test_layer_and_group_norm_definitions() -> None:
    layer = ConvBlock(1, 8, norm="layer")[1]
    group = ConvBlock(1, 8, norm="group", groups=4)[1]
    assert isinstance(layer, torch.nn.GroupNorm) and layer.num_groups == 1
    assert isinstance(group, torch.nn.GroupNorm) and group.num_groups == 4
    # "layer" normalises each sample over channels and space together.
    x = torch.randn(3, 8, 5, 5) * 7 + 3
    y = layer(x)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"layers": 0}, ["layers=0", ">= 1"]),
        ({"filters": -1}, ["filters=-1", ">= 1"]),
        ({"dropout": 1.5}, ["dropout=1.5", "[0, 1)"]),
        ({"dropout": -0.1}, ["dropout=-0.1"]),
        ({"dropout": 1.0}, ["dropout=1.0"]),
        ({"norm": "weight"}, ["norm='weight'", "instance"]),
        (
            {"norm": "group", "filters": 12, "norm_groups": 8},
            ["norm_groups=8", "filters=12", "[1, 2, 3, 4, 6, 12]"],
        ),
        ({"kernel_size": 4}, ["kernel_size=4", "odd"]),
        ({"layers": 13, "norm": "instance"}, ["norm='instance'", "1x1", "pool"]),
        ({"layers": 6, "pool_every": 1}, ["pool after block 5", "1x1"]),
        ({"layers": 2, "pool_after": [3]}, ["pool_after=[3]", "1..2"]),
        ({"hidden": 0}, ["hidden=0"]),
        ({"layers": 3, "filters": [8, 16]}, ["filters=[8, 16]", "2 widths", "layers=3"]),
        ({"layers": 2, "filters": [8, 0]}, ["filters[1]=0", ">= 1"]),
        ({"layers": 2, "filters": "32"}, ["filters='32'"]),
        (
            {"layers": 2, "filters": [8, 12], "norm": "group", "norm_groups": 8},
            ["norm_groups=8", "filters=[8, 12]", "[1, 2, 4]"],
        ),
    ],
)
def test_invalid_settings_name_the_argument(kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        FashionCNNNet(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_per_block_widths() -> None:
    net = FashionCNNNet(layers=3, filters=[4, 8, 16], pool_after=[1, 3], hidden=10, norm="batch")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 8), (8, 16)]
    # Convs + BatchNorm (2 per channel) + head from 16 x 7 x 7 features.
    convs_n = (1 * 9 + 1) * 4 + (4 * 9 + 1) * 8 + (8 * 9 + 1) * 16
    norms_n = 2 * (4 + 8 + 16)
    head_n = (16 * 7 * 7 + 1) * 10 + (10 + 1) * 10
    assert count_parameters(net) == convs_n + norms_n + head_n
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # A list of equal widths is the same network as the integer.
    assert count_parameters(FashionCNNNet(filters=[32] * 4)) == count_parameters(FashionCNNNet()) == 832_298


def test_instance_norm_limit_is_exact() -> None:
    # 9 layers pool 3 times: 28 -> 14 -> 7 -> 3 after block 9; the last map InstanceNorm sees is 7x7.
    FashionCNNNet(layers=9, filters=4, norm="instance").train()(torch.randn(2, 1, 28, 28))
    # 12 layers: block 10-12 see 3x3, then pool to 1x1 after block 12: allowed, nothing follows.
    FashionCNNNet(layers=12, filters=4, norm="batch").train()(torch.randn(2, 1, 28, 28))
    # pool_every=1: 28 14 7 3 1 -> the fifth block sees 1x1 and InstanceNorm would crash.
    with pytest.raises(ValueError, match="1x1"):
        FashionCNNNet(layers=5, filters=4, norm="instance", pool_every=1)


def test_wrong_input_shape_is_explained() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        FashionCNNNet()(torch.zeros(2, 3, 28, 28))


def test_network_needs_no_lightning() -> None:
    code = "import sys, fashion_cnn; fashion_cnn.FashionCNNNet(); assert 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
