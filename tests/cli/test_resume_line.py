"""`dlcli train --resume RUN_DIR` needs no CONFIG; the line an interrupted run prints continues
it exactly as started (issue 13.5). The best weights are a model too (13.6). Typed flags are
values, not YAML (16.5). Through real `dlcli` processes and a real shell, except the refusals
before any work (in this process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_process import document, start
from click.testing import CliRunner
from in_process import SMALL, write_config

from dlcli.cli import cli

ENV = {"OMP_NUM_THREADS": "1"}
OVERRIDES = ("--set", "training.epochs=3", "--set", "training.optimizer.learning_rate=0.002")


def _shell_env() -> dict[str, str]:
    """A shell where `dlcli` is the one under test (as after `source .venv/bin/activate`)."""
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, **ENV, "NO_COLOR": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _wait_for_first_checkpoint(run_dir: Path, proc: subprocess.Popen[str]) -> None:
    state = run_dir / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be interrupted"
        try:
            if json.loads(state.read_text())["state"]["epoch"] >= 1:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    pytest.fail("no checkpoint appeared")


def test_the_printed_line_run_in_a_shell_continues_the_run_exactly(tmp_path: Path) -> None:
    config = write_config(tmp_path, name="exp")  # dropout + one_cycle: RNG and schedule state
    reference_dir = tmp_path / "reference"
    reference = start("train", str(config), *OVERRIDES, "--output", str(reference_dir), env=ENV)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()  # type: ignore[union-attr]
    run_dir = tmp_path / "my run #1"  # a space and a '#': the printed line must quote it
    proc = start("train", str(config), *OVERRIDES, "--output", str(run_dir), env=ENV)
    _wait_for_first_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = re.search(r"Continue with: (.*)$", err, re.M)
    assert line is not None, err
    assert line.group(1) == f"dlcli train --resume '{run_dir}'"
    config.unlink()  # the run dir alone is the source of truth
    shell = subprocess.run(
        line.group(1) + " --json --quiet",
        shell=True,
        cwd=tmp_path,
        env=_shell_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    resumed = document(shell)  # type: ignore[arg-type]
    assert resumed["epochs"] == 3 and resumed["resumed_from"]["epoch"] >= 1
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["training"]["optimizer"]["learning_rate"] == 0.002
    assert (run_dir / "model.safetensors").read_bytes() == (
        reference_dir / "model.safetensors"
    ).read_bytes()


def test_resume_without_config_refuses_a_missing_run_and_conflicts(tmp_path: Path) -> None:
    """Refusals before any work: in this process (the real processes above and below)."""

    def error(args: list[str], code: int) -> str:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == code, result.output
        message: str = json.loads(result.stdout)["error"]["message"]
        return message

    missing = error(["train", "--resume", str(tmp_path / "nowhere"), "--json"], 3)
    assert missing.endswith("no such run directory to resume")
    assert "give the CONFIG to train, or --resume RUN_DIR" in error(["train", "--json"], 2)


def test_a_damaged_saved_config_is_a_model_dir_error(tmp_path: Path) -> None:
    from cli_process import dlcli

    config = write_config(tmp_path, name="cut", images=SMALL, epochs=1)
    run_dir = tmp_path / "run"
    assert dlcli("train", str(config), "--output", str(run_dir), "--quiet").returncode == 0
    saved = run_dir / "checkpoints" / "last" / "config.yaml"
    saved.write_text(saved.read_text()[:40] + "\n  [unclosed")
    proc = dlcli("train", "--resume", str(run_dir), "--set", "training.epochs=2", "--json")
    message = document(proc, 3)["error"]["message"]
    assert message.startswith(f"{saved}: unreadable saved config"), message


def test_typed_flags_are_values_not_yaml(tmp_path: Path) -> None:
    from cli_process import dlcli

    config = write_config(tmp_path, name="flags", images=SMALL, epochs=1)
    for output in ("runs/x #1", "0123"):
        proc = dlcli("train", str(config), "--output", output, "--json", "--quiet", cwd=tmp_path)
        assert document(proc)["run_dir"] == output
        assert (tmp_path / output / "manifest.json").is_file()


def test_best_and_last_weights_are_models_too(tmp_path: Path) -> None:
    from cli_process import dlcli

    config = write_config(tmp_path, name="es", epochs=6)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["early_stopping"] = {"monitor": "val_loss", "patience": 1, "min_delta": 0.5}
    config.write_text(yaml.safe_dump(raw))
    proc = dlcli("train", str(config), "--output", str(tmp_path / "es"), env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "early stopping after epoch 2: val_loss has not improved for 1 epoch" in proc.stderr
    assert "(model.safetensors: epoch 1, the best by val_loss, restored by early stopping)" in (
        proc.stdout + proc.stderr
    )
    run_dir = tmp_path / "es"
    docs = {
        w: document(dlcli("evaluate", str(run_dir), "--weights", w, "--json", "--split", "test"))
        for w in ("saved", "best", "last")
    }
    loss = {w: d["metrics"]["test"]["loss"] for w, d in docs.items()}
    assert docs["best"]["weights"] == "best"
    # restore_best saved epoch 1 (no improvement by min_delta after it); the last checkpoint is
    # epoch 2's; checkpoints/best is the lowest val_loss (no min_delta there).
    assert loss["saved"] != loss["last"]
    best_epoch = json.loads((run_dir / "metrics.json").read_text())["checkpoints"]["best_epoch"]
    assert (loss["best"] == loss["last"]) == (best_epoch == 2)
    assert (loss["best"] == loss["saved"]) == (best_epoch == 1)
    images = raw["data"]["test_images"]
    predicted = document(dlcli("predict", str(run_dir), images, "--weights", "last", "--json"))
    assert predicted["count"] == 200
