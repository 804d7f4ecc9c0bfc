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
``.dlcli-save-1a2b3c4d``); a process killed mid-write leaves only those behind. A process
killed *between* :func:`swap_entries`' renames (SIGKILL, a power cut: nothing held back) leaves
a directory without its manifest, the previous version in ``.dlcli-old-*`` and the new one
partly in its staging folder: :func:`recover_entries` finishes that swap (the staging folder
records what it held before the first rename), so the complete version is never deleted.
:func:`remove_abandoned` clears such files from a folder several processes may write at once
(the image cache), where "not mine" does not mean "abandoned": only an old one goes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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
    directory: Path,
    name: re.Pattern[str],
    older_than: float = ABANDONED_AFTER_S,
    *,
    unless_locked: bool = False,
) -> list[str]:
    """Delete the regular files of ``directory`` whose whole name matches ``name`` (a
    temporary name dlcli gives) and that were last modified at least ``older_than`` seconds
    ago; the names deleted. A fresher file (another process may be writing it), a link, a
    folder and a file of any other name are kept; nothing here is an error (a file that
    vanishes or cannot be deleted is left to the next call). ``unless_locked``: a file another
    process holds an ``flock`` on (a shared one: it has the file in use) is kept too."""
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
                if unless_locked:
                    if not _unlink_unlocked(entry.path):
                        continue
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


class Busy(Exception):
    """:func:`lock`: another process holds the lock; ``holder`` is what it wrote (its PID)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def lock(path: Path) -> int:
    """Take the OS lock (flock, not waiting) on the file ``path``, created if need be, and
    write this process's PID into it; the open descriptor. :class:`Busy` when another process
    holds it (the lock dies with its holder: a killed process never keeps it)."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise Busy(holder) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file after we opened it: lock the file
        # that is there now.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock(path: Path, fd: int) -> None:
    """Give back :func:`lock`'s lock: the file is removed, then the descriptor closed."""
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


def _unlink_unlocked(path: str) -> bool:
    """Unlink ``path`` under an exclusive ``flock`` taken without waiting (the file is still
    the one locked); ``False``, and nothing removed, when another process holds a lock on it."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            return False  # replaced meanwhile: not the file that was judged unused
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def temp_sibling(path: Path) -> Path:
    """A temporary name next to ``path``, this writer's own (``.NAME.tmp-1a2b3c4d``), to
    write and then rename to ``path``. The ones writers killed while writing left beside it
    (as :func:`remove_abandoned` judges: an hour old) are removed first, so none stays
    forever; ``path``'s folder must exist."""
    remove_abandoned(path.parent, re.compile(re.escape(f".{path.name}.tmp-") + "[0-9a-f]{8}"))
    return path.with_name(temp_name(f".{path.name}.tmp"))


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


SAVE_PREFIX = ".dlcli-save"  # a directory's staging folders (swap_entries' new entries)
OLD_PREFIX = ".dlcli-old"  # what swap_entries moved aside
PLAN = ".dlcli-plan.json"  # in a staging folder: swap_entries began; what it held then


def swap_entries(
    staging: Path,
    directory: Path,
    names: Sequence[str],
    *,
    last: str,
    sources: Mapping[str, Path] | None = None,
) -> None:
    """Move ``staging``'s entries ``names`` (and ``last``, the manifest) into ``directory``;
    ``sources`` names entries that come from elsewhere in ``directory`` instead
    (``{name: path}``: an --overwrite run's checkpoints), moved into ``staging`` first.

    ``staging`` must be inside ``directory`` (one filesystem). The entries they replace are
    moved into a ``.dlcli-old-*`` folder first (``last`` before anything else) and removed at
    the end; other entries of ``directory`` are never touched. Before the first rename the
    plan (``names``, ``last``, the sources and which entries there are) is written into
    ``staging`` and flushed: from then on the swap is decided, and :func:`recover_entries`
    finishes it after a kill.
    """
    moved = {name: str(path.relative_to(directory)) for name, path in (sources or {}).items()}
    present = [
        name
        for name in [*names, last]
        if os.path.lexists(staging / name)
        or (name in moved and os.path.lexists(directory / moved[name]))
    ]
    plan = _Plan(list(names), last, present, moved)
    with uninterruptible():  # a signal waits: no plan is ever left without its swap
        try:
            (staging / PLAN).write_text(json.dumps(asdict(plan)) + "\n", encoding="utf-8")
            fsync_path(staging / PLAN)
            fsync_path(staging)
        except BaseException:  # not written whole (a full disk): no swap began
            (staging / PLAN).unlink(missing_ok=True)
            raise
        _finish(staging, directory, plan, None)


def began(staging: Path) -> bool:
    """Did :func:`swap_entries` begin moving ``staging``'s entries (its plan is written)?
    Then ``staging`` holds part of the new version: it is for :func:`recover_entries` to
    finish, never to delete."""
    return os.path.lexists(staging / PLAN)


@dataclass
class _Plan:
    names: list[str]  # what is swapped in, in this order
    last: str  # the manifest: moved aside first, in last
    present: list[str]  # which of them there were (in the staging folder or at their source)
    sources: dict[str, str]  # name: where it comes from (relative to the directory)


def _finish(staging: Path, directory: Path, plan: _Plan, aside: Path | None) -> None:
    """Swap ``staging``'s entries in as ``plan`` says, from wherever a killed swap stopped:
    an entry of ``directory`` is the new one when the plan says there was one and neither
    staging nor its source holds it any more (it was moved in); every other one is the
    previous version's, and goes aside (into ``aside``, a killed swap's folder, or a new one)
    before the new ones come in."""
    names, last = plan.names, plan.last
    for name, source in plan.sources.items():
        if os.path.lexists(directory / source) and not os.path.lexists(staging / name):
            os.rename(directory / source, staging / name)
    moved_in = {name for name in plan.present if not os.path.lexists(staging / name)}
    if aside is None:
        aside = directory / temp_name(OLD_PREFIX)
        aside.mkdir()
    for name in [last, *names]:
        if name in moved_in or not os.path.lexists(directory / name):
            continue
        if os.path.lexists(aside / name):  # never the case: both are the previous version's
            raise FileExistsError(errno.EEXIST, "moved aside twice", str(aside / name))
        os.rename(directory / name, aside / name)
    for name in [*names, last]:
        if os.path.lexists(staging / name):
            os.rename(staging / name, directory / name)
    fsync_path(directory)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover_entries(directory: Path, last: str) -> str | None:
    """Finish what a :func:`swap_entries` killed in ``directory`` left; what was recovered,
    in words, or ``None`` when nothing was. The caller holds the directory's one-writer lock.

    * a staging folder with a plan: the swap had begun; it is finished (the new version,
      complete before the first rename, is put in place; the previous one is removed);
    * else, ``last`` missing from ``directory`` and a ``.dlcli-old-*`` folder holding it (a
      swap of a dlcli that wrote no plan): the previous version is put back where nothing
      took its place;
    * then the rest (staging folders without a plan: a save killed before it was complete;
      emptied ``.dlcli-old-*`` folders) is removed, but never a folder holding ``last`` while
      ``directory`` has none: that one is kept, and named.
    """
    stagings = _leftovers(directory, SAVE_PREFIX)
    asides = _leftovers(directory, OLD_PREFIX)
    done: str | None = None
    planned = [s for s in stagings if os.path.isfile(s / PLAN)]
    if planned:
        plan = _read_plan(planned[0] / PLAN)
        _finish(planned[0], directory, plan, asides[0] if len(asides) == 1 else None)
        done = "finished a save that was interrupted while moving its files into place"
    elif not os.path.lexists(directory / last):
        whole = [a for a in asides if os.path.isfile(a / last)]
        if whole:
            for entry in sorted(os.listdir(whole[0])):
                if not os.path.lexists(directory / entry):
                    os.rename(whole[0] / entry, directory / entry)
            fsync_path(directory)
            done = "restored the previous run, moved aside by a save that was killed"
    for path in _leftovers(directory, SAVE_PREFIX) + _leftovers(directory, OLD_PREFIX):
        if not os.path.lexists(directory / last) and os.path.isfile(path / last):
            kept = f"{path.name} holds the only copy of a run and is kept"
            return f"{done}; {kept}" if done else kept
        shutil.rmtree(path, ignore_errors=True)
    return done


def _leftovers(directory: Path, prefix: str) -> list[Path]:
    return sorted(p for p in directory.glob(f"{prefix}-*") if p.is_dir() and not p.is_symlink())


def _read_plan(path: Path) -> _Plan:
    """A plan :func:`swap_entries` wrote (and flushed before it renamed anything); one that
    does not read as one is a :class:`ValueError` naming it."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        plan = _Plan(
            list(found["names"]), found["last"], list(found["present"]), dict(found["sources"])
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable save plan ({err})") from None
    entries = [*plan.names, plan.last, *plan.present, *plan.sources]
    parts = [part for source in plan.sources.values() for part in str(source).split("/")]
    plain = all(isinstance(e, str) and e not in ("", ".", "..") for e in [*entries, *parts])
    if not plain or any("/" in e for e in entries):
        raise ValueError(f"{path}: unreadable save plan (not plain names in the directory)")
    return plan
