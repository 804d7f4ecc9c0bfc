"""train / evaluate / summary through the CLI on a tiny learnable dataset the test writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dlcli.cli import cli

# tiny_config (a learnable 4-class 8x8 dataset and its config) is in conftest.py.


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def train_json(config: Path, *extra: str) -> dict[str, Any]:
    result = run("train", str(config), "--json", "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_train_saves_a_complete_run_dir(tiny_config: Path, tmp_path: Path) -> None:
    doc = train_json(tiny_config)
    run_dir = Path(doc["run_dir"])
    assert run_dir == tmp_path / "runs" / "tiny"
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.yaml",
        "model.safetensors",
        "metrics.json",
        "history.csv",
        "manifest.json",
    } <= names
    weights_mode = (run_dir / "model.safetensors").stat().st_mode & 0o777
    assert weights_mode == (run_dir / "metrics.json").stat().st_mode & 0o777
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert metrics["validation"]["accuracy"] > 0.9  # the patterns are easy
    assert metrics["dataset"]["train_size"] == 300
    assert metrics["dataset"]["validation_size"] == 100
    assert set(metrics["dataset"]["checksums"]) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "test-images-idx3-ubyte.gz",
        "test-labels-idx1-ubyte.gz",
    }
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(rows[0])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["training"]["batch_size"] == 20
    assert saved["training"]["optimizer"]["beta1"] == 0.9  # defaults are filled in


def test_evaluate_reproduces_the_training_metrics(tiny_config: Path) -> None:
    doc = train_json(tiny_config)
    result = run("evaluate", doc["run_dir"], "--json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)["metrics"]
    for split in ("validation", "test"):
        assert evaluated[split]["accuracy"] == doc[split]["accuracy"]
        assert evaluated[split]["loss"] == pytest.approx(doc[split]["loss"], rel=1e-6)


def test_evaluate_human_output_is_a_table(tiny_config: Path) -> None:
    doc = train_json(tiny_config)
    result = run("evaluate", doc["run_dir"], "--split", "test")
    assert result.exit_code == 0
    assert "test" in result.stdout and "accuracy" in result.stdout
    assert "validation" not in result.stdout


def test_same_seed_same_metrics(tiny_config: Path, tmp_path: Path) -> None:
    first = train_json(tiny_config, "--output", str(tmp_path / "a"))
    second = train_json(tiny_config, "--output", str(tmp_path / "b"))
    other = train_json(tiny_config, "--output", str(tmp_path / "c"), "--seed", "1")
    for key in ("train", "validation", "test"):
        assert first[key] == second[key]
    assert first["validation"] != other["validation"]
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_train_prints_summary_and_one_line_per_epoch(tiny_config: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tiny_config)])
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "Model summary" in err and "dense_1 (Dense)" in err and "Total params: 1,108" in err
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3
    assert "val_accuracy" in epoch_lines[0] and "loss" in epoch_lines[0]
    assert "\x1b[" not in err  # not a terminal: plain text
    assert "Final metrics" in result.stdout


def test_existing_run_dir_is_refused_without_overwrite(tiny_config: Path) -> None:
    doc = train_json(tiny_config)
    before = (Path(doc["run_dir"]) / "model.safetensors").read_bytes()
    result = run("train", str(tiny_config), "--quiet")
    assert result.exit_code == 2
    assert "output directory is not empty; pass --overwrite" in result.stderr
    assert (Path(doc["run_dir"]) / "model.safetensors").read_bytes() == before
    again = train_json(tiny_config, "--overwrite", "--seed", "5")
    assert again["seed"] == 5


def test_overwrite_says_it_discards_an_earlier_overwrite_run_never_saved(
    tiny_config: Path,
) -> None:
    """The checkpoints of an --overwrite run that was interrupted (what --resume continues)
    were deleted by the next --overwrite without a word."""
    run_dir = Path(train_json(tiny_config, "--set", "training.epochs=1")["run_dir"])
    pending = run_dir / ".dlcli-pending" / "checkpoints"
    (pending / "last").mkdir(parents=True)
    result = run("train", str(tiny_config), "--overwrite", "--set", "training.epochs=1")
    assert result.exit_code == 0, result.output
    assert (
        f"{run_dir}: the checkpoints of an earlier --overwrite run that was never saved "
        f"({pending}) are discarded; the saved run stays until this one is saved"
    ) in result.stderr.splitlines()
    assert not pending.parent.exists()


def test_a_device_or_a_file_where_the_run_goes_is_named(tiny_config: Path, tmp_path: Path) -> None:
    """train -o /dev/null said "output path exists and is not a directory", and --resume AFILE
    "no such run directory to resume" (it is there): each says what is there."""
    result = run("train", str(tiny_config), "-o", "/dev/null")
    assert result.exit_code == 2
    assert "/dev/null: cannot save the model there: /dev/null is a character device" in (
        result.stderr
    )
    afile = tmp_path / "notes"
    afile.write_text("mine")
    result = run("train", "--resume", str(afile))
    assert result.exit_code == 3
    assert f"{afile}: is a file, not a run directory to resume" in result.stderr
    assert afile.read_text() == "mine"


def test_set_overrides_reach_training(tiny_config: Path) -> None:
    doc = train_json(
        tiny_config,
        *("--set", "training.epochs=1"),
        *("--set", "training.metrics=[accuracy, top_k_accuracy]"),
        *("--set", "training.top_k=2"),
    )
    assert doc["epochs"] == 1
    assert doc["validation"]["top_k_accuracy"] >= doc["validation"]["accuracy"]


def test_top_k_at_least_the_number_of_classes_is_refused(tiny_config: Path) -> None:
    classes = yaml.safe_load(tiny_config.read_text())["data"]["num_classes"]
    result = run(
        "train",
        str(tiny_config),
        *("--set", "training.metrics=[accuracy, top_k_accuracy]"),
        *("--set", f"training.top_k={classes}"),
    )
    assert result.exit_code == 2, result.stderr
    assert f"training.top_k: {classes} is not below the data's {classes} classes" in (result.stderr)


def test_a_translate_as_large_as_the_image_is_refused(tiny_config: Path) -> None:
    """``training.augment.translate: 10**9`` was exit 1 (torch's storage size overflowed
    padding the batch); a shift not below the 8x8 images is exit 2 in validate and train."""
    for command in ("config validate", "train"):
        result = run(*command.split(), str(tiny_config), "--set", "training.augment.translate=8")
        assert result.exit_code == 2, (command, result.output)
        assert "training.augment.translate: 8 is not below the images' 8×8" in result.stderr
    ok = run("config", "validate", str(tiny_config), "--set", "training.augment.translate=7")
    assert ok.exit_code == 0, ok.output


def test_a_validation_split_that_leaves_no_training_sample_names_the_key(
    tiny_config: Path,
) -> None:
    """The message named no key and a float artifact: 'splitting 400 samples with fraction
    0.0010000000000000009 gives 0 for training ...'."""
    result = run("train", str(tiny_config), "--set", "data.validation_split=0.999")
    assert result.exit_code == 2, result.output
    assert (
        "data.validation_split: 0.999 of 400 samples gives 0 for training and 400 for "
        "validation; both need at least one sample"
    ) in result.stderr


def test_a_batch_norm_step_of_one_sample_is_refused_before_training(tiny_config: Path) -> None:
    """batch_norm after a dense layer cannot normalise one sample: 300 training samples at
    batch 299 left the epoch's last step 1 and torch raised there, after the epoch's work
    (exit 1, 'a bug in dlcli'); train and lr-find say so before the first step, exit 2."""
    layers = (
        "[{type: flatten}, {type: dense, units: 8}, {type: batch_norm}, {type: dense, units: 4}]"
    )
    sets = ("--set", f"model.layers={layers}", "--set", "training.batch_size=299")
    for command in ("train", "lr-find"):
        result = run(command, str(tiny_config), "--quiet", *sets)
        assert result.exit_code == 2, (command, result.output)
        assert (
            "training.batch_size: 299 on 300 training samples leaves 1 sample in the epoch's "
            "last step, but batch_norm_1 (batch norm of (8,)) needs 2 or more"
        ) in result.stderr
    assert not (tiny_config.parent / "runs" / "tiny").exists()
    ok = run("train", str(tiny_config), "--quiet", *sets[:2], "--set", "training.batch_size=298")
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    ("optimizer", "loss", "lr"),
    [
        ("adamw", "softmax_cross_entropy_with_logits", 0.01),
        ("sgd", "mse", 0.05),
        ("rmsprop", "mse", 0.001),
    ],
)
def test_other_optimizers_and_losses_train(
    tiny_config: Path, optimizer: str, loss: str, lr: float
) -> None:
    doc = train_json(
        tiny_config,
        "--set",
        f"training.optimizer.name={optimizer}",
        "--set",
        f"training.optimizer.learning_rate={lr}",
        "--set",
        f"training.loss={loss}",
        "--set",
        "training.optimizer.momentum=0.9",
    )
    assert doc["validation"]["accuracy"] > 0.5


def test_config_error_exit_code_and_message(tiny_config: Path) -> None:
    result = run("train", str(tiny_config), "--set", "model.layers[1].type=dens")
    assert result.exit_code == 2
    assert "did you mean 'dense'?" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("training.optimizer.learning_rate=1e300", "training.optimizer.learning_rate: expected"),
        ("training.optimizer.momentum=2.5", "training.optimizer.momentum: expected"),
        (
            "training.lr_schedule={name: step, step_size: 1, gamma: 1e300}",
            "training.lr_schedule.gamma: expected a number > 0 and at most 1, found 1e+300",
        ),
        (
            "training.class_weights=[1, 1, 1, 1e300]",
            "training.class_weights: expected balanced or a list of numbers >= 0 and at most",
        ),
    ],
)
def test_a_config_number_out_of_bounds_is_a_config_error(
    tiny_config: Path, override: str, said: str
) -> None:
    # Each validated, then training stopped on a non-finite loss (exit 3).
    for command in ("train", "config validate"):
        result = run(*command.split(), str(tiny_config), "--set", override)
        assert result.exit_code == 2, result.output
        assert said in result.stderr and "Traceback" not in result.output
    assert not (tiny_config.parent / "runs").exists()


def test_cuda_on_a_cpu_machine_is_a_clear_error(tiny_config: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run("train", str(tiny_config), "--device", "cuda")
    assert result.exit_code == 2
    assert "CUDA is not available" in result.stderr


def test_input_shape_mismatch(tiny_config: Path) -> None:
    result = run("train", str(tiny_config), "--set", "model.input_shape=[28, 28, 1]")
    assert result.exit_code == 2
    assert "the dataset's images are [8, 8, 1]" in result.stderr


def test_summary_of_config_and_run_dir(tiny_config: Path) -> None:
    result = run("summary", str(tiny_config))
    assert result.exit_code == 0
    assert "(None, 16)" in result.stdout and "Total params: 1,108" in result.stdout
    doc = train_json(tiny_config)
    result = run("summary", doc["run_dir"], "--json")
    assert json.loads(result.stdout)["total_params"] == 1108


def test_evaluate_missing_dir_exit_3(tmp_path: Path) -> None:
    result = run("evaluate", str(tmp_path / "nope"))
    assert result.exit_code == 3
    assert "model directory not found" in result.stderr


def test_evaluate_refuses_altered_weights(tiny_config: Path) -> None:
    doc = train_json(tiny_config)
    weights = Path(doc["run_dir"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    result = run("evaluate", doc["run_dir"])
    assert result.exit_code == 3
    assert "model.safetensors: altered or truncated" in result.stderr


@pytest.mark.parametrize(
    ("settings", "backward", "note"),
    [
        ([], "explicit", None),
        (["training.backward=autograd"], "autograd", None),
        (
            ["training.backward=explicit", "training.class_weights=balanced"],
            "autograd",
            "class_weights",
        ),
        (["training.backward=explicit"], "explicit", None),
    ],
)
def test_the_step_kind_is_recorded_and_an_unmet_explicit_is_said(
    tiny_config: Path, settings: list[str], backward: str, note: str | None
) -> None:
    sets = [item for setting in ["training.epochs=1", *settings] for item in ("--set", setting)]
    result = run("train", str(tiny_config), "--overwrite", *sets)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tiny_config.parent / "runs/tiny/metrics.json").read_text())
    assert metrics["backward"] == backward
    assert f", {backward} step" in result.stderr  # the data/device line says which step runs
    said = [line for line in result.stderr.splitlines() if "training.backward" in line]
    if note is None:
        assert said == []
    else:
        assert len(said) == 1 and note in said[0] and "autograd computes" in said[0]


# --- training.precision: auto, and an explicit bf16 on a CPU that emulates it -----------------


def cpu_has_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """What the CPU check of dlcli.accel answers, whatever this machine's CPU is."""
    from dlcli import accel

    monkeypatch.setattr(accel, "cpu_native_bf16", lambda cpuinfo=None: native)


def emulated_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "emulated" in line]


@pytest.mark.parametrize(
    ("native", "resolved", "backward"), [(True, "bf16", "autograd"), (False, "fp32", "explicit")]
)
def test_auto_precision_trains_and_records_what_it_resolved_to(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch, native: bool, resolved: str, backward: str
) -> None:
    cpu_has_bf16(monkeypatch, native)
    sets = ["--set", "training.epochs=1", "--set", "training.precision=auto", "--device", "cpu"]
    result = run("train", str(tiny_config), *sets)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tiny_config.parent / "runs/tiny/metrics.json").read_text())
    assert (metrics["precision"], metrics["precision_asked"]) == (resolved, "auto")
    assert metrics["backward"] == backward  # the explicit step is fp32's
    assert emulated_lines(result.stderr) == []  # auto is never emulated


@pytest.mark.parametrize("native", [False, True])
def test_an_explicit_bf16_on_a_cpu_without_bf16_instructions_is_said_in_one_line(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    cpu_has_bf16(monkeypatch, native)
    sets = ["--set", "training.epochs=1", "--set", "training.precision=bf16", "--device", "cpu"]
    result = run("train", str(tiny_config), *sets)
    assert result.exit_code == 0, result.output  # it runs: the user asked for bf16
    said = emulated_lines(result.stderr)
    if native:
        assert said == []
    else:
        assert len(said) == 1
        assert "bf16 is emulated on this CPU (no AVX512-BF16/AMX)" in said[0]
        assert "several times slower than fp32" in said[0] and "auto picks fp32" in said[0]
    metrics = json.loads((tiny_config.parent / "runs/tiny/metrics.json").read_text())
    assert metrics["precision"] == "bf16" and "precision_asked" not in metrics


def test_a_run_records_what_auto_resolved_to_and_evaluate_scores_in_it_anywhere(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_has_bf16(monkeypatch, False)
    doc = train_json(tiny_config, "--set", "training.precision=auto", "--device", "cpu")
    saved = yaml.safe_load((Path(doc["run_dir"]) / "config.yaml").read_text())
    assert saved["training"]["precision"] == "fp32" and doc["precision"] == "fp32"
    for native in (False, True):  # a machine with bf16 instructions too: the run's fp32
        cpu_has_bf16(monkeypatch, native)
        result = run("evaluate", doc["run_dir"], "--json", "--device", "cpu")
        assert result.exit_code == 0, result.output
        evaluated = json.loads(result.stdout)["metrics"]
        for split in ("validation", "test"):  # as training scored them
            assert evaluated[split]["accuracy"] == doc[split]["accuracy"]
            assert evaluated[split]["loss"] == pytest.approx(doc[split]["loss"], rel=1e-6)
