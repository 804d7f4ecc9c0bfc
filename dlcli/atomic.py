"""Atomic directories: the one home of "stage, fsync, rename into place".

Everything dlcli saves as a directory — a run directory's files, a checkpoint — is written into
a temporary directory *next to* where it goes (so on the same filesystem: a rename never turns
into a cross-device copy), every file is fsynced, and it is renamed into place. What it
replaces is moved aside first and removed last, inside :func:`dlcli.signals.uninterruptible`,
so at every instant there is one complete version:

* :func:`swap_dir` replaces a whole directory (a checkpoint: ``checkpoints/last``);
* :func:`swap_entries` replaces named entries *inside* a directory that stays where it is (a
  run directory, which may be ``.``, a mount point, or hold files dlcli did not write): the old
  manifest goes first, the new one comes last, so a reader never trusts a mix.

Temporary names start with a dot and name what they are (``.last.tmp-1a2b3c4d``,
``.dlcli-save-1a2b3c4d``); a process killed mid-write leaves only those behind.
:func:`remove_abandoned` clears such files from a folder several processes may write at once
(the image cache), where "not mine" does not mean "abandoned": only an old one goes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from dlcli.signals import uninterruptible


def temp_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# A temporary file nobody has written for this long was left by a process that was killed (or
# lost its disk) while writing it: a live writer writes its whole file within seconds of
# creating it, and renames it away at once.
ABANDONED_AFTER_S = 3600.0


def mkstemp_names(prefix: str, suffix: str) -> re.Pattern[str]:
    """The names ``tempfile.mkstemp(prefix=prefix, suffix=suffix)`` gives: 8 characters of
    a-z, 0-9 and _ between the two (what :func:`remove_abandoned` may take as dlcli's)."""
    return re.compile(f"{re.escape(prefix)}[a-z0-9_]{{8}}{re.escape(suffix)}")


def remove_abandoned(
    directory: Path, name: re.Pattern[str], older_than: float = ABANDONED_AFTER_S
) -> list[str]:
    """Delete the regular files of ``directory`` whose whole name matches ``name`` (a
    temporary name dlcli gives) and that were last modified at least ``older_than`` seconds
    ago; the names deleted. A fresher file (another process may be writing it), a link, a
    folder and a file of any other name are kept; nothing here is an error (a file that
    vanishes or cannot be deleted is left to the next call)."""
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not name.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= older_than:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new, empty directory ``parent/PREFIX-xxxxxxxx`` (``parent`` must exist)."""
    path = parent / temp_name(prefix)
    path.mkdir()
    return path


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and every directory, ``root`` last."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def honour_umask(path: Path) -> None:
    """safetensors creates files 0600 whatever the umask; give them the usual mode so a model
    dir archived by CI is readable like every other file in it."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def swap_dir(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target`` (same parent); the old ``target`` is moved aside to
    ``.NAME.old-*`` first and removed last, so a crash in between leaves it complete there."""
    old = target.parent / temp_name(f".{target.name}.old")
    with uninterruptible():
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
        fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def swap_entries(staging: Path, directory: Path, names: Sequence[str], *, last: str) -> None:
    """Move ``staging``'s entries ``names`` (and ``last``, the manifest) into ``directory``.

    ``staging`` must be inside ``directory`` (one filesystem). The entries they replace are
    moved into a ``.dlcli-old-*`` folder first (``last`` before anything else) and removed at
    the end; other entries of ``directory`` are never touched.
    """
    aside = directory / temp_name(".dlcli-old")
    with uninterruptible():
        aside.mkdir()
        for name in [last, *names]:
            if os.path.lexists(directory / name) and not os.path.lexists(aside / name):
                os.rename(directory / name, aside / name)
        for name in [*names, last]:
            if os.path.lexists(staging / name):
                os.rename(staging / name, directory / name)
        fsync_path(directory)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
