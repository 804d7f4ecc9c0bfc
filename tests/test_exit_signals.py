"""A signal arriving once the command is over (during the interpreter's teardown, which takes
torch a noticeable time) must not turn a finished command into exit 143 or 130: dlcli.entry
ignores SIGINT/SIGTERM/SIGHUP once the command has returned. Teardown timing cannot be hit
deterministically, so the signal is sent right after entry.main() returns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import dlcli, dlcli_signalled

CHILD = """
import os, signal, sys
import dlcli.cli
dlcli.cli.main = lambda: print("done")  # the command: finished, its result printed
from dlcli import entry
entry.main()
os.kill(os.getpid(), signal.{name})
sys.exit(0)
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_after_the_command_finished_keeps_exit_0(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(name=name)], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (0, "done\n"), proc.stderr
    assert "interrupted" not in proc.stderr


def test_a_signal_right_after_the_command_returned_keeps_its_result(tmp_path: Path) -> None:
    """The gap between the command's wrapper returning (its handlers restored: dlcli.entry's)
    and entry.main returning: the signal, sent as click ends the command, is ignored; it said
    "during start-up: nothing was written" and exited 130 after the file was written."""
    config = tmp_path / "starter.yaml"
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        proc = dlcli_signalled("click.core:Context.exit", name, "init", str(config), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "interrupted" not in proc.stderr and "start-up" not in proc.stderr
        assert "# A starter config" in config.read_text()
        config.unlink()


def test_a_signal_right_after_a_command_failed_keeps_its_error(tmp_path: Path) -> None:
    """The same gap after an error: the error is reported and its exit code stands."""
    config = tmp_path / "starter.yaml"
    config.write_text("mine\n")
    proc = dlcli_signalled("click.core:Context.exit", "SIGTERM", "init", str(config), cwd=tmp_path)
    plain = dlcli("init", str(config), cwd=tmp_path)
    assert plain.returncode not in (0, 130), plain.stderr
    assert (proc.returncode, proc.stderr) == (plain.returncode, plain.stderr)
    assert config.read_text() == "mine\n"
