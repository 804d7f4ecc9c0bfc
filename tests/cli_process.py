"""Run ``dlcli`` as a real subprocess (what a user's shell does), for the tests of issue 13 and
the hostile-input tests (``run_real``)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 2_000_000 * 1024  # ulimit -v 2000000 (KiB): what a bomb runs under


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def dlcli(
    *args: str,
    cwd: Path = ROOT,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    bomb: bool = False,
    stdout: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """``python -m dlcli ARGS`` in ``cwd``; stdout and stderr captured as text (``stdout``: a
    file or descriptor to write to instead). A ``bomb`` runs under ``ulimit -v 2000000``
    (``MEMORY_LIMIT``)."""
    return subprocess.run(
        [sys.executable, "-m", "dlcli", *args],
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory if bomb else None,
    )


def run_real(args: list[str], *, bomb: bool = False, timeout: float = 120) -> tuple[int, str, str]:
    """A hostile-input case run for real (a crash is a signal, not an exception): ``dlcli ARGS``
    on one thread, a ``bomb`` under ``ulimit -v``; returns (exit code, stdout + stderr, stderr)."""
    proc = dlcli(*args, timeout=timeout, env={"OMP_NUM_THREADS": "1"}, bomb=bomb)
    return proc.returncode, proc.stdout + proc.stderr, proc.stderr


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
