"""End to end on the real Fashion-MNIST archives in data/, through real `dlcli` subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def dlcli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dlcli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_train_evaluate_roundtrip_on_real_fashion_mnist(tmp_path: Path) -> None:
    run_dir = tmp_path / "fm"
    # 2 epochs x 570 steps of the seed MLP: a few seconds, enough to be well past chance.
    trained = ok_json(
        dlcli(
            "train",
            "configs/fashion-mnist-mlp.yaml",
            "--set",
            "training.epochs=2",
            "--output",
            str(run_dir),
            "--json",
        )
    )
    assert trained["epochs"] == 2
    assert trained["dataset"]["train_size"] == 57000
    assert trained["dataset"]["validation_size"] == 3000
    assert trained["validation"]["accuracy"] > 0.84
    evaluated = ok_json(dlcli("evaluate", str(run_dir), "--json"))["metrics"]
    assert evaluated["validation"]["accuracy"] == trained["validation"]["accuracy"]
    assert evaluated["test"]["accuracy"] == trained["test"]["accuracy"]
    assert evaluated["test"]["samples"] == 10000


def test_train_logs_plain_epoch_lines_when_not_a_tty(tmp_path: Path) -> None:
    proc = dlcli(
        "train",
        "configs/mnist-mlp.yaml",
        "--set",
        "training.epochs=1",
        "--set",
        "data.validation_split=0.5",
        "--output",
        str(tmp_path / "m"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 1 and "val_accuracy" in lines[0]
    assert "\x1b[" not in proc.stderr + proc.stdout
    assert "Final metrics" in proc.stdout


def test_a_registry_run_resumes_from_another_directory(tmp_path: Path) -> None:
    """The run records its registry folder (absolute data.data_dir): `dlcli train --resume
    RUN_DIR` from elsewhere reads the same archives, not ./data there."""
    run_dir = tmp_path / "fm"
    first = dlcli(
        "train",
        "configs/fashion-mnist-mlp.yaml",
        "--set",
        "training.epochs=1",
        "--set",
        "model.layers[1].units=16",
        "--output",
        str(run_dir),
    )
    assert first.returncode == 0, first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = ok_json(
        dlcli(
            "train", "--resume", str(run_dir), "--set", "training.epochs=2", "--json", cwd=elsewhere
        )
    )
    assert resumed["epochs"] == 2 and resumed["resumed_from"]["epochs_completed"] == 1
    assert not (elsewhere / "data").exists()
    moved = dlcli(  # the folder given on a resume wins: it may move (the archives are checked)
        "train",
        "--resume",
        str(run_dir),
        "--set",
        "training.epochs=3",
        "--set",
        f"data.data_dir={tmp_path / 'nowhere'}",
        cwd=elsewhere,
    )
    assert moved.returncode == 3 and "nowhere" in moved.stderr, moved.stderr
