"""``manifest.json``: the SHA-256 of every file a run directory or checkpoint holds.

The one home of the rule that a run's files are what its manifest records (an altered,
truncated or missing file is refused). No torch here: ``dlcli runs list`` and
``dlcli runs compare`` verify the files they show (config, metrics, history) without loading
the weights, and ``dlcli evaluate`` (via :func:`dlcli.store.verify_run`) verifies all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dlcli import atomic, limits, untrusted
from dlcli.errors import ModelDirError, write_problem

FORMAT = "dlcli-run/1"
MANIFEST = "manifest.json"
# The files of a run directory (dlcli/store.py writes them, the manifest last).
CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
STEPS = "steps.csv"
DATA_DIGESTS = "data-digests.json"
LOCK = ".dlcli-lock"  # flock()ed by the one process writing a run dir; holds its PID
PENDING = ".dlcli-pending"  # an --overwrite run's checkpoints, until its save replaces the old run
CHECKPOINTS = "checkpoints"  # what --resume continues from (dlcli/checkpoint.py)


# --- a save killed mid-way: finished by the next command that opens the run dir -------------

_recovered: list[str] = []  # what was recovered, for the command to say (take_recovered)


def finish_interrupted_save(run_dir: Path) -> None:
    """Finish a save of ``run_dir`` that a kill interrupted (:func:`dlcli.atomic.
    recover_entries`) and remove what it left; the caller holds the run dir's lock. What was
    recovered is said once, by the command (:func:`take_recovered`)."""
    try:
        found = atomic.recover_entries(run_dir, MANIFEST)
    except (OSError, ValueError) as err:
        why = write_problem(err) if isinstance(err, OSError) else str(err)
        raise ModelDirError(
            f"{run_dir}: cannot finish a save that was killed mid-way: {why}; nothing was "
            f"deleted (the previous run is in its {atomic.OLD_PREFIX}-* folder, the new one in "
            f"its {atomic.SAVE_PREFIX}-* folder)"
        ) from None
    with contextlib.suppress(OSError):  # what the finished save of an --overwrite run emptied
        (run_dir / PENDING).rmdir()
    if found:
        _recovered.append(f"{run_dir}: {found}")


def recover(run_dir: Path) -> None:
    """:func:`finish_interrupted_save` for a command that reads ``run_dir`` (evaluate, runs
    list): only when a save left something, and only under the run dir's lock; with a writer
    at work (the lock held) or a directory that cannot be written, nothing is done, and the
    run is read as it is."""
    try:
        with os.scandir(run_dir) as entries:
            left = any(e.name.startswith((atomic.SAVE_PREFIX, atomic.OLD_PREFIX)) for e in entries)
    except OSError:
        return
    if not left:
        return
    try:
        fd = atomic.lock(run_dir / LOCK)
    except (atomic.Busy, OSError):
        return
    try:
        finish_interrupted_save(run_dir)
    except ModelDirError:
        pass  # read as it is; the next train into it (which must write) reports the problem
    finally:
        atomic.unlock(run_dir / LOCK, fd)


def take_recovered() -> list[str]:
    """The recoveries made since the last call (the command layer says each in one line)."""
    found = list(_recovered)
    _recovered.clear()
    return found


# --- what is a dlcli run -----------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """Is ``path`` recognisably a dlcli run: its manifest, or (an interrupted run) checkpoints
    with theirs?"""
    if _manifest_format(path / MANIFEST) == FORMAT:
        return True
    checkpoints = [path / CHECKPOINTS, path / PENDING / CHECKPOINTS]
    return any(
        _manifest_format(folder / MANIFEST).startswith("dlcli-checkpoint/")
        for root in checkpoints
        if root.is_dir()
        for folder in root.iterdir()
    )


def left_by_dlcli(path: Path) -> bool:
    """Does folder ``path`` (with no manifest) hold what a dlcli run that did not finish
    leaves: checkpoints with their manifest (:func:`is_run_dir`), the lock of a run under way,
    an --overwrite run's pending folder, a save's staging or set-aside folders, or a saved
    run's config and history whose manifest is gone? A folder with none of these (a study's
    ``plots/``, a git checkout) is not a run at all."""
    try:
        with os.scandir(path) as entries:
            names = {e.name for _, e in zip(range(1000), entries, strict=False)}
    except OSError:
        return False
    ours = (LOCK, PENDING, atomic.SAVE_PREFIX, atomic.OLD_PREFIX)
    if any(name.startswith(ours) for name in names) or {CONFIG, HISTORY} <= names:
        return True
    return is_run_dir(path)


def _manifest_format(path: Path) -> str:
    if not path.is_file():
        return ""
    try:
        manifest = untrusted.load_json(path, ModelDirError, "manifest")
    except ModelDirError:
        return ""
    found = manifest.get("format") if isinstance(manifest, dict) else None
    return found if isinstance(found, str) else ""


def no_run_dir(path: Path, what: str = "model directory") -> ModelDirError:
    """The error for a model directory (``what``) that is not one: a file (or other
    non-directory) at ``path`` is named as such, not reported as missing. Either is a model-dir
    problem, exit 3, in every command (a file was exit 2 where click checked it first, a missing
    folder exit 3)."""
    if os.path.lexists(path) and not path.is_dir():
        try:
            kind = untrusted.kind_of(os.stat(path).st_mode) or "a file"
        except OSError:
            kind = "a link to nothing"
        return ModelDirError(f"{path}: is {kind}, not a {what}")
    return ModelDirError(f"{path}: {what} not found")


def sha256_file(path: Path, max_bytes: int | None = None, what: str = "file") -> str:
    """The SHA-256 of a regular file (a FIFO or a device is a :class:`ModelDirError`); one
    larger than ``max_bytes`` is refused unread, naming it as ``what``."""
    digest = hashlib.sha256()
    with untrusted.open_regular(path, ModelDirError, what) as f:
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise ModelDirError(
                f"{path}: the {what} is {size:,} bytes, more than the {max_bytes:,} allowed"
            )
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


T = TypeVar("T")
SAVE_WAIT_S = 2.0  # how long a reader waits for a save under way in the directory to end


def verify_manifest(
    directory: Path,
    required: Sequence[str],
    *,
    hashed: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, Any]:
    """Check every file ``directory/manifest.json`` lists against its SHA-256 (a run dir or a
    checkpoint); ``required`` names files the manifest must list.

    ``hashed`` (``{name: (max_bytes, what)}``) hashes only those files, each refused when
    larger than the reader of it would accept; the other listed files must be there, but are
    not read (``runs list``: the weights are not hashed). ``None``: every listed file is hashed.

    A check that fails while the manifest is replaced (another process saving the directory:
    a retrain with --overwrite, which moves the new files in, the manifest last) is made again
    once the new manifest is there, for up to :data:`SAVE_WAIT_S`: ``runs list`` beside a
    retrain called the run damaged ("altered or truncated"). A failure with the manifest
    unchanged is the directory's own, reported at once.
    """
    return while_unchanged(directory, lambda: _verify_once(directory, required, hashed))


def while_unchanged(directory: Path, read: Callable[[], T]) -> T:
    """``read()`` (files of ``directory``, checked against its manifest), made again when the
    manifest was replaced meanwhile (another process saving the directory), for up to
    :data:`SAVE_WAIT_S`: a read that failed then, or that mixed the two versions' files
    (verified before the save, read after it), is not the directory's. A failure with the
    manifest unchanged is the directory's own, raised at once."""
    manifest_path = directory / MANIFEST
    deadline = time.monotonic() + SAVE_WAIT_S
    while True:
        before = _identity(manifest_path)
        try:
            result = read()
        except ModelDirError:
            after = _identity(manifest_path)
            if before is None or after == before or time.monotonic() > deadline:
                raise
        else:
            after = _identity(manifest_path)
            if after == before or time.monotonic() > deadline:
                return result
        while after is None and time.monotonic() < deadline:  # mid-save: not yet moved in
            time.sleep(0.01)
            after = _identity(manifest_path)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells one manifest file from the next (inode, size, modification time)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _verify_once(
    directory: Path, required: Sequence[str], hashed: Mapping[str, tuple[int, str]] | None
) -> dict[str, Any]:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ModelDirError(f"{directory}: incomplete: no {MANIFEST}")
    manifest = untrusted.load_json(manifest_path, ModelDirError, "manifest")
    files = check_manifest(manifest, manifest_path)
    for name in required:
        if name not in files:
            raise ModelDirError(f"{manifest_path}: lists no {name}")
    for name, expected in files.items():
        path = directory / name
        try:
            untrusted.inside(directory, name)
        except ValueError:
            raise ModelDirError(f"{path}: refused: a link that leads outside {directory}") from None
        if not path.exists():
            raise ModelDirError(f"{path}: missing (listed in {MANIFEST})")
        if hashed is not None and name not in hashed:
            continue
        max_bytes, what = hashed[name] if hashed is not None else (None, "file")
        found = sha256_file(path, max_bytes, what)
        if found != expected:
            raise ModelDirError(
                f"{path}: altered or truncated: sha256 is {found[:12]}…, "
                f"the manifest expects {expected[:12]}…"
            )
    return dict(manifest)


def check_manifest(manifest: Any, shown: Path) -> dict[str, str]:
    """The ``files`` of a parsed manifest, after checking its form: the format, at most
    ``MANIFEST_MAX_FILES`` entries, each a plain file name (no path: nothing outside the
    directory is ever read) with a SHA-256 of 64 hex digits."""
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{shown}: unreadable manifest (expected a JSON object)")
    if manifest.get("format") != FORMAT:
        found = untrusted.echo(manifest.get("format"))
        raise ModelDirError(f"{shown}: unreadable manifest (format {found}, expected {FORMAT!r})")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelDirError(f"{shown}: unreadable manifest (no 'files' object)")
    if len(files) > limits.MANIFEST_MAX_FILES:
        raise ModelDirError(
            f"{shown}: unreadable manifest ({len(files)} files listed, more than the "
            f"{limits.MANIFEST_MAX_FILES} allowed)"
        )
    for name, digest in files.items():
        if not untrusted.is_plain_name(name):
            raise ModelDirError(
                f"{shown}: refused: lists {untrusted.echo(name)}, which is not a plain file "
                "name in the directory"
            )
        if not untrusted.is_sha256(digest):
            raise ModelDirError(
                f"{shown}: unreadable manifest: the hash of {name} is {untrusted.echo(digest)}, "
                "expected 64 lower-case hex digits (a SHA-256)"
            )
    return files
