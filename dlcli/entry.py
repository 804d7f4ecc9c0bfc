"""The ``dlcli`` program's entry point: signals are handled from its first line.

Before the command layer is imported (click, rich, the commands), a SIGINT, SIGTERM or SIGHUP
can only arrive during start-up, when nothing has been written: it prints the same one line as
everywhere else and exits 130 at once. :func:`dlcli.cli.base.dlcli_command` then installs the
handlers every command runs under (dlcli.signals); when they are restored, the command is over
and this handler ignores a signal (its result is printed, its files saved).

OpenMP's wait policy is set here too, before anything imports torch: ``OMP_WAIT_POLICY=PASSIVE``
after a short spin (unless the environment sets it) keeps waiting threads from spinning on a
busy machine (dlcli/threads.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130  # as dlcli.errors; not imported, to keep start-up minimal
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _outside_command(signum: int, frame: FrameType | None) -> None:
    """Before the command runs, nothing has been written: one line, exit 130. After it has
    returned or raised (dlcli.signals.command_over), its outcome stands: the signal is ignored."""
    signals = sys.modules.get("dlcli.signals")  # not imported here: start-up stays minimal
    if signals is not None and signals.command_is_over():
        return
    message = f"interrupted ({signal.Signals(signum).name}) during start-up: nothing was written"
    try:
        # A torchrun worker's stdout is not the job's: the launcher prints the one document.
        if "--json" in sys.argv and "WORLD_SIZE" not in os.environ:
            error = {"code": EXIT_INTERRUPTED, "kind": "interrupted", "message": message}
            os.write(1, (json.dumps({"error": error}) + "\n").encode())
        os.write(2, f"Error: {message}\n".encode())
    except OSError:
        pass
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    """Console-script entry point (also ``python -m dlcli``)."""
    for sig in _SIGNALS:
        signal.signal(sig, _outside_command)
    from dlcli.threads import set_wait_policy  # imports nothing heavy

    set_wait_policy()  # before torch loads: only then does OpenMP read it
    from dlcli.cli import main as run

    try:
        run()
    finally:
        # The command is over (its result printed, its files saved): a signal during the
        # interpreter's teardown, whose handlers are reset to SIG_DFL, must not turn a
        # success into "killed by SIGTERM" (exit 143) with no message.
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
