"""The small texts a person reads: a run's config.yaml (block style, the schema's order, the
docs as comments), init's aligned comments, --help summaries that are not cut, "1 epoch"."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from dlcli.cli import cli
from dlcli.config import COMMENT_COLUMN, load_config, parse_config
from dlcli.config_tools import commented_yaml, starter_config
from dlcli.data.registry import REGISTRY


def _comment_columns(text: str) -> set[int]:
    """The column of each trailing comment, for lines whose text fits before the column."""
    columns = set()
    for line in text.splitlines():
        body, sep, _ = line.partition(" # ")
        if sep and not line.startswith("#") and len(body.rstrip()) < COMMENT_COLUMN - 2:
            columns.add(line.index("# "))
    return columns


@pytest.mark.parametrize("template", ["mlp", "cnn"])
@pytest.mark.parametrize("dataset", list(REGISTRY))
def test_init_comments_are_aligned(template: str, dataset: str) -> None:
    text = starter_config("some/dir/my config.yaml", template=template, dataset=dataset)
    assert _comment_columns(text) == {COMMENT_COLUMN}
    for line in text.splitlines():  # longer lines keep two spaces before their comment
        if " # " in line and not line.startswith("#"):
            assert "  # " in line, line
    assert yaml.safe_load(text)["output"]["dir"] == "runs/my config"


def test_a_runs_config_yaml_is_block_style_with_the_docs(tiny_run: Path) -> None:
    text = (tiny_run / "config.yaml").read_text(encoding="utf-8")
    assert "{" not in text  # no flow mappings: one key a line
    assert text.startswith("# The resolved config of this run")
    layers = r"\n    - type: flatten\n    - type: dense\n      units: 16 +# output features"
    assert re.search(layers, text)
    assert re.search(r"\n  epochs: 3 +# passes over the training set\n", text)
    loaded = yaml.safe_load(text)
    assert list(loaded) == ["data", "model", "training", "output", "tune"]
    assert list(loaded["training"])[:3] == ["optimizer", "loss", "metrics"]  # the schema's order
    config = parse_config(loaded)
    assert commented_yaml(config).splitlines() == text.splitlines()[1:]  # as config show prints
    assert _comment_columns(text) == {COMMENT_COLUMN}


def _groups(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _groups(command, (*path, name))
    return found


@pytest.mark.parametrize("path", _groups(cli), ids=lambda p: " ".join(p) or "dlcli")
@pytest.mark.parametrize("width", [80, 120])
def test_help_summaries_are_whole_sentences(path: tuple[str, ...], width: int) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=width)
    assert result.exit_code == 0
    commands = result.output.split("Commands:\n", 1)[1]
    for line in commands.splitlines():
        assert line.rstrip().endswith("."), line  # not cut with "..."
        assert not line.rstrip().endswith("..."), line


def test_one_epoch_is_one_epoch(tiny_config: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tiny_config), "--set", "training.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "Final metrics (1 epoch, fit" in result.output


def test_config_validate_counts_in_words() -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "fashion-mnist-mlp.yaml"
    result = CliRunner().invoke(cli, ["config", "validate", str(config)])
    assert "valid (4 layers, 266,610 parameters, 10 classes)" in result.output
    assert load_config(config).training.epochs == 10
