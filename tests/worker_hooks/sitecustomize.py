"""Test hooks for the real multi-worker jobs of tests/distributed/test_distributed.py.

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that has
one; the tests put this folder on ``PYTHONPATH`` (see :data:`PYTHONPATH`), so every process of
the job — the ``dlcli train --nproc-per-node`` launcher and each worker it starts — loads it.
With one of the variables below set, the worker of that rank, after global step
``DLCLI_TEST_AT_STEP`` (default 2):

    DLCLI_TEST_FAIL_RANK    dies (SIGKILL, as the OOM killer would)
    DLCLI_TEST_HANG_RANK    hangs forever
    DLCLI_TEST_STOP_RANK    stops itself (SIGSTOP: frozen, as a debugger or ^Z would leave it)
    DLCLI_TEST_SIGINT_RANK  gets a SIGINT (Ctrl-C)

dlcli itself knows nothing of them: the hook is a callback added to every Trainer's fit.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

PYTHONPATH = str(Path(__file__).resolve().parent)

FAIL = os.environ.get("DLCLI_TEST_FAIL_RANK")
HANG = os.environ.get("DLCLI_TEST_HANG_RANK")
STOP = os.environ.get("DLCLI_TEST_STOP_RANK")
SIGINT = os.environ.get("DLCLI_TEST_SIGINT_RANK")
AT_STEP = int(os.environ.get("DLCLI_TEST_AT_STEP", "2"))


def _install() -> None:
    from dlcli import engine
    from dlcli.hooks import Callback

    rank = int(os.environ.get("RANK", "0"))

    class TestHook(Callback):
        def on_step_end(self, trainer: Any, step: int) -> None:
            if trainer.global_step != AT_STEP:
                return
            if FAIL is not None and int(FAIL) == rank:
                os.kill(os.getpid(), signal.SIGKILL)
            if STOP is not None and int(STOP) == rank:
                os.kill(os.getpid(), signal.SIGSTOP)
            if SIGINT is not None and int(SIGINT) == rank:
                os.kill(os.getpid(), signal.SIGINT)
            while HANG is not None and int(HANG) == rank:
                signal.pause()

    fit = engine.Trainer.fit

    def fit_with_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.callbacks.append(TestHook())
        return fit(self, *args, **kwargs)

    engine.Trainer.fit = fit_with_hook  # type: ignore[method-assign]


if any(v is not None for v in (FAIL, HANG, STOP, SIGINT)):
    _install()
