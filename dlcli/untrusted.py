"""Reading files dlcli did not just write: regular files only, bounded sizes, bounded JSON.

Every reader of a config, a run directory, a checkpoint or a data file goes through these, so
a FIFO never blocks a command (it is refused before it is opened, and opened non-blocking in
case it appeared in between), a device or a 10 GB file is never read whole, and a 100,000-deep
JSON document is refused before the parser recurses into it. The limits are
:mod:`dlcli.limits`. No torch here.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import re
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlcli import limits
from dlcli.errors import DlcliError, file_in_the_way

ErrorType = type[DlcliError]


def is_number(text: str) -> bool:
    """Whether ``text`` is a non-negative integer written in ASCII digits, so ``int(text)``
    takes it: ``str.isdigit`` alone also accepts "²" and other Unicode digits int() refuses."""
    return text.isascii() and text.isdigit()


def shorten(text: str) -> str:
    """``text`` cut to :data:`~dlcli.limits.ECHO_MAX_CHARS` characters, saying how much was
    left out."""
    limit = limits.ECHO_MAX_CHARS
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (controls, escape sequences, line
    separators) written as its Python escape (``\\x1b``), for a message that quotes what a
    file or a server said; a file name's byte that is not UTF-8 (kept by Python as a lone
    surrogate) is written as that byte (``\\xff``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # os.fsdecode's surrogateescape of one byte
        return f"\\x{ord(char) - 0xDC00:02x}"
    return repr(char)[1:-1]


def shell_word(path: str | os.PathLike[str]) -> str:
    """A path as one word of a command a user can paste into a POSIX shell: quoted where the
    shell needs it (a space, a quote), and ``./`` before a relative path starting with ``-``
    (dlcli would read it as an option)."""
    text = os.fspath(path)
    if text.startswith("-"):
        text = f"./{text}"
    return shlex.quote(text)


def echo(value: Any) -> str:
    """``repr(value)`` for a message, never longer than :data:`~dlcli.limits.ECHO_MAX_CHARS`
    (plus a note); a huge list or string is not rendered whole first."""
    if isinstance(value, str):
        return shorten(repr(value[: limits.ECHO_MAX_CHARS + 1]))
    if isinstance(value, list | dict) and len(value) > limits.ECHO_MAX_CHARS:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        return shorten(repr(value))
    except RecursionError:
        return f"a deeply nested {type(value).__name__}"


def kind_of(mode: int) -> str | None:
    """What a ``st_mode`` is, in words ("a FIFO (named pipe)", "a directory"), or ``None`` for
    a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):  # from lstat
        return "a symbolic link"
    return "not a regular file"


def in_the_way(path: str | os.PathLike[str]) -> str | None:
    """Where a folder must be created or used at ``path``: what stands in the way, in words
    ("/dev/null is a character device", "runs/x is a file"; see
    :func:`~dlcli.errors.file_in_the_way`), or ``None``."""
    blocker = file_in_the_way(Path(path))
    if blocker is None:
        return None
    try:
        kind = kind_of(os.stat(blocker).st_mode) or "a file"
    except OSError:  # gone meanwhile, or a link to nothing
        kind = "not a folder"
    return f"{blocker} is {kind}"


def check_regular(path: str | os.PathLike[str], error: ErrorType, what: str = "file") -> int:
    """The size of ``path``, after checking it is a regular file (following symlinks); a
    missing file, a directory, a FIFO, a device or a socket raises ``error`` naming it."""
    shown = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{shown}: {what} not found{_broken_link(path)}") from None
    except OSError as err:
        raise error(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    kind = kind_of(info.st_mode)
    if kind is not None:
        raise error(f"{shown}: is {kind}, expected a regular {what}")
    return info.st_size


def _broken_link(path: str | os.PathLike[str]) -> str:
    """``" (a link to X, which does not exist)"`` for a dangling symbolic link, else ``""``:
    "not found" alone, for a file ``ls`` lists, sends a user looking in the wrong place."""
    try:
        target = os.readlink(path)
    except (OSError, ValueError):
        return ""
    return f" (a link to {shorten(printable(os.fsdecode(target)))}, which does not exist)"


def check_replaceable(path: str | os.PathLike[str], error: ErrorType, what: str = "file") -> None:
    """Before a file is written over ``path`` (``--force`` included): what is there must be
    nothing, a regular file or a symbolic link (the rename replaces the link, never what it
    points to). A directory, a FIFO, a device or a socket raises ``error`` naming it: renaming
    over ``/dev/null`` would replace the device itself."""
    shown = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise error(f"{shown}: cannot check the {what}: {err.strerror or err}") from None
    if stat.S_ISLNK(info.st_mode):
        return
    kind = kind_of(info.st_mode)
    if kind is not None:
        raise error(f"{shown}: is {kind}; dlcli writes a {what} only over a regular file")


def open_regular(
    path: str | os.PathLike[str], error: ErrorType, what: str = "file"
) -> io.BufferedReader:
    """Open a regular file for reading. Never blocks: a FIFO is refused before ``open`` and,
    should one replace the file in between, the non-blocking open returns at once and
    ``fstat`` refuses it."""
    check_regular(path, error, what)
    shown = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{shown}: {what} not found") from None
    except OSError as err:
        raise error(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise error(f"{shown}: is {kind}, expected a regular {what}")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(
    path: str | os.PathLike[str], max_bytes: int, error: ErrorType, what: str = "file"
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (a larger one is refused unread).

    The size the file has is read, then whatever it grew by meanwhile (a live run's
    ``history.csv``), a chunk at a time: ``read(n)`` allocates ``n`` bytes before it reads,
    so asking for ``max_bytes`` (8 GiB for a data file) would fail under a memory limit."""
    shown = os.fspath(path)
    with open_regular(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(
                f"{shown}: the {what} is {size:,} bytes, more than the {max_bytes:,} allowed"
            )
        try:
            parts = [f.read(size)]
            total = len(parts[0])
            while total <= max_bytes and (
                more := f.read(min(_GROWTH_CHUNK, max_bytes + 1 - total))
            ):
                parts.append(more)
                total += len(more)
        except OSError as err:
            raise error(f"{shown}: cannot read the {what}: {err.strerror or err}") from None
    if total > max_bytes:  # grew while we read it
        raise error(f"{shown}: the {what} is more than the {max_bytes:,} bytes allowed")
    return parts[0] if len(parts) == 1 else b"".join(parts)


_GROWTH_CHUNK = 1 << 20  # what read_bytes asks for at a time past the size a file had


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(data: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (strings skipped), in linear
    time and without recursion."""
    import numpy as np  # not at the top: config.py imports this module, and --help stays fast

    skeleton = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8)
    steps = np.zeros(len(skeleton), dtype=np.int64)
    steps[(skeleton == ord("[")) | (skeleton == ord("{"))] = 1
    steps[(skeleton == ord("]")) | (skeleton == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def parse_json(data: bytes, shown: str, error: ErrorType, what: str = "JSON file") -> Any:
    """Parse JSON ``data`` (UTF-8), refusing more than :data:`~dlcli.limits.JSON_MAX_DEPTH`
    levels before the parser sees it."""
    depth = json_depth(data)
    if depth > limits.JSON_MAX_DEPTH:
        raise error(
            f"{shown}: unreadable {what}: nested {depth} levels deep, more than the "
            f"{limits.JSON_MAX_DEPTH} allowed"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise error(f"{shown}: unreadable {what}: not valid JSON ({shorten(str(err))})") from None


def load_json(path: str | os.PathLike[str], error: ErrorType, what: str = "JSON file") -> Any:
    """Read and parse a JSON file within :mod:`dlcli.limits` (size, depth)."""
    data = read_bytes(path, limits.JSON_MAX_BYTES, error, what)
    return parse_json(data, os.fspath(path), error, what)


def load_csv_numbers(
    path: str | os.PathLike[str], error: ErrorType, what: str = "CSV file"
) -> list[dict[str, float]]:
    """A CSV file of numbers under a header row of names (``history.csv``), one dict per row;
    an empty cell is left out of its row. Within :data:`~dlcli.limits.CSV_MAX_BYTES` and
    :data:`~dlcli.limits.CSV_MAX_VALUES`; a cell that is not a finite number, a row longer or
    shorter than the header, or a header without unique names raises ``error`` naming the file
    and the line."""
    shown = os.fspath(path)
    data = read_bytes(path, limits.CSV_MAX_BYTES, error, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{shown}: unreadable {what}: not UTF-8 text ({err.reason})") from None
    rows: list[dict[str, float]] = []
    header: list[str] | None = None
    values = 0
    for line, cells in csv_lines(text, f"{shown}: unreadable {what}", error):
        values += len(cells)
        if values > limits.CSV_MAX_VALUES:
            raise error(
                f"{shown}: unreadable {what}: more than the {limits.CSV_MAX_VALUES:,} "
                "values allowed"
            )
        if not cells:
            continue  # a blank line
        if header is None:
            header = _csv_header(cells, shown, error, what)
        else:
            rows.append(_csv_row(cells, header, line, shown, error, what))
    return rows


def csv_lines(text: str, shown: str, error: ErrorType) -> Iterator[tuple[int, list[str]]]:
    """Each row of a CSV text with the line it ends on. Strict: a quote never closed raises
    ``error`` naming the line it opened on (not a field running to the end of the file), and
    any row the ``csv`` module refuses (a field beyond its 131,072 characters) names its
    line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise error(
                    f"{shown}: line {start}: a quote opened on this line is never closed"
                ) from None
            raise error(
                f"{shown}: line {reader.line_num}: not a CSV row dlcli can read: "
                f"{shorten(str(err))}"
            ) from None
        if row is None:
            return
        yield reader.line_num, row


def _csv_header(cells: list[str], shown: str, error: ErrorType, what: str) -> list[str]:
    names = [cell.strip() for cell in cells]
    if not all(names) or len(set(names)) < len(names):
        raise error(
            f"{shown}: unreadable {what}: the header {echo(cells)} is not a row of unique "
            "column names"
        )
    return names


def _csv_row(
    cells: list[str], header: list[str], line: int, shown: str, error: ErrorType, what: str
) -> dict[str, float]:
    if len(cells) != len(header):
        raise error(
            f"{shown}: unreadable {what}: line {line} has {len(cells)} values, the header "
            f"names {len(header)} columns"
        )
    row: dict[str, float] = {}
    for name, cell in zip(header, cells, strict=True):
        if not cell.strip():
            continue
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise error(
                f"{shown}: unreadable {what}: line {line}, column {echo(name)}: "
                f"{echo(cell)}, expected a finite number"
            )
        row[name] = value
    return row


def is_plain_name(name: object) -> bool:
    """True for a file name that stays in its directory: no separator, not ``.`` or ``..``,
    no NUL, not hidden, at most 255 characters."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in ("/", "\\", "\0"))
    )


_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """True for a SHA-256 as dlcli writes it: 64 lower-case hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def inside(directory: Path, name: str) -> Path:
    """``directory / name``, checked to resolve inside ``directory`` (a symlink out is not)."""
    path = directory / name
    root = directory.resolve()
    if root not in path.resolve().parents:
        raise ValueError(f"{name!r} leads outside {directory}")
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_tensor(value: object) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, str)


def conforms(saved: Any, fresh: Any, where: str = "") -> str | None:
    """Why ``saved`` (read back from a checkpoint) cannot stand in for ``fresh`` (what the
    object gives now), or None when it can: the same keys, list lengths, kinds of value and
    tensor shapes and dtypes. Where ``fresh`` is None (not set yet), ``saved`` may be None, a
    number or a mapping of tensors."""
    at = where or "/"
    if fresh is None:
        if saved is None or _is_number(saved):
            return None
        if isinstance(saved, dict) and all(_is_tensor(v) for v in saved.values()):
            return None
        return f"{at}: {echo(saved)}, expected null or a number"
    if _is_tensor(fresh):
        if not _is_tensor(saved) or saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            return f"{at}: a tensor {tuple(fresh.shape)} {fresh.dtype} was expected"
        return None
    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            keys = sorted(map(str, saved)) if isinstance(saved, dict) else echo(saved)
            return f"{at}: keys {echo(keys)}, expected {sorted(map(str, fresh))}"
        for key, value in fresh.items():
            problem = conforms(saved[key], value, f"{where}/{key}")
            if problem:
                return problem
        return None
    if isinstance(fresh, list | tuple):
        if not isinstance(saved, list | tuple) or len(saved) != len(fresh):
            return f"{at}: {echo(saved)}, expected a list of {len(fresh)}"
        for i, (a, b) in enumerate(zip(saved, fresh, strict=True)):
            problem = conforms(a, b, f"{where}/{i}")
            if problem:
                return problem
        return None
    if _is_number(fresh):
        return None if _is_number(saved) else f"{at}: {echo(saved)}, expected a number"
    if type(saved) is not type(fresh):
        return f"{at}: {echo(saved)}, expected {type(fresh).__name__}"
    return None
