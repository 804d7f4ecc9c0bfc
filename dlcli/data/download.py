"""Verified, resumable, atomic downloads of a registry dataset (``dlcli download``).

For each archive of a :class:`~dlcli.data.registry.DatasetEntry`:

1. A file already at ``data_dir/<name>/<filename>`` with the right size and SHA-256 is kept
   ("present"), unless ``force``. One that fails that check was not written by dlcli (only
   verified files get the final name), so it is never deleted or replaced without ``force``:
   :class:`~dlcli.errors.DataError` names it, before anything is fetched for it.
2. Otherwise the mirrors are tried in order (see :func:`resolve_mirrors`). The bytes go to
   ``<filename>.part``; a ``.part`` left by an interrupted transfer is resumed with an HTTP
   ``Range`` request (a server that answers 200 instead of 206 is read from the start; a 416, or
   a resumed file that fails its checksum, deletes the ``.part`` and restarts once from zero).
3. Timeouts, connection errors and 5xx answers are retried ``retries`` times with a short
   backoff, resuming where the transfer stopped; 403, 404 and other 4xx move on to the next mirror
   at once. Besides the per-read ``timeout``, each file has a total ``deadline`` per mirror
   (default :data:`~dlcli.limits.DOWNLOAD_DEADLINE_S`): a mirror that trickles bytes just fast
   enough never to time out is abandoned for the next one (the ``.part`` is kept, so the next
   mirror resumes it).
4. Size, SHA-256 and MD5 are checked *before* ``os.replace`` moves the ``.part`` to its final
   name, so a file under the final name is always a verified one. A ``.part`` that fails its
   checks is deleted; one whose transfer was merely interrupted (timeout, dropped connection,
   Ctrl-C) is kept so that the next run resumes it.

When every mirror fails, :class:`~dlcli.errors.DownloadError` lists each URL tried and what it
answered. ``urllib`` only, and no torch: ``dlcli download`` starts fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shlex
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal
from urllib.error import HTTPError, URLError

from dlcli import limits
from dlcli.data.registry import ArchiveFile, DatasetEntry
from dlcli.errors import DataError, DownloadError, UsageError, file_in_the_way, write_problem
from dlcli.untrusted import echo, in_the_way, kind_of, open_regular, printable
from dlcli.version import __version__

if TYPE_CHECKING:
    from dlcli.config import DataConfig

EventKind = Literal[
    "waiting", "checking", "present", "start", "progress", "retry", "failed", "done"
]

_CHUNK = 1 << 18  # bytes per read, and per progress event
_BACKOFF_S = 0.25  # first retry delay; doubles per retry, at most _MAX_BACKOFF_S
_MAX_BACKOFF_S = 2.0
_USER_AGENT = f"dlcli/{__version__} (python-urllib)"


@dataclass(frozen=True)
class DownloadEvent:
    """What :func:`download_dataset` is doing, for a progress display.

    * ``waiting``: another process is downloading into the dataset's folder (``reason`` says
      so); this one waits for it to finish.
    * ``checking``: verifying an existing file; ``present``: it is valid, kept (``done`` = size).
    * ``start``: a transfer from ``url`` begins at ``done`` bytes (> 0 when resuming) of ``total``.
    * ``progress``: ``done`` of ``total`` bytes are in the ``.part`` file.
    * ``failed``: an attempt at ``url`` failed with ``reason``; ``retry``: the same URL is tried
      again after ``delay`` seconds.
    * ``done``: the file is verified and in place (``done`` = size).
    """

    kind: EventKind
    filename: str
    url: str = ""
    done: int = 0
    total: int = 0
    reason: str = ""
    delay: float = 0.0


@dataclass(frozen=True)
class FileStatus:
    """One archive after :func:`download_dataset`: where it is and how it got there."""

    role: str
    filename: str
    path: Path
    size: int
    sha256: str
    status: Literal["downloaded", "present"]
    url: str | None = None  # where it came from; None when it was already present


def default_data_dir() -> Path:
    """``$DLCLI_DATA_DIR``, else ``data`` (relative to the working directory)."""
    return Path(os.environ.get("DLCLI_DATA_DIR") or "data")


def registry_root(
    data: DataConfig, data_dir: str | None, recorded: dict[str, Any] | None = None
) -> Path:
    """Where a registry dataset is read from: ``--data-dir``, ``data.data_dir``,
    $DLCLI_DATA_DIR, the absolute folder a saved run recorded (when it still exists), data/."""
    if data_dir or data.data_dir:
        return Path(str(data_dir or data.data_dir))
    saved = (recorded or {}).get("data_dir")
    if not os.environ.get("DLCLI_DATA_DIR") and isinstance(saved, str) and Path(saved).is_dir():
        return Path(saved)
    return default_data_dir()


def resolve_mirrors(entry: DatasetEntry, mirrors: Sequence[str] | None = None) -> list[str]:
    """The mirrors to try, in order: ``mirrors`` (the ``--mirror`` options) if given, else those
    in ``$DLCLI_MIRROR`` (separated by whitespace or commas), then the registry's own.

    A mirror is a base URL (the file name is appended), a ``file://`` URL or a local directory.
    """
    explicit = list(mirrors) if mirrors else re.split(r"[\s,]+", os.environ.get("DLCLI_MIRROR", ""))
    ordered = [m.strip() for m in [*explicit, *entry.mirrors] if m.strip()]
    return list(dict.fromkeys(ordered))  # drop repeats, keep the first


def download_dataset(
    entry: DatasetEntry,
    data_dir: Path,
    *,
    mirrors: Sequence[str] | None = None,
    force: bool = False,
    timeout: float = 30.0,
    retries: int = 2,
    deadline: float = limits.DOWNLOAD_DEADLINE_S,
    on_event: Callable[[DownloadEvent], None] | None = None,
) -> list[FileStatus]:
    """Make sure the archives of ``entry`` are in ``data_dir/<entry.name>/``, verified.

    ``timeout`` is in seconds per network operation (connect, each read); ``retries`` is how many
    more times a URL is tried after a timeout, connection error or 5xx; ``deadline`` is the
    total seconds one file may take from one mirror, retries included (then the next mirror is
    tried; a read under way may add up to ``timeout``). Raises
    :class:`DownloadError` when an archive cannot be had from any mirror and :class:`DataError`
    when the folder cannot be written (:class:`UsageError` when the data directory is,
    or lies under, a file).
    """
    emit = on_event or (lambda event: None)
    folder = Path(data_dir) / entry.name
    blocker = file_in_the_way(folder)
    if blocker == folder:  # something of the user's where the dataset's folder goes
        raise DataError(
            f"{folder}: is a file, not a folder: the dataset's files go in a folder there "
            "(move the file away, or choose another --data-dir)"
        )
    if blocker is not None:  # the data directory given cannot be a folder
        raise UsageError(
            f"{data_dir}: cannot keep datasets there: {in_the_way(folder)}, not a folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{folder}: cannot create the folder: {write_problem(err)}") from None
    sources = resolve_mirrors(entry, mirrors)
    for source in sources:
        _check_mirror(source)
    statuses = []
    with _one_download_at_a_time(folder, emit):
        for role, archive in entry.files.items():
            job = _Job(archive, folder / archive.filename, float(timeout), retries, emit, deadline)
            try:
                statuses.append(_ensure(job, role, entry, sources, force))
            except OSError as err:  # the disk, not the network: those are handled per attempt
                job.part.unlink(missing_ok=True)  # what was written cannot be trusted
                raise DataError(f"{job.part}: cannot write: {write_problem(err)}") from None
    return statuses


@contextlib.contextmanager
def _one_download_at_a_time(folder: Path, emit: Callable[[DownloadEvent], None]) -> Iterator[None]:
    """Hold an OS lock (flock) on the dataset's folder itself while downloading into it: two
    ``dlcli download`` at once wrote the same ``.part`` files (both failed: a checksum
    mismatch blamed on a good mirror, a folder said to have vanished). The second waits for
    the first, then finds its files present. The lock dies with its holder; no file is added."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise DataError(f"{folder}: cannot open the folder: {write_problem(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reason = f"another dlcli process is downloading into {folder}; waiting for it"
            emit(DownloadEvent("waiting", "", reason=reason))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def verify_dataset(
    entry: DatasetEntry, data_dir: Path, *, check_sha256: bool = False
) -> dict[str, Path]:
    """The paths of the four archives of ``entry`` in ``data_dir``, by role, after checking that
    each exists with its registry size (and SHA-256 when ``check_sha256``; off by default to keep
    loading fast, since :func:`download_dataset` verified them). Raises :class:`DataError` saying
    which files are missing or damaged and the command that fixes it.
    """
    folder = Path(data_dir) / entry.name
    paths = {role: folder / archive.filename for role, archive in entry.files.items()}
    missing = [a.filename for role, a in entry.files.items() if not paths[role].is_file()]
    fix = _download_command(entry, Path(data_dir))
    if missing:
        raise DataError(
            f"{entry.name} is not in {_show_dir(data_dir)}: missing {', '.join(missing)}. "
            f"Run `{fix}` first."
        )
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:  # hashlib releases the GIL
        checks = [check_sha256] * len(paths)
        problems = pool.map(_problem, entry.files.values(), paths.values(), checks)
        named = zip(paths.values(), problems, strict=True)
        damaged = [f"{path.name}: {problem}" for path, problem in named if problem]
    if damaged:
        raise DataError(
            f"{entry.name} in {_show_dir(folder)} is damaged: {'; '.join(damaged)}. "
            f"Run `{fix} --force` to download it again."
        )
    return paths


def file_digests(path: Path, *, md5: bool = True) -> tuple[int, str, str]:
    """``(size, sha256, md5)`` of a file, hex; ``md5`` is ``""`` when not asked for."""
    sha = hashlib.sha256()
    md = hashlib.md5(usedforsecurity=False) if md5 else None
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            if md is not None:
                md.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), md.hexdigest() if md is not None else ""


# --- one archive ----------------------------------------------------------------------------


@dataclass
class _Job:
    """One archive to fetch: what it must be, where it goes, and every failed attempt so far."""

    archive: ArchiveFile
    dest: Path
    timeout: float
    retries: int
    emit: Callable[[DownloadEvent], None]
    deadline: float = limits.DOWNLOAD_DEADLINE_S  # total seconds per file per mirror
    tried: list[str] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() when this mirror was first tried for the file

    def check_deadline(self, done: int) -> None:
        """Abandon this mirror once the file has taken ``deadline`` seconds from it."""
        spent = time.monotonic() - self.started
        if spent > self.deadline:
            raise _NextMirror(
                f"gave up after {spent:.0f} s, the download deadline per file (--deadline "
                f"{self.deadline:g}), with {done} of {self.archive.size} bytes received"
            )

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    def event(
        self,
        kind: EventKind,
        url: str = "",
        *,
        done: int = 0,
        total: int = 0,
        reason: str = "",
        delay: float = 0.0,
    ) -> None:
        self.emit(DownloadEvent(kind, self.archive.filename, url, done, total, reason, delay))


class _Failure(Exception):
    """An attempt that failed, and why: the reason often quotes the server (its status line,
    a redirect's address), so control characters are shown escaped, never sent to the
    terminal (an escape sequence in a reason phrase recoloured it or retitled its window)."""

    def __init__(self, reason: str) -> None:
        super().__init__(printable(reason))


class _Retry(_Failure):
    """A transient failure (timeout, connection, 5xx): try the same URL again, resuming."""


class _NextMirror(_Failure):
    """This mirror cannot serve the file (4xx, a failed checksum): go on to the next."""


class _Restart(_Failure):
    """The ``.part`` is unusable (416, a resumed file failing its checksum): start from zero."""


def _ensure(
    job: _Job, role: str, entry: DatasetEntry, sources: list[str], force: bool
) -> FileStatus:
    archive = job.archive
    if force:
        job.part.unlink(missing_ok=True)
    elif job.dest.exists():
        job.event("checking")
        problem = _problem(archive, job.dest, True)
        if not problem:
            job.event("present", done=archive.size, total=archive.size)
            return FileStatus(
                role, archive.filename, job.dest, archive.size, archive.sha256, "present"
            )
        raise DataError(
            f"{job.dest}: is not {entry.name}'s {archive.filename} ({problem}); dlcli did not "
            "write it (only verified files get that name), so it is kept: move it away, or pass "
            "--force to replace it with the download"
        )
    _check_part(job)
    for mirror in sources:
        url = _join(mirror, archive.filename)
        try:
            _from_source(job, url)
        except _NextMirror:
            continue
        job.event("done", url, done=archive.size, total=archive.size)
        return FileStatus(
            role, archive.filename, job.dest, archive.size, archive.sha256, "downloaded", url
        )
    raise _all_failed(job, entry, sources)


def _from_source(job: _Job, url: str) -> None:
    """Fetch ``url`` into the ``.part``, verify it and move it into place; retry or restart as
    the failure calls for. Raises :class:`_NextMirror` when this URL will not do."""
    attempt, restarted = 0, False
    job.started = time.monotonic()
    while True:
        try:
            resumed = _fetch(job, url)
            _verify_part(job, resumed)
            os.replace(job.part, job.dest)
            return
        except _Restart as err:
            job.tried.append(f"{url}: {err}")
            job.event("failed", url, reason=str(err))
            if restarted:
                raise _NextMirror(str(err)) from None
            restarted = True
        except _Retry as err:
            attempt += 1
            job.tried.append(f"{url}: {err}" + _attempt_note(attempt, job.retries))
            job.event("failed", url, reason=str(err))
            if attempt > job.retries:
                raise _NextMirror(str(err)) from None
            delay = min(_BACKOFF_S * 2 ** (attempt - 1), _MAX_BACKOFF_S)
            job.event("retry", url, reason=str(err), delay=delay)
            time.sleep(delay)
            try:
                job.check_deadline(0)
            except _NextMirror as late:
                job.tried.append(f"{url}: {late}")
                raise
        except _NextMirror as err:
            job.tried.append(f"{url}: {err}")
            job.event("failed", url, reason=str(err))
            raise


def _check_part(job: _Job) -> None:
    """A ``.part`` dlcli writes is a regular file; anything else under that name (a FIFO blocked
    the download for ever, a link would be written through) is not its own: a
    :class:`DataError` names it, and it is kept."""
    try:
        kind = kind_of(os.lstat(job.part).st_mode)
    except FileNotFoundError:
        return
    if kind is not None:
        raise DataError(
            f"{job.part}: is {kind}, not a partial download dlcli wrote; it is kept: move it "
            "away, or pass --force to replace it"
        )


def _attempt_note(attempt: int, retries: int) -> str:
    return f" (attempt {attempt} of {retries + 1})" if retries else ""


def _fetch(job: _Job, url: str) -> bool:
    """Fill the ``.part`` from ``url``; True when it continued an existing ``.part``."""
    if "://" in url and not url.lower().startswith("file://"):
        return _fetch_http(job, url)
    path = url
    if url.lower().startswith("file://"):
        path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
    _fetch_local(job, Path(path), url)
    return False


def _verify_part(job: _Job, resumed: bool) -> None:
    problem = _problem(job.archive, job.part, True, md5=True)
    if problem:
        job.part.unlink(missing_ok=True)
        if resumed:
            raise _Restart(f"{problem} (after resuming a partial download)")
        raise _NextMirror(problem)


def _problem(archive: ArchiveFile, path: Path, check_sha256: bool, *, md5: bool = False) -> str:
    """What is wrong with ``path`` as a copy of ``archive``, or ``""``."""
    size = path.stat().st_size
    if size != archive.size:
        return f"size mismatch: expected {archive.size} bytes, got {size}"
    if not check_sha256:
        return ""
    _, sha256, md5_hex = file_digests(path, md5=md5 and archive.md5 is not None)
    if sha256 != archive.sha256:
        return f"checksum mismatch: expected sha256 {archive.sha256[:12]}…, got {sha256[:12]}…"
    if md5_hex and md5_hex != archive.md5:
        return f"checksum mismatch: expected md5 {archive.md5}, got {md5_hex}"
    return ""


# --- transfers ------------------------------------------------------------------------------


def _fetch_http(job: _Job, url: str) -> bool:
    offset = _usable_part(job)
    if offset == job.archive.size:  # a complete .part from an earlier run: just verify it
        return True
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with _open_url(urllib.request.Request(url, headers=headers), job) as response:
        if offset and (response.status != 206 or _range_start(response) != offset):
            offset = 0  # the server ignored the range: take the whole file from the start
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        job.event("start", url, done=offset, total=job.archive.size)
        done = _copy(_read_http(response, job), job, offset)
    if expected is not None and done < expected and done <= job.archive.size:
        raise _Retry(f"connection closed after {done} of {expected} bytes")
    return offset > 0


def _open_url(request: urllib.request.Request, job: _Job) -> http.client.HTTPResponse:
    """``urlopen``, with each failure mapped to :class:`_Retry`, :class:`_NextMirror` or
    :class:`_Restart`."""
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=job.timeout)
        return response
    except HTTPError as err:
        err.close()
        raise _http_failure(job, err) from None
    except URLError as err:
        if isinstance(err.reason, OSError):
            raise _Retry(_describe(err.reason, job.timeout)) from None
        raise _NextMirror(str(err.reason)) from None
    except (OSError, http.client.HTTPException) as err:  # raised by getresponse(), not wrapped
        raise _Retry(_describe(err, job.timeout)) from None


def _http_failure(job: _Job, err: HTTPError) -> Exception:
    reason = f"HTTP {err.code} {err.reason}"
    if err.code == 416:  # our .part is longer than the file on this server
        job.part.unlink(missing_ok=True)
        return _Restart(reason)
    if err.code >= 500 or err.code in (408, 429):
        return _Retry(reason)
    return _NextMirror(reason)


def _usable_part(job: _Job) -> int:
    """Bytes of the ``.part`` to resume from; a ``.part`` longer than the file is deleted."""
    try:
        size = job.part.stat().st_size
    except FileNotFoundError:
        return 0
    if size > job.archive.size:
        job.part.unlink()
        return 0
    return size


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _read_http(response: http.client.HTTPResponse, job: _Job) -> Iterator[bytes]:
    """The body in chunks as they arrive (``read1``: a timeout loses nothing already received);
    a timeout or dropped connection becomes :class:`_Retry`, the file's deadline passed
    :class:`_NextMirror`."""
    done = 0
    while True:
        job.check_deadline(done)
        try:
            chunk = response.read1(_CHUNK)
        except (OSError, http.client.HTTPException) as err:
            raise _Retry(_describe(err, job.timeout)) from None
        done += len(chunk)
        if not chunk:
            return
        yield chunk


def _fetch_local(job: _Job, path: Path, shown: str) -> None:
    """Copy a file of a local mirror (a directory or ``file://`` URL) into the ``.part``."""
    if not os.path.lexists(path):
        raise _NextMirror("no such file")
    try:  # a FIFO or a device is refused, never opened: reading one would block or never end
        source = open_regular(path, DataError)
    except DataError as err:
        raise _NextMirror(err.message.removeprefix(f"{os.fspath(path)}: ")) from None
    with source:
        job.event("start", shown, done=0, total=job.archive.size)
        _copy(iter(lambda: source.read(_CHUNK), b""), job, 0)


def _copy(chunks: Iterator[bytes], job: _Job, offset: int) -> int:
    """Append ``chunks`` to the ``.part`` from ``offset``; stop once past the expected size."""
    done = offset
    with open(job.part, "r+b" if offset else "wb") as out:
        _truncate(out, offset)
        for chunk in chunks:
            out.write(chunk)
            done += len(chunk)
            job.event("progress", done=done, total=job.archive.size)
            if done > job.archive.size:  # wrong file: no need to read the rest
                break
    return done


def _truncate(out: BinaryIO, offset: int) -> None:
    out.seek(offset)
    out.truncate()


def _describe(err: BaseException, timeout: float) -> str:
    """A short reason for a network failure: "timed out after 2.0 s", "connection refused"."""
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout!r} s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(err, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name ({err.strerror})"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _check_mirror(mirror: str) -> None:
    """A mirror URL urllib cannot even parse (``http://[::1``, a port above 65535) is a
    :class:`UsageError` naming it, before anything is fetched."""
    if "://" not in mirror or mirror.lower().startswith("file://"):
        return
    try:
        urllib.request.Request(_join(mirror, "x"))
        urllib.parse.urlsplit(mirror).port  # noqa: B018 - parsing it is the check
    except ValueError as err:
        raise UsageError(
            f"mirror {echo(mirror)} is not a valid URL: {printable(str(err))}"
        ) from None


def _join(mirror: str, filename: str) -> str:
    """The address of ``filename`` on ``mirror`` (a base URL or a local directory)."""
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + urllib.parse.quote(filename)
    return os.fspath(Path(mirror).expanduser() / filename)


# --- messages -------------------------------------------------------------------------------


def _all_failed(job: _Job, entry: DatasetEntry, sources: list[str]) -> DownloadError:
    name = job.archive.filename
    if not sources:
        return DownloadError(
            f"no mirror to download {name} of {entry.name} from: pass --mirror URL or set "
            "DLCLI_MIRROR"
        )
    return DownloadError(
        f"could not download {name} of {entry.name} from any of {len(sources)} mirror(s) "
        "(a local copy can be used with --mirror DIR); tried:",
        details=job.tried,
    )


def _show_dir(path: Path) -> str:
    text = os.fspath(path)
    return text if text.endswith(os.sep) else text + os.sep


def _download_command(entry: DatasetEntry, data_dir: Path) -> str:
    command = f"dlcli download {entry.name}"
    if data_dir != default_data_dir():
        command += f" --data-dir {shlex.quote(os.fspath(data_dir))}"
    return command
