"""The run directory: what a trained model is on disk.

    RUN_DIR/config.yaml        the resolved config (rebuilds the model and its data split)
    RUN_DIR/model.safetensors  the weights (no pickle anywhere a user loads from)
    RUN_DIR/metrics.json       final metrics, timings, seed, device, versions, dataset checksums
    RUN_DIR/history.csv        one row per epoch
    RUN_DIR/manifest.json      format version and the SHA-256 of every file above; written last

A run is saved into a temporary sibling directory that is renamed into place, so an
interrupted save never leaves a half-written model dir; loading verifies the manifest, so a
truncated or altered file is refused rather than half-trusted.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dlcli import limits, untrusted
from dlcli.config import Config, parse_config
from dlcli.errors import ConfigError, ModelDirError, UsageError, write_problem
from dlcli.signals import uninterruptible

FORMAT = "dlcli-run/1"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


@dataclass
class Run:
    """A loaded, verified run directory."""

    path: Path
    config: Config
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]


def sha256_file(path: Path) -> str:
    """The SHA-256 of a regular file (a FIFO or a device is a :class:`ModelDirError`)."""
    digest = hashlib.sha256()
    with untrusted.open_regular(path, ModelDirError) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(run_dir: Path, *, overwrite: bool, resume: bool = False) -> None:
    """Refuse to train into a directory that already holds something, unless told to."""
    if overwrite or resume or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: output path exists and is not a directory")
    if any(run_dir.iterdir()):
        raise UsageError(
            f"{run_dir}: output directory is not empty; pass --overwrite to replace it, "
            "--resume to continue it, or --output DIR for a new run"
        )


def save_run(
    run_dir: Path,
    *,
    config: Config,
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
) -> Path:
    """Write a complete run directory atomically (temp dir + rename); return its path.

    The ``checkpoints/`` and ``tensorboard/`` folders already in ``run_dir`` (written during
    training) are kept.
    """
    run_dir = Path(run_dir)
    parent = run_dir.parent
    staging = parent / f".{run_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        _write_files(staging, config, state_dict, metrics, history)
        _swap_into_place(staging, run_dir)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelDirError(_os_message(run_dir, err)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def _write_files(
    staging: Path,
    config: Config,
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
) -> None:
    from dlcli.config import dump_yaml

    (staging / CONFIG).write_text(dump_yaml(config), encoding="utf-8")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(staging / WEIGHTS), metadata={"format": FORMAT})
    _honour_umask(staging / WEIGHTS)
    (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (staging / HISTORY).write_text(history_csv(history), encoding="utf-8")
    write_manifest(staging, [CONFIG, WEIGHTS, METRICS, HISTORY])


def _honour_umask(path: Path) -> None:
    """safetensors creates files 0600 whatever the umask; give them the usual mode so a
    model dir archived by CI is readable like every other file in it."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_manifest(directory: Path, names: Sequence[str]) -> None:
    from dlcli.version import __version__

    manifest = {
        "format": FORMAT,
        "dlcli_version": __version__,
        "files": {name: sha256_file(directory / name) for name in names},
    }
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)


def _swap_into_place(staging: Path, run_dir: Path) -> None:
    # A second Ctrl-C waits for these renames (dlcli.signals): stopping between them would
    # lose the checkpoints moved into staging.
    with uninterruptible():
        if not run_dir.exists():
            os.rename(staging, run_dir)
            return
        for kept in (CHECKPOINTS, TENSORBOARD):  # written during training, outside the manifest
            if (run_dir / kept).is_dir():
                os.rename(run_dir / kept, staging / kept)
        old = run_dir.parent / f".{run_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(run_dir, old)
        os.rename(staging, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after it, when ``run_dir`` cannot be created or written:
    probe the nearest existing ancestor with a temporary file (removed again)."""
    run_dir = Path(run_dir)
    ancestor = run_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ModelDirError(
            f"{run_dir}: cannot save the model there: {ancestor} is a file, not a directory"
        )
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


# --- loading -------------------------------------------------------------------------------


def verify_run(run_dir: Path) -> dict[str, Any]:
    """Check that ``run_dir`` is a complete dlcli run whose files match the manifest."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelDirError(f"{run_dir}: model directory not found")
    if not (run_dir / MANIFEST).is_file():
        resumable = (run_dir / CHECKPOINTS).is_dir()
        raise ModelDirError(
            f"{run_dir}: not a complete dlcli model directory (no {MANIFEST}); "
            "was training interrupted before the model was saved?"
            + (f" Continue it with: dlcli train CONFIG --resume {run_dir}" if resumable else "")
        )
    return verify_manifest(run_dir, (CONFIG, WEIGHTS, METRICS))


def verify_manifest(directory: Path, required: Sequence[str]) -> dict[str, Any]:
    """Check every file ``directory/manifest.json`` lists against its SHA-256 (a run dir or a
    checkpoint); ``required`` names files the manifest must list."""
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
        found = sha256_file(path)
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


def load_run(run_dir: Path) -> Run:
    """Verify and load a run directory (config, weights, metrics); never unpickles."""
    run_dir = Path(run_dir)
    verify_run(run_dir)
    config = read_saved_config(run_dir / CONFIG)
    try:
        state_dict = load_file(str(run_dir / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{run_dir / WEIGHTS}: unreadable weights: {err}") from None
    metrics = untrusted.load_json(run_dir / METRICS, ModelDirError, "metrics file")
    if not isinstance(metrics, dict):
        raise ModelDirError(f"{run_dir / METRICS}: unreadable metrics file (not a JSON object)")
    return Run(run_dir, config, state_dict, metrics)


def read_saved_config(path: Path) -> Config:
    """A run dir's or checkpoint's ``config.yaml``, read within the config limits."""
    from dlcli.config import read_yaml

    try:
        return parse_config(read_yaml(path), source=str(path))
    except ConfigError as err:
        raise ModelDirError(f"{path}: not a valid dlcli config: {err}") from None
