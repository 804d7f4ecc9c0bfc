"""The run directory: what a trained model is on disk.

    RUN_DIR/config.yaml        the resolved config (rebuilds the model and its data split)
    RUN_DIR/model.safetensors  the weights (no pickle anywhere a user loads from)
    RUN_DIR/metrics.json       final metrics, timings, seed, device, versions, dataset checksums
    RUN_DIR/history.csv        one row per epoch
    RUN_DIR/steps.csv          learning rate and training loss per step (dlcli/steps.py)
    RUN_DIR/data-digests.json  own data: each split's files and their digests (which changed)
    RUN_DIR/manifest.json      format version and the SHA-256 of every file above; written last

A run dir has one writer at a time (:func:`open_output`: an OS lock that dies with its holder).
Its files are written into a temporary folder inside it (one filesystem, even for ``.`` or a
mount point) and moved into place with the manifest last (dlcli.atomic), so an interrupted
save never leaves a half-written model dir; entries dlcli did not write are never touched.
Loading verifies the manifest, so a truncated or altered file is refused rather than
half-trusted.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dlcli import atomic, limits, untrusted
from dlcli.config import Config, parse_config
from dlcli.errors import (
    ConfigError,
    ModelDirError,
    UsageError,
    named,
    write_problem,
)

# The run dir's file names and its manifest check live in torch-free dlcli.manifest (runs list
# uses them without torch); re-exported here, where the run dir is written and loaded.
from dlcli.manifest import CHECKPOINTS as CHECKPOINTS
from dlcli.manifest import CONFIG as CONFIG
from dlcli.manifest import DATA_DIGESTS as DATA_DIGESTS
from dlcli.manifest import FORMAT as FORMAT
from dlcli.manifest import HISTORY as HISTORY
from dlcli.manifest import LOCK as LOCK  # flock()ed by the run dir's one writer
from dlcli.manifest import MANIFEST as MANIFEST
from dlcli.manifest import METRICS as METRICS
from dlcli.manifest import PENDING as PENDING  # an --overwrite run's, until it is saved
from dlcli.manifest import STEPS as STEPS
from dlcli.manifest import WEIGHTS as WEIGHTS
from dlcli.manifest import check_manifest as check_manifest
from dlcli.manifest import (
    finish_interrupted_save,
    left_by_dlcli,
    no_run_dir,
    recover,
    while_unchanged,
)
from dlcli.manifest import is_run_dir as is_run_dir
from dlcli.manifest import sha256_file as sha256_file
from dlcli.manifest import verify_manifest as verify_manifest

TENSORBOARD = "tensorboard"


@dataclass
class Run:
    """A loaded, verified run directory."""

    path: Path
    config: Config
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]


# --- the output directory: one writer, nothing a user owns touched ---------------------------

_OURS = (LOCK, PENDING)  # hidden entries dlcli keeps in a run dir
# What training writes into a run dir; anything else there is the user's (or another command's).
RUN_ENTRIES = (
    MANIFEST,
    CONFIG,
    WEIGHTS,
    METRICS,
    HISTORY,
    STEPS,
    DATA_DIGESTS,
    CHECKPOINTS,
    TENSORBOARD,
)


@dataclass
class Output:
    """A run directory opened for writing: locked, checked, with ``work_dir`` the place its
    checkpoints and event files go while training (``run_dir`` itself, or ``run_dir/.dlcli-
    pending`` when an --overwrite run must leave the previous run untouched until its save)."""

    run_dir: Path
    work_dir: Path
    replaces: bool = False  # the save replaces a previous run's files
    kept: list[str] = field(default_factory=list)  # entries dlcli did not write, left alone
    discarded: str | None = None  # what --overwrite threw away that was not the saved run
    _fd: int | None = None
    _created: list[Path] = field(default_factory=list)

    def release(self) -> None:
        """Give up the lock (the lock file is removed; so is the run dir when this process
        created it and nothing was saved in it)."""
        if self._fd is None:
            return
        atomic.unlock(self.run_dir / LOCK, self._fd)
        self._fd = None
        for folder in self._created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()


def open_output(run_dir: Path, *, overwrite: bool, resume: bool) -> Output:
    """Create and lock ``run_dir`` for one training process, before any data is read.

    Refused (exit 2): a run dir another process is writing (named by its PID), a non-empty
    directory without --overwrite or --resume, and with --overwrite anything that is not a
    dlcli run (its manifest or checkpoints) or empty, and a path that is, or lies under, a
    file. A path that cannot be created or written otherwise (permissions, a full disk) is
    exit 3. The lock is an OS lock (flock): it dies with its holder, so a killed run never
    blocks the next one.
    """
    run_dir = Path(run_dir)
    check_writable(run_dir)  # a file or a device at run_dir (or above it): named, exit 2
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(run_dir)
    except OSError as err:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise ModelDirError(_os_message(run_dir, err)) from None
    output = Output(run_dir, run_dir, _fd=fd, _created=created)
    try:
        _check_contents(output, overwrite=overwrite, resume=resume)
    except BaseException:
        output.release()
        raise
    return output


def check_output_dir(run_dir: Path, *, overwrite: bool, resume: bool = False) -> None:
    """:func:`open_output`'s checks alone, the lock given back at once (the launcher of a
    distributed run checks once; its rank 0 locks)."""
    open_output(run_dir, overwrite=overwrite, resume=resume).release()


def _lock(run_dir: Path) -> int:
    try:
        return atomic.lock(run_dir / LOCK)
    except atomic.Busy as busy:
        who = f"PID {busy.holder}" if busy.holder.isdigit() else "another process"
        raise UsageError(
            f"{run_dir}: in use by another dlcli process ({who}); one process writes a "
            f"run directory at a time: wait for it, or train into another {named('output')}"
        ) from None


def _check_contents(output: Output, *, overwrite: bool, resume: bool) -> None:
    run_dir = output.run_dir
    finish_interrupted_save(run_dir)  # we hold the lock
    entries = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK,))
    output.kept = [name for name in entries if name not in (*RUN_ENTRIES, PENDING)]
    if resume:
        if (run_dir / PENDING / CHECKPOINTS).is_dir():
            output.work_dir, output.replaces = run_dir / PENDING, True
        return
    if not entries:
        return
    if not overwrite:
        raise UsageError(
            f"{run_dir}: output directory is not empty; pass {named('overwrite')} to replace the "
            f"run in it, {named('resume')} to continue it, or {named('output')} DIR for a new run"
        )
    if not is_run_dir(run_dir):
        shown = ", ".join(_entry(run_dir, n) for n in entries[:6])
        more = f" and {len(entries) - 6} more" if len(entries) > 6 else ""
        raise UsageError(
            f"{run_dir}: {named('overwrite')} replaces only a dlcli run (a directory with its "
            f"{MANIFEST} or checkpoints) or an empty directory; this one holds {shown}{more}, "
            f"which dlcli did not write. Nothing was changed: choose another {named('output')}"
        )
    # The previous run stays whole until the new one is saved: train into a side folder.
    if (run_dir / PENDING / CHECKPOINTS).is_dir():  # an earlier --overwrite's, never saved
        output.discarded = (
            f"{run_dir}: the checkpoints of an earlier --overwrite run that was never saved "
            f"({run_dir / PENDING / CHECKPOINTS}) are discarded; the saved run stays until "
            "this one is saved"
        )
    shutil.rmtree(run_dir / PENDING, ignore_errors=True)
    (run_dir / PENDING).mkdir()
    output.work_dir, output.replaces = run_dir / PENDING, True


def _entry(run_dir: Path, name: str) -> str:
    return f"{name}/" if (run_dir / name).is_dir() else name


# --- saving ----------------------------------------------------------------------------------


def save_run(
    output: Output | Path,
    *,
    config: Config,
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    steps: Sequence[Sequence[float]] = (),
    data_digests: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """Write a complete run directory atomically; return its path. ``data_digests``: own
    data's files and digests by split (:data:`DATA_DIGESTS`, left out when empty).

    The files are written into ``RUN_DIR/.dlcli-save-*`` (inside the run dir, so on its
    filesystem even when it is ``.`` or a mount point), fsynced and moved into place with the
    manifest last (:func:`dlcli.atomic.swap_entries`). Nothing the previous run left is moved
    before that: its files are replaced in that one step. The ``checkpoints/`` and
    ``tensorboard/`` written during training are kept (an --overwrite run's replace the old
    ones then); entries dlcli did not write are never touched.
    """
    if not isinstance(output, Output):  # a library caller with a plain path
        output = open_output(Path(output), overwrite=True, resume=True)
        try:
            return save_run(
                output,
                config=config,
                state_dict=state_dict,
                metrics=metrics,
                history=history,
                steps=steps,
                data_digests=data_digests,
            )
        finally:
            output.release()
    run_dir = output.run_dir
    staging: Path | None = None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        staging = atomic.staging_dir(run_dir, atomic.SAVE_PREFIX)
        _write_files(staging, config, state_dict, metrics, history, steps, data_digests or {})
        names = [CONFIG, WEIGHTS, METRICS, HISTORY, STEPS, DATA_DIGESTS]  # absent: the old goes
        sources = {}
        if output.work_dir != run_dir:  # --overwrite: this run's folders replace the old run's
            sources = {kept: output.work_dir / kept for kept in (CHECKPOINTS, TENSORBOARD)}
            names += [CHECKPOINTS, TENSORBOARD]
        atomic.swap_entries(staging, run_dir, names, last=MANIFEST, sources=sources)
        if output.work_dir != run_dir:
            shutil.rmtree(output.work_dir, ignore_errors=True)
            output.work_dir = run_dir
    except (OSError, SafetensorError) as err:
        _discard(staging)
        raise ModelDirError(_os_message(run_dir, err)) from None
    except BaseException:
        _discard(staging)
        raise
    output._created = []  # it holds a run now: keep it
    return run_dir


def _discard(staging: Path | None) -> None:
    """Remove a failed save's staging folder, unless its swap had begun (a rename failed
    midway): then it holds part of the new run, and the next command finishes the save."""
    if staging is not None and not atomic.began(staging):
        shutil.rmtree(staging, ignore_errors=True)


def _write_files(
    staging: Path,
    config: Config,
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    steps: Sequence[Sequence[float]],
    data_digests: Mapping[str, Mapping[str, str]],
) -> None:
    from dlcli.config import dump_yaml

    header = ["The resolved config of this run: defaults filled in, overrides applied."]
    (staging / CONFIG).write_text(dump_yaml(config, header), encoding="utf-8")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT})
    atomic.honour_umask(staging / WEIGHTS)
    (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (staging / HISTORY).write_text(history_csv(history), encoding="utf-8")
    files = [CONFIG, WEIGHTS, METRICS, HISTORY]
    if steps:
        (staging / STEPS).write_text(steps_csv(steps), encoding="utf-8")
        files.append(STEPS)
    if data_digests:
        text = json.dumps(data_digests, indent=1)  # ASCII: odd bytes in names as \udcXX
        (staging / DATA_DIGESTS).write_text(text + "\n", encoding="utf-8")
        files.append(DATA_DIGESTS)
    write_manifest(staging, files)
    atomic.fsync_tree(staging)


def write_manifest(directory: Path, names: Sequence[str]) -> None:
    from dlcli.version import __version__

    manifest = {
        "format": FORMAT,
        "dlcli_version": __version__,
        "files": {name: sha256_file(directory / name) for name in names},
    }
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    atomic.fsync_path(tmp)
    os.replace(tmp, directory / MANIFEST)


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after it, when ``run_dir`` cannot be created or written:
    probe the nearest existing ancestor with a temporary file (removed again)."""
    run_dir = Path(run_dir)
    blocker = untrusted.in_the_way(run_dir)
    if blocker is not None:  # a path that cannot be a directory: a usage error, as -o AFILE
        raise UsageError(f"{run_dir}: cannot save the model there: {blocker}, not a directory")
    ancestor = run_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    probe = ancestor / f".dlcli-write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ModelDirError(_os_message(run_dir, err)) from None


def _os_message(run_dir: Path, err: BaseException) -> str:
    if getattr(err, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{run_dir}: cannot save the model: the output directory is not writable"
    return f"{run_dir}: cannot save the model: {write_problem(err)}"


def history_csv(history: Sequence[Mapping[str, float]]) -> str:
    columns: list[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (int(v) if k == "epoch" else v) for k, v in row.items()})
    return buffer.getvalue()


def steps_csv(rows: Sequence[Sequence[float]]) -> str:
    """``step,epoch,lr,loss`` rows (:class:`dlcli.steps.StepRecorder`) as CSV text."""
    from dlcli.steps import COLUMNS

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([int(row[0]), *row[1:]] for row in rows)
    return buffer.getvalue()


# --- loading -------------------------------------------------------------------------------


def _runs_inside(folder: Path, most: int = 1000) -> list[Path]:
    """Runs (folders with a manifest) directly inside ``folder``, by name; the first ``most``
    entries are looked at, so a huge folder costs no more."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for _, e in zip(range(most), entries, strict=False))
    except OSError:
        return []
    return [folder / n for n in names if (folder / n / MANIFEST).is_file()]


def verify_run(run_dir: Path) -> dict[str, Any]:
    """Check that ``run_dir`` is a complete dlcli run whose files match the manifest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise no_run_dir(run_dir)
    recover(run_dir)
    if not (run_dir / MANIFEST).is_file():
        inside = _runs_inside(run_dir)
        if inside:
            raise ModelDirError(
                f"{run_dir}: a folder of runs, not a run: name one of them, e.g. "
                f"{_quote(inside[0])} (dlcli runs list {_quote(run_dir)} lists them)"
            )
        if not left_by_dlcli(run_dir):  # a folder dlcli never trained into
            raise ModelDirError(
                f"{run_dir}: not a dlcli model directory (no {MANIFEST}, nor what a dlcli run "
                "that did not finish leaves: checkpoints, or its config.yaml and history.csv)"
            )
        resumable = (run_dir / CHECKPOINTS).is_dir()
        raise ModelDirError(
            f"{run_dir}: not a complete dlcli model directory (no {MANIFEST}); "
            "was training interrupted before the model was saved?"
            + (f" Continue it with: dlcli train --resume {_quote(run_dir)}" if resumable else "")
        )
    return verify_manifest(run_dir, (CONFIG, WEIGHTS, METRICS))


def _quote(path: Path) -> str:
    return untrusted.shell_word(path)


def load_run(run_dir: Path) -> Run:
    """Verify and load a run directory (config, weights, metrics); never unpickles. Read
    beside a retrain's save, it is read again once that is done (never a mix of both)."""
    run_dir = Path(run_dir)
    return while_unchanged(run_dir, lambda: _load_run_once(run_dir))


def _load_run_once(run_dir: Path) -> Run:
    verify_run(run_dir)
    config = read_saved_config(run_dir / CONFIG)
    try:
        state_dict = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{run_dir / WEIGHTS}: unreadable weights: {err}") from None
    metrics = untrusted.load_json(run_dir / METRICS, ModelDirError, "metrics file")
    if not isinstance(metrics, dict):
        raise ModelDirError(f"{run_dir / METRICS}: unreadable metrics file (not a JSON object)")
    check_dataset_record(metrics, run_dir / METRICS)
    return Run(run_dir, config, state_dict, metrics)


def read_data_digests(run_dir: Path) -> dict[str, dict[str, str]]:
    """A run's :data:`DATA_DIGESTS` (verified with the run by :func:`load_run`); ``{}`` for a
    run without one (trained on no own data, or before it was recorded) or one that cannot
    be read: its files are then not named, only its splits."""
    path = run_dir / DATA_DIGESTS
    if not path.is_file():
        return {}
    try:
        found = untrusted.load_json(path, ModelDirError, "data digests file")
    except ModelDirError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        str(key): {str(k): str(v) for k, v in files.items()}
        for key, files in found.items()
        if isinstance(files, dict)
    }


def check_dataset_record(metrics: dict[str, Any], shown: Path) -> None:
    """The ``dataset`` record of a run's metrics, as the commands that use the model read it:
    an object whose ``num_classes`` (the model's outputs) is an integer 1 … CLASSES_MAX."""
    if "dataset" not in metrics:
        return
    dataset = metrics["dataset"]
    if not isinstance(dataset, dict):
        raise ModelDirError(
            f"{shown}: unreadable metrics file: dataset is {untrusted.echo(dataset)}, "
            "expected an object"
        )
    num_classes = dataset.get("num_classes")
    if num_classes is None:
        return
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 1 <= num_classes <= limits.CLASSES_MAX
    ):
        raise ModelDirError(
            f"{shown}: unreadable metrics file: dataset.num_classes is "
            f"{untrusted.echo(num_classes)}, expected an integer 1 … {limits.CLASSES_MAX:,}"
        )


def read_saved_config(path: Path) -> Config:
    """A run dir's or checkpoint's ``config.yaml``, read within the config limits."""
    from dlcli.config import read_yaml

    try:
        return parse_config(read_yaml(path, saved=True), source=str(path), saved=True)
    except ConfigError as err:
        message = f"{path}: not a valid dlcli config: {err.message}"
        raise ModelDirError(message, details=err.details) from None
