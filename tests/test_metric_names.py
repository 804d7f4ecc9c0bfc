"""One metric vocabulary (issue 13.7): val_accuracy, validation.accuracy, test.accuracy, ...
mean the same in --min/--max, monitor and target; unknown names get a did-you-mean, exit 2,
before any training or evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_process import dlcli, document
from click.testing import CliRunner

from dlcli import metric_names
from dlcli.cli import cli
from dlcli.errors import UsageError
from dlcli.gates import Gate, parse_gate
from dlcli.metric_names import MetricName


@pytest.mark.parametrize(
    ("name", "metric", "split"),
    [
        ("accuracy", "accuracy", None),
        ("val_accuracy", "accuracy", "validation"),
        ("validation.accuracy", "accuracy", "validation"),
        ("val.loss", "loss", "validation"),
        ("test.accuracy", "accuracy", "test"),
        ("test_loss", "loss", "test"),
        ("train.top_k_accuracy", "top_k_accuracy", "train"),
    ],
)
def test_every_spelling_parses_to_one_name(name: str, metric: str, split: str | None) -> None:
    parsed = metric_names.parse(name)
    assert parsed == MetricName(metric, split)
    assert parsed.mode == ("min" if metric == "loss" else "max")


def test_history_keys_and_display() -> None:
    assert metric_names.parse("validation.accuracy").history_key == "val_accuracy"
    assert metric_names.parse("test.loss").history_key == "test_loss"
    assert metric_names.parse("accuracy").history_key == "accuracy"
    assert metric_names.parse("val_top_k_accuracy").display == "validation top-k accuracy"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("acc", "'acc' is not a reported metric (did you mean 'accuracy'?)"),
        ("val_acuracy", "(did you mean 'val_accuracy'?)"),
        ("valdation.accuracy", "unknown split 'valdation' (did you mean 'validation'?)"),
        ("test.los", "(did you mean 'loss'?)"),
        ("val_top_k_accuracy", "(add it to training.metrics)"),
    ],
)
def test_unknown_names_get_a_did_you_mean(name: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        metric_names.parse(name, known=["loss", "accuracy"])
    assert fragment in str(info.value)


def test_gates_read_the_same_vocabulary() -> None:
    assert parse_gate("min", "val_accuracy=0.9") == Gate("min", "accuracy", 0.9, "validation")
    assert parse_gate("max", "val.loss=1") == Gate("max", "loss", 1.0, "validation")
    assert parse_gate("min", "test_accuracy=0.5") == Gate("min", "accuracy", 0.5, "test")


def _config(tiny_config: Path, **training: object) -> Path:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["training"].update(training)
    tiny_config.write_text(yaml.safe_dump(raw))
    return tiny_config


def test_monitor_target_and_gates_take_every_spelling_through_the_cli(tiny_config: Path) -> None:
    config = _config(
        tiny_config,
        epochs=2,
        early_stopping={"monitor": "validation.accuracy", "patience": 5},
        checkpoint={"monitor": "val_loss"},
        target={"metric": "test.accuracy", "value": 0.0},
    )
    trained = document(
        dlcli(
            "train",
            str(config),
            "--json",
            "--quiet",
            *("--min", "val_accuracy=0", "--min", "test.accuracy=0"),
            *("--max", "validation.loss=100", "--max", "val.loss=100"),
        )
    )
    splits = [g["split"] for g in trained["gates"]]
    assert splits == ["validation", "test", "validation", "validation"]
    assert trained["target"]["reached"] and trained["target"]["epoch"] == 1
    assert trained["early_stopping"]["best_epoch"] in (1, 2)
    history = (Path(trained["run_dir"]) / "history.csv").read_text().splitlines()[0]
    assert "test_accuracy" in history.split(",")  # the watched test split, every epoch
    evaluated = document(
        dlcli("evaluate", trained["run_dir"], "--json", "--min", "validation.accuracy=0")
    )
    assert evaluated["gates"][0]["split"] == "validation"


def refused(*args: str) -> dict[str, Any]:
    """The --json document of a command refused with exit 2, run in this process (the real
    processes are the test above's)."""
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 2, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_unknown_gate_names_fail_before_training_or_evaluation(
    tiny_config: Path, tiny_run: Path
) -> None:
    error = refused("train", str(tiny_config), "--min", "acc=0.5")["error"]
    assert "unknown metric 'acc' (did you mean 'accuracy'?)" in error["message"]
    assert not (tiny_config.parent / "runs").exists()  # nothing trained, nothing written
    evaluated = refused("evaluate", str(tiny_run), "--min", "valdation.accuracy=0.5")
    assert "unknown split 'valdation' (did you mean 'validation'?)" in evaluated["error"]["message"]
    assert "metrics" not in evaluated  # rejected before any evaluation


def test_an_unknown_monitor_is_a_config_error_with_a_did_you_mean(tiny_config: Path) -> None:
    config = _config(tiny_config, target={"metric": "val_acuracy", "value": 0.5})
    message = refused("config", "validate", str(config))["error"]["message"]
    assert "training.target.metric: 'val_acuracy' is not a reported metric" in message
    assert "(did you mean 'val_accuracy'?)" in message


def test_tags_are_spelt_in_one_place() -> None:
    assert metric_names.tag("accuracy", "validation") == "val_accuracy"
    assert metric_names.tag("loss", "train") == "loss"
    assert metric_names.tagged({"loss": 0.5}, "test") == {"test_loss": 0.5}
    for key in ("val_top_k_accuracy", "test_loss", "accuracy"):
        split, metric = metric_names.untag(key)
        assert metric_names.tag(metric, split) == key
        assert metric_names.parse(key).history_key == key
