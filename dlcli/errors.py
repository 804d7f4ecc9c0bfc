"""One error type for everything a user can cause, each kind with its documented exit code.

Library code raises these with a message a user can act on; ``dlcli.cli`` catches them in one
place and turns them into an exit code (and a JSON document under ``--json``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The exit codes, the same for every command (documented in the README).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_GATE = 4
EXIT_INTERRUPTED = 130


def debugging() -> bool:
    """``DLCLI_DEBUG`` asks for tracebacks and torch's launcher logs: set to anything but empty,
    0, false, no or off (``DLCLI_DEBUG=0`` turned them on)."""
    value = os.environ.get("DLCLI_DEBUG", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


# What a front end calls an input it hands the library: the command line's option, the Python
# API's parameter. Library messages name an input through :func:`named`, so a caller of
# ``dlcli.load(run, device="cuda")`` reads "device: ...", never of a ``--device`` they did not
# give, while ``dlcli evaluate --device cuda`` still names its option.
_NAMES: dict[str, tuple[str, str]] = {
    # key: (command line, Python API)
    "device": ("--device", "device"),
    "set": ("--set", "overrides"),
    "top_k": ("--top-k", "top_k"),
    "output": ("--output", "output"),
    "overwrite": ("--overwrite", "overwrite=True"),
    "resume": ("--resume", "resume=True"),
    "accept_changed_data": ("--accept-changed-data", "accept_changed_data=True"),
}
_COMMAND_LINE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dlcli_command_line", default=False
)


def named(key: str) -> str:
    """How the caller spelt the input ``key`` (see ``_NAMES``): ``--device`` under a command,
    ``device`` from Python."""
    cli, api = _NAMES[key]
    return cli if _COMMAND_LINE.get() else api


def on_command_line() -> bool:
    """Whether messages now name the command line's options (a process a command starts, a
    tune worker, speaks as the command: :func:`command_line` there too)."""
    return _COMMAND_LINE.get()


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """While a command runs (``dlcli.cli.base``): messages name the command line's options."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


class DlcliError(Exception):
    """Base of every error dlcli reports to a user (never shown as a traceback)."""

    exit_code = EXIT_INTERNAL
    kind = "internal"

    def __init__(
        self,
        message: str,
        *,
        details: list[str] | None = None,
        document: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        # What the command had produced when it failed (e.g. the metrics a gate rejected):
        # under --json it is printed with the "error" key added.
        self.document = document

    def lines(self) -> list[str]:
        """The message, then each detail as ``  - detail``: the lines it is shown in (a name
        inside one, even with a line break, stays on its line: dlcli.report.shown)."""
        return [self.message, *(f"  - {d}" for d in self.details)]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class UsageError(DlcliError):
    """A bad command line: an option value, a missing argument, a conflicting flag."""

    exit_code = EXIT_USAGE
    kind = "usage"


class ForeignFile(UsageError):
    """A file dlcli did not write is where a command would write (``export --out``,
    ``lr-find --plot``, ``plot --out``): it is never overwritten, ``--force`` or not. A usage
    error, exit 2, as ``train --overwrite`` on a folder of the user's: another path is the fix
    (an :class:`OutputError`, exit 3, is a write that failed). ``found`` says what is there
    (``"{path}: a file"``, ``"{folder}: a.png, b.png: files"``); ``option`` is the option that
    chooses another path."""

    def __init__(self, found: str, option: str, *, many: bool = False) -> None:
        them = "they are" if many else "it is"
        super().__init__(
            f"{found} dlcli did not write {'are' if many else 'is'} there; {them} never "
            f"overwritten, --force or not (choose another {option}, or move "
            f"{'them' if many else 'it'} away)"
        )


class ConfigError(DlcliError):
    """An invalid config file or ``--set`` override; ``details`` lists every problem found."""

    exit_code = EXIT_USAGE
    kind = "config"


class DataError(DlcliError):
    """A missing, corrupt or inconsistent dataset archive or input file."""

    exit_code = EXIT_DATA
    kind = "data"


class DownloadError(DlcliError):
    """Every mirror failed, or a downloaded file did not match its checksum."""

    exit_code = EXIT_DATA
    kind = "network"


class ModelDirError(DlcliError):
    """A model directory that is missing, incomplete, altered, or cannot be written."""

    exit_code = EXIT_DATA
    kind = "model_dir"


class OutputError(DlcliError):
    """A file a command writes (a starter config, a figure, an ONNX file) could not be
    written: a full disk, a read-only or vanished directory. Nothing half-written is left.
    Also stdout or stderr that could not be written (dlcli.report.Stream)."""

    exit_code = EXIT_DATA
    kind = "output"


class StorageError(DlcliError):
    """A tune study's storage (a database server, an SQLite file) failed while the study ran:
    a server gone, a file that cannot be written."""

    exit_code = EXIT_DATA
    kind = "storage"


class TrainingError(DlcliError):
    """Training could not go on (e.g. a non-finite loss)."""

    exit_code = EXIT_DATA
    kind = "training"


class GateError(DlcliError):
    """A metric gate (``--min`` / ``--max``) was violated."""

    exit_code = EXIT_GATE
    kind = "gate"


class Interrupted(DlcliError):
    """The user interrupted the command (SIGINT / SIGTERM)."""

    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


def write_problem(err: BaseException) -> str:
    """Why a write failed, in words, for an ``OSError`` or a library error wrapping one
    (safetensors reports ``... (os error 28)``): "no space left on the device", ...."""
    import errno
    import re

    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if code == errno.EFBIG:
        return "the file size limit was reached (no space for the file)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the directory is not writable (read-only or no permission)"
    if code == errno.ENOENT:
        return _no_such_file(err)
    if code == errno.EEXIST:
        return "a file is in the way, not a folder"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if code is not None:
        import os

        return os.strerror(code)
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _no_such_file(err: BaseException) -> str:
    """ENOENT while writing: the folder was removed meanwhile, or (the folder still there) a
    file system that creates no file in it (/proc, /sys): then the OS's own words."""
    import errno
    import os

    filename = getattr(err, "filename", None)
    if isinstance(filename, str | bytes | os.PathLike):
        folder = os.path.dirname(os.fsdecode(filename)) or "."
        if os.path.isdir(folder):
            said = os.strerror(errno.ENOENT)
            return f"the file system refused to create a file or folder in {folder} ({said})"
    return "the directory vanished while writing"


def file_in_the_way(path: Path) -> Path | None:
    """The nearest of ``path`` and the folders above it that exists and is not a folder (a
    file where a folder must be created or used), or ``None``: what a "cannot create the
    folder" error names instead of the OS's "File exists" / "Not a directory"."""
    from pathlib import Path

    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    import difflib

    name = str(name)
    if len(name) > 2 * max((len(c) for c in choices), default=0) + 8:
        return ""  # nothing can be close, and difflib is quadratic in the length
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if not close and len(name) >= 2:  # an abbreviation: acc → accuracy
        close = sorted((c for c in choices if str(c).startswith(name)), key=len)[:1]
    return f" (did you mean '{close[0]}'?)" if close else ""
