"""Run ``dlcli`` as a real subprocess (what a user's shell does), for the tests of issue 13."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def dlcli(
    *args: str, cwd: Path = ROOT, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dlcli ARGS`` in ``cwd``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "dlcli", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The same, started in the background (for signals and concurrent runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dlcli", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def document(proc: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    """The --json document of a finished command that exited ``code``."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    return json.loads(proc.stdout)


def dlcli_signalled(
    at: str, sig: str, *args: str, nth: int = 1, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``dlcli ARGS`` that sends itself ``sig`` on the ``nth`` call of ``at`` (MODULE:ATTR)."""
    hook = Path(__file__).with_name("signal_at.py")
    return subprocess.run(
        [sys.executable, str(hook), at, sig, str(nth), "--", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
