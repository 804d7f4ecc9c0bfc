"""Residual blocks: shape inference, projections, errors naming the layer, the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import check_forward
from torch import nn

from dlcli.cli import cli
from dlcli.config import parse_config
from dlcli.errors import ConfigError
from dlcli.model import ResidualBlock, build_model


def model_cfg(layers: list[dict[str, Any]], input_shape: list[int] | None = None) -> Any:
    raw = {
        "data": {"dataset": "mnist"},
        "model": {"input_shape": input_shape or [28, 28, 1], "layers": layers},
    }
    return parse_config(raw).model


CONV = {"type": "conv2d", "kernel_size": 3, "padding": "same"}


def test_same_shape_block_adds_its_input() -> None:
    built = build_model(
        model_cfg(
            [
                {**CONV, "filters": 4},
                {"type": "residual", "layers": [{**CONV, "filters": 4}]},
                {"type": "flatten"},
                {"type": "dense", "units": 10},
            ]
        ),
        num_classes=10,
    )
    check_forward(built)
    block = built.module.residual_1
    assert isinstance(block, ResidualBlock) and isinstance(block.shortcut, nn.Identity)
    info = built.layers[1]
    assert (info.name, info.kind, info.output_shape, info.params) == (
        "residual_1",
        "Residual",
        (4, 28, 28),
        4 * 4 * 9 + 4,
    )
    x = torch.rand(2, 4, 28, 28)
    with torch.no_grad():
        assert torch.allclose(block(x), block.body(x) + x)


def test_a_downsampling_block_gets_a_strided_projection() -> None:
    built = build_model(
        model_cfg(
            [
                {**CONV, "filters": 8},
                {
                    "type": "residual",
                    "activation": "relu",
                    "layers": [
                        {**CONV, "filters": 16, "strides": 2},
                        {"type": "batch_norm"},
                        {"type": "activation", "activation": "relu"},
                        {**CONV, "filters": 16},
                    ],
                },
                {"type": "global_avg_pool2d"},
                {"type": "dense", "units": 10},
            ],
            input_shape=[7, 7, 1],  # 7 → 4 with stride 2 ('same'): the projection's stride 2
        )
    )
    check_forward(built)
    block = built.module.residual_1
    assert isinstance(block.shortcut, nn.Conv2d)
    assert block.shortcut.stride == (2, 2) and block.shortcut.kernel_size == (1, 1)
    info = built.layers[1]
    assert info.output_shape == (16, 4, 4)
    assert [i.name for i in info.inner] == [
        "conv2d_1",
        "batch_norm_1",
        "activation_1",
        "conv2d_2",
        "shortcut",
    ]
    assert info.inner[-1].params == 8 * 16 + 16
    assert info.params == sum(p.numel() for p in block.parameters())
    assert built.total_params == sum(p.numel() for p in built.module.parameters())


def test_flat_blocks_project_with_a_dense_layer_and_nest() -> None:
    built = build_model(
        model_cfg(
            [
                {"type": "flatten"},
                {
                    "type": "residual",
                    "layers": [
                        {"type": "dense", "units": 32, "activation": "relu"},
                        {"type": "residual", "layers": [{"type": "dense", "units": 32}]},
                    ],
                },
                {"type": "dense", "units": 10},
            ]
        )
    )
    check_forward(built)
    block = built.module.residual_1
    assert isinstance(block.shortcut, nn.Linear) and block.shortcut.in_features == 784
    assert built.layers[1].output_shape == (32,)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "flatten"}], "turn its input shape (28, 28, 1) into (784,)"),
        ([{**CONV, "filters": 4, "padding": "valid", "kernel_size": 4}], "no projection"),
        ([], "model.layers[0].layers: a residual block needs at least one layer"),
        (
            [{"type": "dense", "units": 3}],
            "model.layers[0].layers[0]: dense expects a flat input",
        ),
    ],
)
def test_impossible_blocks_are_config_errors_naming_the_layer(
    layers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError, match=r"model.layers\[0\]") as info:
        build_model(model_cfg([{"type": "residual", "layers": layers}]))
    assert message in str(info.value)


def test_summary_lists_the_block_and_its_layers(tmp_path: Path) -> None:
    config = tmp_path / "resnet.yaml"
    layers = [
        {**CONV, "filters": 8},
        {"type": "residual", "layers": [{**CONV, "filters": 16, "strides": 2}]},
        {"type": "global_avg_pool2d"},
        {"type": "dense", "units": 10},
    ]
    config.write_text(yaml.safe_dump({"data": {"dataset": "mnist"}, "model": {"layers": layers}}))
    result = CliRunner().invoke(cli, ["summary", str(config), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    row = doc["layers"][1]
    assert row["name"] == "residual_1" and row["output_shape_hwc"] == [14, 14, 16]
    assert [r["name"] for r in row["layers"]] == ["conv2d_1", "shortcut"]
    result = CliRunner().invoke(cli, ["summary", str(config)])
    assert "residual_1 (Residual)" in result.stdout and "└ shortcut (Projection)" in result.stdout
