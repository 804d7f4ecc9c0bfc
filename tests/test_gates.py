"""Quality gates: --min / --max on train and evaluate (dlcli.gates and through the CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dlcli.cli import cli
from dlcli.errors import GateError, UsageError
from dlcli.gates import (
    Gate,
    GateResult,
    check_gates,
    default_split,
    parse_gate,
    parse_gates,
    resolve_gates,
)

AVAILABLE = {s: ["accuracy", "loss"] for s in ("train", "validation", "test")}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --- parsing ------------------------------------------------------------------------------------


def test_parse_plain_and_qualified_names() -> None:
    assert parse_gates(["accuracy=0.88"], ["test.loss=0.4"]) == [
        Gate("min", "accuracy", 0.88),
        Gate("max", "loss", 0.4, "test"),
    ]
    assert parse_gate("min", " top_k_accuracy = 1e-1 ") == Gate("min", "top_k_accuracy", 0.1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy", "--min 'accuracy': expected METRIC=VALUE or SPLIT.METRIC=VALUE"),
        ("=0.9", "--min '=0.9': expected METRIC=VALUE or SPLIT.METRIC=VALUE"),
        ("accuracy=", "--min 'accuracy=': expected METRIC=VALUE"),
        ("accuracy=high", "--min 'accuracy=high': expected a number after '=', found 'high'"),
        ("accuracy=nan", "--min 'accuracy=nan': the bound is not a number (nan)"),
    ],
)
def test_bad_syntax_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_gate("min", text)
    assert str(info.value).startswith(message)


# --- resolving names ------------------------------------------------------------------------------


def test_unqualified_names_apply_to_the_default_split() -> None:
    gates = parse_gates(["accuracy=0.5", "test.accuracy=0.4"])
    assert resolve_gates(gates, AVAILABLE, "validation") == [
        (gates[0], "validation"),
        (gates[1], "test"),
    ]


def test_default_split_is_validation_else_the_only_split() -> None:
    assert default_split(["validation", "test"]) == "validation"
    assert default_split(["test"]) == "test"
    assert default_split(["train", "test"]) is None


def test_every_bad_name_is_reported_at_once_with_did_you_mean() -> None:
    gates = parse_gates(["acuracy=0.9", "tset.accuracy=0.9"], ["validation.los=1"])
    with pytest.raises(UsageError) as info:
        resolve_gates(gates, AVAILABLE, "validation")
    assert info.value.exit_code == 2
    assert info.value.message == "3 invalid gates"
    assert info.value.details == [
        "--min acuracy=0.9: unknown metric 'acuracy' (did you mean 'accuracy'?); "
        "validation reports: accuracy, loss",
        "--min tset.accuracy=0.9: unknown split 'tset' (did you mean 'test'?); "
        "known splits: train, validation, test",
        "--max validation.los=1: unknown metric 'los' (did you mean 'loss'?); "
        "validation reports: accuracy, loss",
    ]


def test_a_split_that_was_not_evaluated_and_an_ambiguous_name() -> None:
    only_train = {"train": ["accuracy", "loss"], "test": ["accuracy", "loss"]}
    with pytest.raises(UsageError) as info:
        resolve_gates(parse_gates(["validation.accuracy=0.5", "loss=1"]), only_train, None)
    assert info.value.details == [
        "--min validation.accuracy=0.5: the validation split was not evaluated "
        "(add --split validation); evaluated: train, test",
        "--min loss=1: name the split, e.g. train.loss (the evaluated splits are train, test)",
    ]


# --- checking values ------------------------------------------------------------------------------


METRICS = {"validation": {"accuracy": 0.8712, "loss": 0.35}, "test": {"accuracy": 0.86}}


def _check(mins: list[str], maxs: list[str], document: Any = None) -> list[GateResult]:
    available = {k: list(v) for k, v in METRICS.items()}
    resolved = resolve_gates(parse_gates(mins, maxs), available, "validation")
    return check_gates(resolved, METRICS, document)


def test_bounds_are_inclusive_and_passing_gates_are_returned() -> None:
    document: dict[str, Any] = {}
    results = _check(["accuracy=0.8712"], ["loss=0.35"], document)
    assert [r.passed for r in results] == [True, True]
    assert results[0].describe() == "validation accuracy 0.8712 >= min 0.8712"
    assert results[1].describe() == "validation loss 0.3500 <= max 0.35"
    assert document["gates"][0] == {
        "split": "validation",
        "metric": "accuracy",
        "kind": "min",
        "bound": 0.8712,
        "value": 0.8712,
        "passed": True,
    }


def test_one_violated_bound_names_split_metric_value_and_bound() -> None:
    with pytest.raises(GateError) as info:
        _check(["accuracy=0.88"], [])
    assert str(info.value) == "quality gate failed: validation accuracy 0.8712 < min 0.88"
    assert info.value.exit_code == 4


def test_every_violated_bound_is_listed_and_the_document_is_carried() -> None:
    document: dict[str, Any] = {"metrics": METRICS}
    with pytest.raises(GateError) as info:
        _check(["accuracy=0.5", "test.accuracy=0.9"], ["loss=0.3"], document)
    assert str(info.value) == (
        "2 quality gates failed\n"
        "  - test accuracy 0.8600 < min 0.9\n"
        "  - validation loss 0.3500 > max 0.3"
    )
    assert info.value.document is document
    assert [g["passed"] for g in document["gates"]] == [True, False, False]


def test_a_nan_metric_fails_every_gate() -> None:
    gate = Gate("max", "loss", 1.0)
    assert not GateResult(gate, "validation", math.nan).passed
    assert not GateResult(Gate("min", "loss", 1.0), "validation", math.nan).passed


# --- train --------------------------------------------------------------------------------------


def test_train_passes_its_gates_and_reports_them(tiny_config: Path) -> None:
    result = run(
        "train", str(tiny_config), "--json", "--min", "accuracy=0.5", "--max", "test.loss=5"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(g["split"], g["metric"], g["passed"]) for g in doc["gates"]] == [
        ("validation", "accuracy", True),
        ("test", "loss", True),
    ]
    assert "gate passed: validation accuracy" in result.stderr


def test_train_gate_failure_exits_4_after_saving_the_model(tiny_config: Path) -> None:
    result = run("train", str(tiny_config), "--json", "--min", "accuracy=1.01")
    assert result.exit_code == 4
    doc = json.loads(result.stdout)
    accuracy = doc["validation"]["accuracy"]
    message = f"quality gate failed: validation accuracy {accuracy:.4f} < min 1.01"
    assert doc["error"] == {"code": 4, "kind": "gate", "message": message}
    assert doc["gates"][0]["passed"] is False
    assert doc["test"]["accuracy"] > 0.5 and Path(doc["run_dir"]).is_dir()
    assert f"Error: {message}" in result.stderr
    # The model was saved before the gate was checked, and it is a complete run dir.
    evaluated = run("evaluate", doc["run_dir"], "--json", "--split", "validation")
    assert json.loads(evaluated.stdout)["metrics"]["validation"]["accuracy"] == accuracy


def test_train_rejects_an_unknown_metric_before_training(tiny_config: Path, tmp_path: Path) -> None:
    result = run("train", str(tiny_config), "--json", "--min", "top_k_accuracy=0.9")
    assert result.exit_code == 2
    message = json.loads(result.stdout)["error"]["message"]
    assert "unknown metric 'top_k_accuracy'" in message
    assert "validation reports: accuracy, loss" in message
    assert not (tmp_path / "runs" / "tiny").exists()
    # ... and metrics the config asks for become gateable.
    result = run(
        "train",
        str(tiny_config),
        "--quiet",
        *("--set", "training.metrics=[accuracy, top_k_accuracy]", "--set", "training.top_k=2"),
        *("--min", "top_k_accuracy=0.5", "--min", "train.accuracy=0.5"),
    )
    assert result.exit_code == 0, result.output


def test_train_rejects_a_test_gate_without_test_data_before_training(
    tiny_config: Path, tmp_path: Path
) -> None:
    # It trained the whole run, then exited 2 with "the test split was not evaluated (add
    # --split test)", an option train does not have.
    train_images = str(tmp_path / "train-images-idx3-ubyte.gz")
    args = ["train", str(tiny_config), "--json", "--set", f"data={{train: {train_images}}}"]
    result = run(*args, "--min", "test.accuracy=0.5", "--max", "loss=9")
    assert result.exit_code == 2, result.output
    message = json.loads(result.stdout)["error"]["message"]
    assert "1 invalid gate" in message
    assert "--min test.accuracy=0.5: no test split: the config gives no test data" in message
    assert "--split" not in message
    assert not (tmp_path / "runs" / "tiny").exists()  # nothing trained, nothing left


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_gates_pass(tiny_run: Path) -> None:
    result = run("evaluate", str(tiny_run), "--json", "--min", "accuracy=0.5", "--max", "loss=5")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [g["split"] for g in doc["gates"]] == ["validation", "validation"]
    assert doc["metrics"]["test"]["accuracy"] > 0.5


def test_evaluate_gate_failure_keeps_the_metrics_in_the_json(tiny_run: Path) -> None:
    result = run("evaluate", str(tiny_run), "--json", "--max", "loss=0", "--max", "test.loss=0")
    assert result.exit_code == 4
    doc = json.loads(result.stdout)
    loss = doc["metrics"]["validation"]["loss"]
    test_loss = doc["metrics"]["test"]["loss"]
    assert doc["error"]["message"] == (
        "2 quality gates failed\n"
        f"  - validation loss {loss:.4f} > max 0\n"
        f"  - test loss {test_loss:.4f} > max 0"
    )
    assert doc["error"]["kind"] == "gate"
    assert doc["model_dir"] == str(tiny_run)


def test_evaluate_human_output_shows_the_table_and_the_violation(tiny_run: Path) -> None:
    result = run("evaluate", str(tiny_run), "--split", "test", "--min", "accuracy=1.01")
    assert result.exit_code == 4
    assert "accuracy" in result.stdout and "test" in result.stdout  # the metrics table
    assert "Error: quality gate failed: test accuracy" in result.stderr  # the only split
    assert "< min 1.01" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--split", "test", "--min", "validation.accuracy=0.5"],
            "the validation split was not evaluated (add --split validation)",
        ),
        (["--split", "test", "--split", "train", "--min", "loss=1"], "name the split"),
        (["--min", "acc=0.5"], "unknown metric 'acc'"),
        (["--max", "loss"], "expected METRIC=VALUE"),
        (["--min", "seconds=0"], "unknown metric 'seconds'"),
    ],
)
def test_evaluate_gate_usage_errors_exit_2(tiny_run: Path, args: list[str], message: str) -> None:
    result = run("evaluate", str(tiny_run), "--json", *args)
    assert result.exit_code == 2
    assert message in json.loads(result.stdout)["error"]["message"]
