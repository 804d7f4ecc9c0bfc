"""dlcli runs list / compare, evaluate --per-class and the end-of-training summary, on real short
runs of the tiny learnable dataset."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import learnable_patterns, write_tiny_config
from PIL import Image

from dlcli.cli import cli
from dlcli.errors import ModelDirError
from dlcli.metrics import confusion_matrix
from dlcli.runs import (
    differences,
    layers_summary,
    monitored_metric,
    read_history,
    read_run,
    read_runs,
    summarize_history,
)
from dlcli.store import verify_run


def rewrite_manifest(run_dir: Path) -> None:
    """Record the run's files as they are now (what a forger would have to do)."""
    from dlcli import store

    files = json.loads((run_dir / "manifest.json").read_text())["files"]
    store.write_manifest(run_dir, list(files))


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run_json(*args: str, code: int = 0) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == code, result.output
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/a (the tiny config), runs/b (other lr and seed, 2 epochs), runs/broken (no
    manifest: an interrupted run)."""
    folder = tmp_path_factory.mktemp("runs")
    config = write_tiny_config(folder)
    root = folder / "runs"
    run_json("train", str(config), "--quiet", "--output", str(root / "a"))
    run_json(
        "train",
        str(config),
        "--quiet",
        *("--output", str(root / "b"), "--seed", "7"),
        *("--set", "training.optimizer.learning_rate=0.003", "--set", "training.epochs=2"),
    )
    (root / "broken").mkdir()  # a saved run's config and history, its manifest gone
    shutil.copy(root / "a" / "config.yaml", root / "broken" / "config.yaml")
    shutil.copy(root / "a" / "history.csv", root / "broken" / "history.csv")
    return root


# --- runs list -----------------------------------------------------------------------------


def test_runs_list_json(runs_root: Path) -> None:
    doc = run_json("runs", "list", str(runs_root))
    assert [r["name"] for r in doc["runs"]] == ["a", "b"]
    a, b = doc["runs"]
    assert a["config"] == {
        "dataset": "custom",
        "layers": "flatten > dense(16, relu) > dense(4)",
        "optimizer": "adam",
        "lr": 0.01,
        "epochs": 3,
        "batch_size": 20,
        "seed": 0,
    }
    assert b["config"]["lr"] == 0.003 and b["config"]["seed"] == 7 and b["config"]["epochs"] == 2
    metrics = json.loads((runs_root / "a" / "metrics.json").read_text())
    assert a["metrics"]["val_accuracy"] == metrics["validation"]["accuracy"]
    assert a["metrics"]["test_loss"] == metrics["test"]["loss"]
    assert a["summary"]["monitor"] == "val_loss"
    assert 1 <= a["summary"]["best_epoch"] <= 3
    assert doc["skipped"] == [
        {
            "path": str(runs_root / "broken"),
            "reason": "incomplete run (no manifest.json; training interrupted?)",
        }
    ]
    assert doc["damaged"] == []


def test_runs_list_table(runs_root: Path) -> None:
    result = CliRunner(env={"COLUMNS": "160"}).invoke(cli, ["runs", "list", str(runs_root)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Runs in {runs_root}" in out
    assert "flatten > dense(16, relu) > dense(4)" in out
    assert "val acc" in out and "0.003" in out
    assert f"skipped {runs_root / 'broken'}: incomplete run" in result.stderr


def test_runs_list_counts_the_epochs_a_run_trained(tmp_path: Path) -> None:
    """A run early stopping ended after 2 of its 10 epochs was listed as "epochs 10", where
    train's final table said 2 epochs."""
    config = write_tiny_config(tmp_path)
    stop = "training.early_stopping={patience: 1, min_delta: 1000}"  # stops after epoch 2
    result = run("train", str(config), "-q", "--set", "training.epochs=10", "--set", stop)
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs"
    listed = run_json("runs", "list", str(root))["runs"][0]
    assert listed["summary"]["epochs"] == 2 and listed["config"]["epochs"] == 10
    table = CliRunner(env={"COLUMNS": "160"}).invoke(cli, ["runs", "list", str(root)])
    assert table.exit_code == 0, table.output
    assert " 2/10 " in table.stdout


def test_runs_list_default_dir_and_empty_and_missing(
    runs_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(runs_root.parent)  # runs/ is the default
    assert [r["name"] for r in run_json("runs", "list")["runs"]] == ["a", "b"]
    (tmp_path / "empty").mkdir()
    result = run("runs", "list", str(tmp_path / "empty"))
    assert result.exit_code == 0 and "no complete runs in" in result.stderr
    result = run("runs", "list", str(tmp_path / "nope"))
    assert result.exit_code == 3
    assert "no such directory (train a model first" in result.stderr


def test_only_folders_dlcli_left_are_incomplete_runs(runs_root: Path, tmp_path: Path) -> None:
    """Every folder without a manifest was "incomplete run (no manifest.json; training
    interrupted?)": a study's plots/, a git checkout. Only what an unfinished run leaves
    (checkpoints with their manifest, a pending or staging folder) is; others are counted."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "a")
    (root / "plots").mkdir()
    (root / "plots" / "loss.png").write_bytes(b"\x89PNG")
    (root / "checkout" / ".git").mkdir(parents=True)
    (root / "checkout" / "config.yaml").write_text("a: 1\n")  # no history.csv beside it
    checkpoint = root / "killed" / "checkpoints" / "last"
    checkpoint.mkdir(parents=True)
    (checkpoint / "manifest.json").write_text('{"format": "dlcli-checkpoint/2", "files": {}}')
    (root / "overwritten" / ".dlcli-pending").mkdir(parents=True)
    doc = run_json("runs", "list", str(root))
    assert [r["name"] for r in doc["runs"]] == ["a"]
    assert [s["path"] for s in doc["skipped"]] == [str(root / "killed"), str(root / "overwritten")]
    assert doc["not_runs"] == [str(root / "checkout"), str(root / "plots")]
    result = run("runs", "list", str(root))
    assert result.exit_code == 0, result.output
    assert f"2 other folders in {root} are not runs (no files dlcli writes)" in result.stderr
    assert "plots" not in result.stderr and "checkout" not in result.stderr
    assert f"skipped {root / 'killed'}: incomplete run" in result.stderr
    compared = run_json(
        "runs", "compare", str(root / "a"), str(runs_root / "b"), str(root / "plots")
    )
    assert compared["skipped"] == [
        {"path": str(root / "plots"), "reason": "not a dlcli run (no files dlcli writes)"}
    ]


def test_runs_list_in_a_fresh_project_is_no_runs_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dlcli runs list` before any training was exit 3 "runs: no such directory"; the
    default folder not being there yet is no runs, exit 0 (a DIR named is still exit 3)."""
    monkeypatch.chdir(tmp_path)
    doc = run_json("runs", "list")
    assert doc["directory"] == "runs" and doc["runs"] == doc["damaged"] == doc["skipped"] == []
    assert doc["not_runs"] == []
    result = run("runs", "list")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.strip() == "no runs yet in runs/ (train one: dlcli train CONFIG)"
    assert run("runs", "list", "runs").exit_code == 3
    (tmp_path / "runs").write_text("not a folder")  # a file there is still an error
    assert run("runs", "list").exit_code == 3


def test_runs_list_of_a_run_dir_itself(runs_root: Path) -> None:
    assert [r["name"] for r in run_json("runs", "list", str(runs_root / "a"))["runs"]] == ["a"]


# --- runs compare --------------------------------------------------------------------------


def test_runs_compare_lists_what_differs(runs_root: Path) -> None:
    doc = run_json(
        "runs", "compare", str(runs_root / "a"), str(runs_root / "b"), str(runs_root / "broken")
    )
    assert [r["name"] for r in doc["runs"]] == ["a", "b"]
    assert doc["differences"] == [
        {"key": "training.optimizer.learning_rate", "values": [0.01, 0.003]},
        {"key": "training.epochs", "values": [3, 2]},
        {"key": "training.seed", "values": [0, 7]},
    ]
    assert doc["skipped"][0]["path"] == str(runs_root / "broken")


def test_runs_compare_table_marks_differences(runs_root: Path) -> None:
    result = run("runs", "compare", str(runs_root / "a"), str(runs_root / "b"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("≠") and "marks a config" not in line]
    marked = {line.split()[1] for line in rows}  # plain text off a terminal
    assert marked == {"lr", "epochs", "seed"}
    assert any("val_accuracy" in line for line in lines)
    assert any("optimizer" in line and "≠" not in line for line in lines)


def test_runs_compare_needs_two_complete_runs(runs_root: Path, tmp_path: Path) -> None:
    result = run("runs", "compare", str(runs_root / "a"))
    assert result.exit_code == 2
    assert "expected at least 2 run directories, found 1" in result.stderr
    result = run("runs", "compare", str(runs_root / "a"), str(runs_root / "broken"))
    assert result.exit_code == 3
    assert "fewer than 2 complete runs to compare" in result.stderr
    result = run("runs", "compare", str(runs_root / "a"), str(tmp_path / "nope"))
    assert result.exit_code == 3
    assert f"{tmp_path / 'nope'}: model directory not found" in result.stderr


def test_a_file_given_as_a_run_is_named_a_file(runs_root: Path, tmp_path: Path) -> None:
    """It read "afile: model directory not found", as if nothing were there; then click
    refused it, exit 2, while a missing run dir is exit 3: both are model-dir problems, exit
    3, in runs list and compare as in evaluate, predict, export and plot."""
    afile = tmp_path / "afile"
    afile.write_text("notes")
    result = run("runs", "compare", str(afile), str(runs_root / "a"))
    assert result.exit_code == 3
    assert f"{afile}: is a file, not a model directory" in result.stderr
    result = run("runs", "list", str(afile))
    assert result.exit_code == 3
    assert f"{afile}: is a file, not a directory of runs" in result.stderr
    assert run("runs", "list", str(tmp_path / "nope")).exit_code == 3
    for command in ("evaluate", "predict", "export", "plot"):
        extra = [str(afile)] if command == "predict" else []
        result = run(command, str(afile), *extra)
        assert result.exit_code == 3, (command, result.stderr)
        assert f"{afile}: is a file, not a model directory" in result.stderr
    result = run("evaluate", "/dev/null")
    assert result.exit_code == 3
    assert "/dev/null: is a character device, not a model directory" in result.stderr
    with pytest.raises(ModelDirError, match="afile: is a file, not a model directory"):
        read_runs([afile])
    with pytest.raises(ModelDirError, match="afile: is a file, not a model directory"):
        verify_run(afile)
    assert afile.read_text() == "notes"


def test_an_invalid_saved_config_lists_its_problems_a_line_each(
    tiny_run: Path, tmp_path: Path
) -> None:
    """The problems of a run's config.yaml are the error's details, each on its line (a line
    break inside a message is shown as its escape, so they must not be part of one)."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    config = run_dir / "config.yaml"
    text = config.read_text()
    for key in ("epochs", "seed"):
        text = re.sub(rf"(?m)^  {key}: \d+", f"  {key}: -1", text)
    config.write_text(text)
    rewrite_manifest(run_dir)
    result = run("evaluate", str(run_dir))
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"Error: {config}: not a valid dlcli config: ")
    assert lines[0].endswith("2 problems in the config") and "\\n" not in result.stderr
    keys = [line.split(":")[0] for line in lines[1:]]
    assert keys == ["  - training.epochs", "  - training.seed"], result.stderr


def test_differences_ignore_output_dir(runs_root: Path) -> None:
    a, b = read_run(runs_root / "a"), read_run(runs_root / "b")
    assert a.config["output"]["dir"] != b.config["output"]["dir"]
    assert "output.dir" not in [d.key for d in differences([a, b])]
    assert differences([a, a]) == []


# --- evaluate --per-class ------------------------------------------------------------------


def test_evaluate_per_class_json_is_consistent(runs_root: Path) -> None:
    doc = run_json("evaluate", str(runs_root / "a"), "--per-class")
    for split in ("validation", "test"):
        report = doc["per_class"][split]
        cm = np.array(report["confusion_matrix"])
        assert cm.shape == (4, 4)
        assert cm.sum() == doc["metrics"][split]["samples"]
        assert report["accuracy"] == pytest.approx(doc["metrics"][split]["accuracy"])
        assert [c["support"] for c in report["classes"]] == cm.sum(axis=1).tolist()
        assert [c["name"] for c in report["classes"]] == ["0", "1", "2", "3"]
        for c in report["classes"]:
            k = c["index"]
            assert c["recall"] == pytest.approx(cm[k, k] / cm[k].sum())
            assert c["precision"] == pytest.approx(cm[k, k] / max(cm[:, k].sum(), 1))


def test_evaluate_per_class_tables(runs_root: Path) -> None:
    result = run("evaluate", str(runs_root / "a"), "--per-class", "--split", "test")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Per-class metrics (test)" in out and "Confusion matrix (test)" in out
    for word in ("precision", "recall", "f1", "support", "macro avg", "weighted avg"):
        assert word in out
    assert "rows: true class · columns: predicted class" in out
    assert "validation" not in out


def test_evaluate_without_per_class_is_unchanged(runs_root: Path) -> None:
    doc = run_json("evaluate", str(runs_root / "a"))
    assert "per_class" not in doc and set(doc["metrics"]) == {"validation", "test"}


def test_predictions_match_the_confusion_matrix(runs_root: Path) -> None:
    from dlcli import pipeline

    saved = pipeline.open_run(runs_root / "a", device="cpu")
    predictions = saved.predictions("validation")
    assert len(predictions.labels) == 100 and predictions.split == "validation"
    cm = confusion_matrix(predictions.labels, predictions.predicted, 4)
    assert (predictions.per_class().confusion == cm).all()
    assert saved.metrics("validation")["accuracy"] == pytest.approx(np.trace(cm) / 100)


# --- the end-of-training summary -------------------------------------------------------------


def test_train_summary_in_json_and_human_output(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    result = run("train", str(config), "--set", "training.epochs=2")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("best epoch ") and "(val_loss " in line
    assert " s/epoch · " in line and " samples/s · saved " in line
    assert line.endswith(
        f"saved {tmp_path / 'runs' / 'tiny'} (model.safetensors: the last epoch, 2)"
    )
    doc = run_json("train", str(config), "--overwrite", "--quiet", "--set", "training.epochs=2")
    summary = doc["summary"]
    assert summary["monitor"] == "val_loss" and summary["best_epoch"] in (1, 2)
    assert summary["seconds_per_epoch"] > 0
    # Speed: the median of the epochs' own, measured over their training steps alone.
    history = read_history(Path(doc["run_dir"]) / "history.csv")
    speeds = sorted(row["samples_per_second"] for row in history)
    assert summary["samples_per_second"] == pytest.approx((speeds[0] + speeds[1]) / 2)
    assert summary["seconds_per_epoch"] == pytest.approx(
        (history[0]["seconds"] + history[1]["seconds"]) / 2
    )


def test_summarize_history_by_hand() -> None:
    history = [
        {"epoch": 1.0, "loss": 0.9, "val_loss": 0.50, "val_accuracy": 0.80, "seconds": 2.0},
        {"epoch": 2.0, "loss": 0.5, "val_loss": 0.40, "val_accuracy": 0.85, "seconds": 1.0},
        {"epoch": 3.0, "loss": 0.3, "val_loss": 0.45, "val_accuracy": 0.90, "seconds": 3.0},
    ]
    summary = summarize_history(history, train_size=600)
    assert summary == {
        "monitor": "val_loss",
        "epochs": 3,
        "best_epoch": 2,
        "best_value": 0.40,
        "seconds_per_epoch": 2.0,
        "samples_per_second": 300.0,
    }
    assert summarize_history(history, monitor="val_accuracy")["best_epoch"] == 3
    assert summarize_history(history, monitor="val_loss", mode="max")["best_epoch"] == 1
    assert summarize_history(history, monitor="absent")["monitor"] == "val_loss"
    assert summarize_history([]) == {}
    # early stopping's min_delta: epoch 2's val_loss is lower, but not by more than 0.2
    delta = summarize_history(history, monitor="val_loss", min_delta=0.2)
    assert (delta["best_epoch"], delta["best_value"]) == (1, 0.50)
    # the rule runs list/compare and plot read from a run's config: early stopping's first
    early = {"monitor": "validation.loss", "min_delta": 0.2, "mode": "auto"}
    config = {"training": {"early_stopping": early, "checkpoint": {"monitor": "val_accuracy"}}}
    assert monitored_metric(config) == ("val_loss", "auto", 0.2)
    assert monitored_metric({"training": {"checkpoint": {"monitor": "loss"}}}) == (
        "loss",
        "auto",
        0,
    )


def test_layers_summary() -> None:
    layers = [
        {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu"},
        {"type": "conv2d", "filters": 8, "kernel_size": [5, 3], "strides": 2, "padding": "same"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "batch_norm"},
        {"type": "dropout", "rate": 0.25},
        {"type": "activation", "activation": "gelu"},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "linear"},
    ]
    assert layers_summary(layers) == (
        "conv2d(32, 3x3, relu) > conv2d(8, 5x3, stride 2x2, same) > max_pool2d(2x2) > "
        "batch_norm > dropout(0.25) > activation(gelu) > flatten > dense(10)"
    )


# --- junk in a run directory: skipped with a reason, or refused -------------------------------


JUNK = [
    ("history.csv", b"epoch,loss\n1,abc\n", "history.csv: unreadable history file: line 2"),
    ("history.csv", b"epoch,loss\n1,inf\n", "'inf', expected a finite number"),
    ("history.csv", b"epoch,loss\n1,2,3\n", "line 2 has 3 values, the header names 2 columns"),
    ("history.csv", b"epoch,,loss\n", "is not a row of unique column names"),
    ("history.csv", b"\xff\xfe\n", "history.csv: unreadable history file: not UTF-8 text"),
    ("history.csv", b'epoch\n"1\n', "unreadable history file: line 2: a quote opened on this"),
    ("metrics.json", b"[" * 100_000, "metrics.json: unreadable metrics file: nested 100000"),
    ("metrics.json", b"{not json", "metrics.json: unreadable metrics file: not valid JSON"),
    ("metrics.json", b"NaN", "metrics.json: unreadable metrics file (not a JSON object)"),
    ("config.yaml", b"a: [1\n", "config.yaml: invalid YAML at line"),
    ("config.yaml", b"- 1\n", "config.yaml: expected a mapping at the top level"),
]


@pytest.mark.parametrize(
    ("name", "data", "reason"), JUNK, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(JUNK)]
)
def test_a_run_with_a_junk_file_is_skipped_with_its_reason(
    runs_root: Path, tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    """runs list and runs compare read every file within the limits: a bad run is one note
    (and an entry of "skipped"), never a crash and never silently listed without curves."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "a")
    shutil.copytree(runs_root / "a", root / "bad")
    (root / "bad" / name).write_bytes(data)
    # Recorded by the manifest, as if written so: the readers' own limits are what is tested
    # (an edit the manifest does not record is a damaged run: test_an_edited_run_is_damaged...).
    rewrite_manifest(root / "bad")
    for args in (
        ["runs", "list", str(root)],
        ["runs", "compare", *map(str, [root / "a", root / "bad", runs_root / "b"])],
    ):
        result = run(*args, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert "bad" not in [r["name"] for r in doc["runs"]]
        assert [s["path"] for s in doc["skipped"]] == [str(root / "bad")]
        assert doc["skipped"][0]["reason"].startswith(f"{name}: ")
        assert reason in doc["skipped"][0]["reason"]
        assert f"skipped {root / 'bad'}: {name}: " in result.stderr
        notes = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
        assert len(notes) == 1 and len(notes[0]) < 300, notes
        assert "Traceback" not in result.stderr


def test_a_fifo_in_a_run_is_damaged_at_once(runs_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "fifo")
    (root / "fifo" / "history.csv").unlink()
    os.mkfifo(root / "fifo" / "history.csv")
    result = run("runs", "list", str(root), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["damaged"] == [
        {
            "path": str(root / "fifo"),
            "reason": "history.csv: is a FIFO (named pipe), expected a regular history file",
        }
    ]


def test_the_history_reader_keeps_to_its_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlcli import limits
    from dlcli.errors import ModelDirError
    from dlcli.runs import read_history

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n1,0.5,\n2,0.25,0.3\n")
    assert read_history(path) == [
        {"epoch": 1.0, "loss": 0.5},
        {"epoch": 2.0, "loss": 0.25, "val_loss": 0.3},
    ]
    monkeypatch.setattr(limits, "CSV_MAX_VALUES", 8)
    with pytest.raises(
        ModelDirError, match=r"history.csv: unreadable history file: more than the 8 values"
    ):
        read_history(path)
    monkeypatch.setattr(limits, "CSV_MAX_BYTES", 10)
    with pytest.raises(ModelDirError, match=r"history file is 38 bytes, more than the 10 allowed"):
        read_history(path)
    with pytest.raises(ModelDirError, match=r"history.csv: history file not found"):
        read_history(tmp_path / "history.csv.gone" / "history.csv")


# --- a damaged run: what list and compare show is what the manifest records -------------------


def _edit_metrics(run_dir: Path) -> None:
    """Change the recorded accuracies by hand: valid JSON, every reader accepts it."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("validation", "test"):
        metrics[split]["accuracy"] = 0.987654
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def test_an_edited_metrics_json_is_damaged_in_list_and_refused_by_compare(
    runs_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "a")
    shutil.copytree(runs_root / "a", root / "edited")
    _edit_metrics(root / "edited")
    reason = "metrics.json: altered or truncated: sha256 is "

    doc = run_json("runs", "list", str(root))
    assert [r["name"] for r in doc["runs"]] == ["a"]  # none of its numbers shown
    assert [d["path"] for d in doc["damaged"]] == [str(root / "edited")]
    assert doc["damaged"][0]["reason"].startswith(reason)
    assert doc["skipped"] == []
    table = CliRunner(env={"COLUMNS": "160"}).invoke(cli, ["runs", "list", str(root)])
    assert table.exit_code == 0, table.output
    assert any("edited" in line and "DAMAGED" in line for line in table.stdout.splitlines())
    assert "0.9877" not in table.stdout
    assert f"damaged {root / 'edited'}: {reason}" in table.stderr
    # A damaged run named on its own is refused, as evaluate refuses it: the same reason.
    alone = run("runs", "list", str(root / "edited"))
    assert alone.exit_code == 3 and reason in alone.stderr
    evaluated = run("evaluate", str(root / "edited"))
    assert evaluated.exit_code == 3 and reason in evaluated.stderr

    for order in ([root / "a", root / "edited"], [root / "edited", root / "a", runs_root / "b"]):
        result = run("runs", "compare", *map(str, order))
        assert result.exit_code == 3, result.output
        assert result.stdout == ""  # no table a gate could read numbers from
        assert "runs compare: refused: " in result.stderr
        assert f"{root / 'edited'}: damaged run: {reason}" in result.stderr
        assert "Traceback" not in result.stderr
        failed = run_json("runs", "compare", *map(str, order), code=3)
        assert failed["error"]["kind"] == "model_dir" and "runs" not in failed


DAMAGES = [
    ("manifest.json", b"{not json", "manifest.json: unreadable manifest: not valid JSON"),
    ("manifest.json", b"[]", "manifest.json: unreadable manifest (expected a JSON object)"),
    ("manifest.json", b'{"format": "x", "files": {}}', "unreadable manifest (format 'x'"),
    ("history.csv", b"epoch,loss\n1,0.5\n", "history.csv: altered or truncated"),
    ("config.yaml", b"{}\n", "config.yaml: altered or truncated"),
    ("model.safetensors", None, "model.safetensors: missing (listed in manifest.json)"),
]


@pytest.mark.parametrize(
    ("name", "data", "reason"), DAMAGES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(DAMAGES)]
)
def test_a_damaged_run_is_listed_as_damaged_with_its_reason(
    runs_root: Path, tmp_path: Path, name: str, data: bytes | None, reason: str
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "a")
    shutil.copytree(runs_root / "a", root / "bad")
    if data is None:
        (root / "bad" / name).unlink()
    else:
        (root / "bad" / name).write_bytes(data)
    doc = run_json("runs", "list", str(root))
    assert [r["name"] for r in doc["runs"]] == ["a"]
    assert [d["path"] for d in doc["damaged"]] == [str(root / "bad")]
    assert reason in doc["damaged"][0]["reason"], doc["damaged"]
    result = run("runs", "compare", str(root / "a"), str(root / "bad"))
    assert result.exit_code == 3 and reason in result.stderr


def test_a_manifest_that_leaves_out_history_is_damaged(runs_root: Path, tmp_path: Path) -> None:
    """A history.csv the manifest does not record is not trusted either (every run lists it)."""
    from dlcli import store

    root = tmp_path / "runs"
    shutil.copytree(runs_root / "a", root / "bad")
    store.write_manifest(root / "bad", ["config.yaml", "model.safetensors", "metrics.json"])
    doc = run_json("runs", "list", str(root))
    assert doc["damaged"] == [
        {"path": str(root / "bad"), "reason": "manifest.json: lists no history.csv"}
    ]


def test_runs_list_stays_torch_free(runs_root: Path) -> None:
    """Verifying runs hashes their small files, never loads the weights: no torch import."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dlcli.cli import cli\n"
        f"result = CliRunner().invoke(cli, ['runs', 'list', {str(runs_root)!r}, '--json'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- evaluate --data: messages worded for evaluating, not training -----------------------------


def test_evaluate_data_scores_a_run_trained_on_idx_archives(
    runs_root: Path, tmp_path: Path
) -> None:
    """A run trained from data.train_images (no data.train) scores --data too (it was an
    internal error, exit 1): its test archive as an .npz gives evaluate --split test's figures."""
    rng = np.random.default_rng(0)  # as write_tiny_config: 400 train, then 100 test
    learnable_patterns(400, rng)
    images, labels = learnable_patterns(100, rng)
    np.savez(tmp_path / "test.npz", x=images, y=labels)
    scored = run_json("evaluate", str(runs_root / "a"), "--data", str(tmp_path / "test.npz"))
    split = run_json("evaluate", str(runs_root / "a"), "--split", "test")
    assert scored["metrics"]["data"]["samples"] == 100
    assert scored["metrics"]["data"]["accuracy"] == split["metrics"]["test"]["accuracy"]
    assert scored["metrics"]["data"]["loss"] == pytest.approx(split["metrics"]["test"]["loss"])


def _unknown_class(root: Path) -> Path:
    Image.new("L", (8, 8)).save(_folder(root / "birds" / "bird") / "x.png")
    return root / "birds"


def _unreadable_file(root: Path) -> Path:
    Image.new("L", (8, 8)).save(_folder(root / "broken" / "1") / "good.png")
    (root / "broken" / "1" / "bad.png").write_bytes(b"not a png")
    return root / "broken"


def _label_out_of_range(root: Path) -> Path:
    np.savez(root / "nine.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 9, 1]))
    return root / "nine.npz"


def _other_image_size(root: Path) -> Path:
    np.savez(root / "six.npz", x=np.zeros((3, 6, 6), np.uint8), y=np.array([0, 1, 2]))
    return root / "six.npz"


# The data written, what evaluate says, and the training words it must not say. The run's
# classes are 0..3 (IDX labels), its images 8×8 greyscale.
WORDING: list[tuple[Callable[[Path], Path], list[str], list[str]]] = [
    (
        _unknown_class,
        ["class 'bird' is not one of the 4 classes the model was trained on (0, 1, 2, 3)"],
        ["train data"],
    ),
    (
        _unreadable_file,
        ["1 image file could not be read", "then evaluate again (`dlcli data check {data}` lists"],
        ["skip_bad_files", "to train"],
    ),
    (
        _label_out_of_range,
        ["1 of 3 labels are outside [0, 4) (found 9); the model was trained on 4 classes"],
        ["data.num_classes", "data.class_names"],
    ),
    (
        _other_image_size,
        ["its images are 6×6×1 but the model takes 8×8×1", "arrays are not resized"],
        ["model.input_shape"],
    ),
]


@pytest.mark.parametrize(
    ("write", "said", "unsaid"), WORDING, ids=[w.__name__ for w, *_ in WORDING]
)
def test_evaluate_data_messages_speak_of_evaluating(
    runs_root: Path,
    tmp_path: Path,
    write: Callable[[Path], Path],
    said: list[str],
    unsaid: list[str],
) -> None:
    """evaluate --data scores other data than the run trained on: a problem with it is worded
    for evaluating, and names no training config key (evaluate cannot change them)."""
    data = write(tmp_path)
    result = run("evaluate", str(runs_root / "a"), "--data", str(data))
    assert result.exit_code == 3, result.output
    for text in said:
        assert text.format(data=data) in result.stderr, result.stderr
    for text in unsaid:
        assert text not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_run_saved_again_while_it_is_checked_is_not_called_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runs list (or compare, evaluate) beside a retrain with --overwrite: the run's files
    were replaced, the manifest last, while they were being checked against the old
    manifest, so a complete run was reported damaged ("config.yaml: altered or truncated";
    compare exit 3). A check that fails while the manifest is replaced is made again; an
    edit with the manifest unchanged is still reported, at once."""
    import time

    from dlcli import manifest
    from dlcli.errors import ModelDirError
    from dlcli.store import write_manifest

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("old\n")
    write_manifest(run_dir, ["config.yaml"])
    hash_file = manifest.sha256_file
    saves: list[str] = []

    def another_process_saves_meanwhile(path: Path, *args: Any, **kwargs: Any) -> str:
        if not saves:  # the new files first, the manifest last, as a save does
            saves.append("saved")
            (run_dir / "config.yaml").write_text("new\n")
            write_manifest(run_dir, ["config.yaml"])
        return hash_file(path, *args, **kwargs)

    monkeypatch.setattr(manifest, "sha256_file", another_process_saves_meanwhile)
    checked = manifest.verify_manifest(run_dir, ["config.yaml"])
    assert saves and checked["files"]["config.yaml"] == hash_file(run_dir / "config.yaml")

    (run_dir / "config.yaml").write_text("edited\n")  # the manifest unchanged: damaged
    start = time.monotonic()
    with pytest.raises(ModelDirError, match=r"config\.yaml: altered or truncated"):
        manifest.verify_manifest(run_dir, ["config.yaml"])
    assert time.monotonic() - start < manifest.SAVE_WAIT_S / 2


def test_runs_compare_refuses_a_run_named_twice(runs_root: Path, tmp_path: Path) -> None:
    """`runs compare a a` showed a table comparing a run with itself (nothing differed)."""
    a = runs_root / "a"
    doc = run_json("runs", "compare", str(a), str(runs_root / "b"), str(a), code=2)
    assert doc["error"]["message"] == f"runs compare: {a} is given twice; name each run once"
    (tmp_path / "link").symlink_to(a)
    result = run("runs", "compare", str(a), str(tmp_path / "link"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{tmp_path / 'link'} is given twice (the same folder as {a})" in result.stderr
