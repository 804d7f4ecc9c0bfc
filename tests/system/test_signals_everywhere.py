"""Signals mean the same in every command at every moment (issue 13.4): SIGINT, SIGTERM and
SIGHUP stop with one line and exit 130 — at start-up, while loading, mid-epoch (with a
checkpoint, as Ctrl-C), during evaluation, during the save and during a download — through
real `dlcli` processes. A hook (tests/signal_at.py) sends the signal at a named moment."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from cli_process import ROOT, dlcli_signalled, start
from conftest import write_tiny_config

from dlcli import checkpoint, store


def _one_error_line(stderr: str, *fragments: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _wait_until_caught(pid: int, number: int) -> None:
    """Until process ``pid`` handles signal ``number`` (Linux: SigCgt in /proc/PID/status)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16
        )
        if caught >> (number - 1) & 1:
            return
        time.sleep(0.001)
    pytest.fail("the process never installed its signal handlers")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_at_start_up(tmp_path: Path, sig: str) -> None:
    config = write_tiny_config(tmp_path)
    proc = start("train", str(config), "--json")
    # Python itself catches SIGINT from its start; dlcli's first line catches SIGTERM too.
    _wait_until_caught(proc.pid, signal.SIGTERM)
    proc.send_signal(getattr(signal, sig))  # during the imports, or just after them
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _one_error_line(err, f"({sig})")
    assert json.loads(out)["error"]["kind"] == "interrupted"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_while_loading_the_data(tmp_path: Path, sig: str) -> None:
    config = write_tiny_config(tmp_path)
    proc = dlcli_signalled("dlcli.pipeline:load_data", sig, "train", str(config))
    assert proc.returncode == 130, proc.stderr
    _one_error_line(proc.stderr, f"interrupted ({sig})")
    assert not (tmp_path / "runs").exists()  # nothing written, the created folders removed


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_mid_epoch_checkpoints_like_ctrl_c(tmp_path: Path, sig: str) -> None:
    config = write_tiny_config(tmp_path)
    proc = dlcli_signalled("dlcli.engine:Trainer._train_epoch", sig, "train", str(config), nth=2)
    assert proc.returncode == 130, proc.stderr
    run_dir = tmp_path / "runs" / "tiny"
    line = _one_error_line(proc.stderr, f"training interrupted ({sig}) in epoch 2")
    assert line.endswith(f"Continue with: dlcli train --resume {run_dir}")
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["state"]["epoch"] == 1 and state["state"]["step_in_epoch"] == 1


def test_during_the_save_nothing_is_half_written(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    proc = dlcli_signalled("dlcli.store:_write_files", "SIGTERM", "train", str(config))
    assert proc.returncode == 130, proc.stderr
    _one_error_line(proc.stderr, "interrupted (SIGTERM)")
    run_dir = tmp_path / "runs" / "tiny"
    assert not (run_dir / store.MANIFEST).exists()
    assert not list(run_dir.glob(".dlcli-save-*"))
    store.verify_manifest(run_dir / "checkpoints" / "last", checkpoint.FILES)  # resumable


def test_during_evaluation(tiny_run: Path) -> None:
    proc = dlcli_signalled(
        "dlcli.pipeline:SavedRun.metrics", "SIGTERM", "evaluate", str(tiny_run), "--json"
    )
    assert proc.returncode == 130, proc.stderr
    _one_error_line(proc.stderr, "interrupted (SIGTERM)")
    assert json.loads(proc.stdout)["error"]["code"] == 130


def test_during_a_download(tmp_path: Path) -> None:
    target = tmp_path / "data"
    proc = dlcli_signalled(
        "dlcli.data.download:_copy",
        "SIGHUP",
        *("download", "mnist", "--data-dir", str(target), "--mirror", str(ROOT / "data" / "mnist")),
    )
    assert proc.returncode == 130, proc.stderr
    _one_error_line(proc.stderr, "interrupted (SIGHUP)")
    finished = list((target / "mnist").glob("*.gz")) if (target / "mnist").exists() else []
    assert finished == []  # only a resumable partial file, never a half-written archive
