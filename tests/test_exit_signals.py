"""A signal arriving once the command is over (during the interpreter's teardown, which takes
torch a noticeable time) must not turn a finished command into exit 143 or 130: dlcli.entry
ignores SIGINT/SIGTERM/SIGHUP once the command has returned. Teardown timing cannot be hit
deterministically, so the signal is sent right after entry.main() returns."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
