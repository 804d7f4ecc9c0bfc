"""Signals mean the same in every command: SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal
closed) stop cleanly with one line and exit 130.

Every command runs inside :func:`stop_at_once_on_signals`: a signal raises
:class:`~dlcli.errors.Interrupted` where the program is (start-up, loading, evaluation, a
download, the save), which the command layer reports. During training
:func:`stop_on_signals` takes over: the first SIGINT/SIGTERM/SIGHUP only sets
``trainer.interrupted``: the loop finishes the step under
way, the checkpoint callback saves, and the loop raises :class:`~dlcli.errors.Interrupted`
(exit 130). A second signal raises ``Interrupted`` wherever the program is: every file dlcli
writes goes to a temporary name first, so stopping anywhere leaves the last checkpoint and the
run directory as they were — except inside :func:`uninterruptible`, the few renames that swap a
finished directory into place, which the signal waits for.

Once the command has returned or raised (:func:`command_over`, called by the command layer),
its outcome stands: its result is printed and its files are saved, or its error is decided. A
signal from then until the process exits is ignored, by these handlers and by the program's
own (dlcli.entry), so that it neither turns a success into "interrupted" nor claims that
nothing was written.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from dlcli.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Which of stdout/stderr are terminals, decided while the terminal is still there: once it has
# hung up, isatty() is False (tcgetattr fails with EIO), yet every write to it fails with EIO.
_TTY_FDS = tuple(fd for fd in (1, 2) if os.isatty(fd))


class Stoppable(Protocol):
    interrupted: str | None


@dataclass
class Guard:
    """What :func:`stop_on_signals` yields; set ``immediate`` once there is no step to finish."""

    target: Stoppable
    immediate: bool = False


_depth = 0  # nesting of uninterruptible() sections
_pending: Interrupted | None = None
_over = False  # the command has returned or raised (see command_over)


def command_started() -> None:
    """A command begins: signals stop it again (a process may run several, e.g. the tests)."""
    global _over
    _over = False


def command_over() -> None:
    """The command has returned or raised: its outcome stands, and a signal is ignored from now
    on (:func:`stop_at_once_on_signals`, and dlcli.entry's handler once that is back)."""
    global _over
    _over = True


def command_is_over() -> bool:
    return _over


_guards: list[Guard] = []  # the stop_on_signals blocks in force, innermost last


@contextmanager
def stop_on_signals(target: Stoppable) -> Iterator[Guard]:
    """Install the two-stage SIGINT/SIGTERM/SIGHUP handler for the ``with`` block (main thread only:
    elsewhere Python cannot install handlers, and nothing is changed).

    Nested in another one (a tune trial's training inside its worker), the block starts with
    the signal the enclosing one has already taken: one that came while the trial was being
    prepared was otherwise forgotten, and the trial trained to its end before the study
    stopped."""
    guard = Guard(target)
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    taken = next((g.target.interrupted for g in reversed(_guards) if g.target.interrupted), None)
    if taken is not None and target.interrupted is None:
        target.interrupted = taken

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        _hung_up(signum)
        if target.interrupted is None and not guard.immediate:
            target.interrupted = name
            return
        _stop_now(
            Interrupted(f"interrupted ({name}): stopped at once; nothing was left half-written")
        )

    previous: dict[int, Any] = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    _guards.append(guard)
    try:
        yield guard
    finally:
        _guards.remove(guard)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stop_at_once_on_signals() -> Iterator[None]:
    """For the ``with`` block (a whole command), SIGINT/SIGTERM/SIGHUP raise
    :class:`Interrupted` at once (held back inside :func:`uninterruptible`). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        _hung_up(signum)
        if _over:
            return
        _stop_now(Interrupted(f"interrupted ({name}): stopped; nothing was left half-written"))

    previous: dict[int, Any] = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hung_up(signum: int) -> None:
    """SIGHUP with a terminal on stdout/stderr: the terminal is gone, and writing to it would
    fail (EIO) before a checkpoint is saved; send what is left to /dev/null."""
    if signum != signal.SIGHUP:
        return
    for fd in (1, 2):
        if fd in _TTY_FDS or os.isatty(fd):
            discard_output(fd)


def discard_output(fd: int) -> None:
    """Point ``fd`` at /dev/null: what is written to it from now on (Python's own flush of
    sys.stdout at exit included) goes nowhere instead of failing again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except OSError:
        pass


def _stop_now(err: Interrupted) -> None:
    global _pending
    if _depth:
        _pending = err  # raised when the uninterruptible section ends
        return
    raise err


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold back a stop-at-once signal until the block (a few renames) is done."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            err, _pending = _pending, None
            raise err
