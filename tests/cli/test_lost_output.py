"""Output that cannot be written never ends a command nor loses a run: stdout into a pipe whose
reader left (EPIPE: ``dlcli train cfg | head -1``, ``dlcli runs list | head -1``: quiet, the
command's own exit code, as Unix tools), onto a full disk (ENOSPC, /dev/full: the run is saved,
then exit 3 naming stdout), and a terminal gone without a hangup (EIO: the display stops, the
run goes on). Real subprocesses; the display's own guard is checked on a console that fails."""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from cli_process import dlcli
from conftest import write_tiny_config

DLCLI = [sys.executable, "-m", "dlcli"]
RUN_FILES = {"config.yaml", "metrics.json", "model.safetensors", "history.csv", "manifest.json"}


ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", **ONE_THREAD}


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def _config(folder: Path, epochs: int = 1) -> Path:
    config = write_tiny_config(folder)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["epochs"] = epochs
    config.write_text(yaml.safe_dump(raw))
    return config


def _saved(run_dir: Path, epochs: int) -> None:
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES, sorted(run_dir.iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == epochs


def test_train_into_a_pipe_closed_early_finishes_quietly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    out = _closed_pipe()
    proc = dlcli("train", str(config), stdout=out, env=ONE_THREAD)
    os.close(out)
    assert proc.returncode == 0, proc.stderr
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    _saved(tmp_path / "runs" / "tiny", 1)


def test_runs_list_into_a_pipe_closed_early_exits_quietly(tiny_run: Path) -> None:
    for args in (["runs", "list", str(tiny_run.parent)], ["runs", "list", "--json"]):
        out = _closed_pipe()
        proc = dlcli(*args, stdout=out, env=ONE_THREAD, cwd=tiny_run.parent.parent, timeout=120)
        os.close(out)
        assert proc.returncode == 0, proc.stderr
        assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_train_onto_a_full_disk_saves_the_run_and_exits_3(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with open("/dev/full", "w") as full:
        proc = dlcli("train", str(config), stdout=full, env=ONE_THREAD)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(
        "Error: could not write to stdout: no space left on the device"
    ), proc.stderr
    _saved(tmp_path / "runs" / "tiny", 1)


def test_a_terminal_gone_without_a_hangup_does_not_end_the_run(tmp_path: Path) -> None:
    """The pty is not the child's controlling terminal: closing it sends no SIGHUP, and every
    write of the live display fails with EIO. The run goes on to its last epoch and is saved."""
    epochs = 40
    config = _config(tmp_path, epochs)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*DLCLI, "train", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={k: v for k, v in _env().items() if k not in ("COLUMNS", "LINES")},
        close_fds=True,
        start_new_session=True,  # no controlling terminal: the closed pty sends no SIGHUP
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    while b"epoch 2/" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            seen += os.read(master, 65536)
        assert proc.poll() is None, seen.decode(errors="replace")
    os.close(master)  # the terminal is gone: writes to it fail with EIO
    code = proc.wait(timeout=300)
    _saved(tmp_path / "runs" / "tiny", epochs)
    assert code == 3  # the output lost (exit 3, said where it cannot be seen), the run saved


class _FailingFile:
    """A terminal whose every write fails, as after a hangup (EIO)."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(errno.EIO, "Input/output error")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_the_display_turns_off_when_a_write_fails() -> None:
    """The second layer: on a console whose writes fail (not the Reporter's streams), the live
    display stops drawing instead of raising into the training loop."""
    from rich.console import Console

    from dlcli.progress import ProgressDisplay
    from dlcli.report import Reporter

    reporter = Reporter()
    file = _FailingFile()
    reporter.err = Console(file=file, force_terminal=True, width=80)  # type: ignore[arg-type]
    display = ProgressDisplay(reporter)
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.01}])
    trainer: Any = SimpleNamespace(
        epochs=2,
        history=[],
        step_in_epoch=0,
        steps_per_epoch=3,
        batch_size=4,
        optimizer=optimizer,
        running_logs=lambda: {"loss": 0.5},
    )
    display.on_fit_begin(trainer)
    for epoch in (1, 2):
        display.on_epoch_begin(trainer, epoch)
        for step in (1, 2, 3):
            display.on_step_end(trainer, step)
        display.on_epoch_end(trainer, epoch, {"loss": 0.5, "seconds": 0.1})
    display.on_fit_end(trainer)
    assert file.writes >= 1
    assert display.live is None
