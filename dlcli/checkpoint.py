"""Checkpoints: what ``--resume`` continues from, written atomically, read without pickle.

    RUN_DIR/checkpoints/last/     the newest checkpoint (every ``training.checkpoint.every``
                                  epochs, at the end, and when training is interrupted)
    RUN_DIR/checkpoints/best/     the best epoch by ``training.checkpoint.monitor``
        config.yaml               the resolved config the run started with
        model.safetensors         the weights
        state.safetensors         every other tensor: optimizer state, RNG states, ...
        state.json                everything else: epoch, step, history, optimizer and
                                  scheduler settings, callback state (tensors by reference)
        manifest.json             the SHA-256 of the four files above, written last

A checkpoint is written into a temporary sibling and renamed into place; the previous one is
moved aside first and removed last, so at every instant one complete, verifiable checkpoint
exists. Loading verifies the manifest, then reads safetensors and JSON only: a tampered or
planted file is refused, never executed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dlcli import atomic, store
from dlcli.config import Config, dump_yaml, to_dict
from dlcli.errors import ModelDirError

FORMAT = "dlcli-checkpoint/2"  # 2: the optimizer state of one flat tensor (accel.FlatParameters)
LAST, BEST = "last", "best"
CONFIG = "config.yaml"
MODEL = "model.safetensors"
TENSORS = "state.safetensors"
STATE = "state.json"
FILES = (CONFIG, MODEL, TENSORS, STATE)
_TENSOR = "__tensor__"  # {"__tensor__": key} in state.json stands for a tensor in TENSORS

# Keys a resumed run may change: how long to train, where and on what to run, what to record.
RESUMABLE_CHANGES = (
    "training.epochs",
    "training.device",
    "training.checkpoint",
    "training.target",
    "training.stop_at_target",
    "output",
)


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # as Trainer.state_dict() gave it

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def step_in_epoch(self) -> int:
        return int(self.state["step_in_epoch"])

    @property
    def where(self) -> str:
        return _where(self.epoch, self.step_in_epoch)


def _where(epoch: int, step: int) -> str:
    return f"after epoch {epoch}" if not step else f"epoch {epoch + 1}, step {step}"


def directory(run_dir: Path) -> Path:
    return Path(run_dir) / store.CHECKPOINTS


# --- writing -------------------------------------------------------------------------------


def save(run_dir: Path, name: str, config: Config, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (a Trainer state dict) as checkpoint ``name`` of ``run_dir``, atomically."""
    root = directory(run_dir)
    staging: Path | None = None
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        staging = atomic.staging_dir(root, f".{name}.tmp")
        _write(staging, config, state)
        atomic.swap_dir(staging, root / name)
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first; only the empty folders this call made
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError):
            raise ModelDirError(_os_message(root, err)) from None
        raise
    return root / name


def copy(run_dir: Path, source: str, name: str) -> Path:
    """Make checkpoint ``name`` a copy of ``source`` (hard links: files are never rewritten)."""
    root = directory(run_dir)
    staging = root / atomic.temp_name(f".{name}.tmp")
    try:
        shutil.copytree(root / source, staging, copy_function=_link_or_copy)
        atomic.swap_dir(staging, root / name)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelDirError(_os_message(root, err)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / name


def _write(folder: Path, config: Config, state: Mapping[str, Any]) -> None:
    state = dict(state)
    model = {k: _cpu(v) for k, v in state.pop("model").items()}
    plain, tensors = split_tensors(state)
    (folder / CONFIG).write_text(dump_yaml(config), encoding="utf-8")
    save_file(model, str(folder / MODEL), metadata={"format": FORMAT})
    save_file(tensors, str(folder / TENSORS), metadata={"format": FORMAT})
    for name in (MODEL, TENSORS):
        atomic.honour_umask(folder / name)  # safetensors writes 0600 whatever the umask
    document = {"format": FORMAT, "state": plain}
    (folder / STATE).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    store.write_manifest(folder, FILES)
    atomic.fsync_tree(folder)


def _remove_leftovers(root: Path) -> None:
    """Temporary dirs of a process that was killed while writing (one writer per run)."""
    for path in root.glob(".*.tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for name in (LAST, BEST):
        if (root / name).is_dir():
            for path in root.glob(f".{name}.old-*"):
                shutil.rmtree(path, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


def _os_message(root: Path, err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "the directory is not writable"
    else:
        reason = err.strerror or str(err)
    return (
        f"{root}: cannot write a checkpoint: {reason} (the previous checkpoint, if any, is "
        "intact; training.checkpoint.every: 0 turns checkpoints off)"
    )


def split_tensors(obj: Any, key: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Nested dicts/lists with tensors → (JSON-able data with ``{"__tensor__": key}`` in place
    of each tensor, {key: tensor})."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = _cpu(value)
            return {_TENSOR: path}
        if isinstance(value, Mapping):
            return {str(k): walk(v, f"{path}/{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"checkpoint state at {path or '/'}: cannot store {type(value).__name__}")

    return walk(obj, key), tensors


def join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# --- reading -------------------------------------------------------------------------------


def latest(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir``: ``last``, or what a crash mid-swap left."""
    pending = Path(run_dir) / store.PENDING  # an --overwrite run not saved yet comes first
    root = directory(pending if (directory(pending) / LAST).is_dir() else run_dir)
    if (root / LAST).is_dir():
        return root / LAST
    moved_aside = [p for p in root.glob(f".{LAST}.old-*") if (p / store.MANIFEST).is_file()]
    if moved_aside:
        return max(moved_aside, key=lambda p: p.stat().st_mtime)
    if (root / BEST).is_dir():
        return root / BEST
    raise ModelDirError(
        f"{run_dir}: no checkpoint to resume from (expected {root / LAST}); training writes "
        "one every training.checkpoint.every epochs and when it is interrupted"
    )


def load(path: Path, config: Config) -> Checkpoint:
    """Verify and read a checkpoint made with ``config`` (up to RESUMABLE_CHANGES)."""
    store.verify_manifest(path, FILES)
    check_same_config(path, config)
    try:
        model = load_file(str(path / MODEL))
        tensors = load_file(str(path / TENSORS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{path}: unreadable checkpoint tensors: {err}") from None
    try:
        document = json.loads((path / STATE).read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"expected format {FORMAT}")
        state = join_tensors(document["state"], tensors)
        state["model"] = model
        for key in ("epoch", "step_in_epoch", "global_step"):
            state[key] = int(state[key])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelDirError(f"{path / STATE}: unreadable checkpoint state ({err})") from None
    return Checkpoint(path, state)


def load_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint ``name`` (best, last) of a saved run, verified."""
    path = directory(run_dir) / name
    if not (path / store.MANIFEST).is_file():
        why = "keep_best found no epoch to keep" if name == BEST else "checkpoints were off"
        raise ModelDirError(
            f"{run_dir}: no {name} checkpoint ({path}); training.checkpoint writes them "
            f"(here {why}, or the run predates them)"
        )
    store.verify_manifest(path, FILES)
    try:
        return load_file(str(path / MODEL))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{path / MODEL}: unreadable weights: {err}") from None


def check_same_config(path: Path, config: Config) -> None:
    """Refuse to resume a checkpoint with another model, data or optimisation."""
    try:
        saved = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{path / CONFIG}: unreadable config ({err})") from None
    if not isinstance(saved, dict):
        raise ModelDirError(f"{path / CONFIG}: not a dlcli config")
    differences = _differences(saved, to_dict(config), "")
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ModelDirError(
            f"{path}: model dir from a different config: {shown}. --resume continues a run "
            f"with the config it started with (only {', '.join(RESUMABLE_CHANGES)} may change); "
            "train into a new --output instead"
        )


def _differences(saved: Any, current: Any, path: str) -> list[str]:
    if path in RESUMABLE_CHANGES:
        return []
    if isinstance(saved, dict) and isinstance(current, dict):
        found: list[str] = []
        for key in dict.fromkeys([*saved, *current]):
            sub = f"{path}.{key}" if path else str(key)
            if key not in current:
                found += [] if sub in RESUMABLE_CHANGES else [f"{sub} is not in this config"]
            elif key in saved:  # a key the checkpoint predates keeps its default: not compared
                found += _differences(saved[key], current[key], sub)
        return found
    if saved != current:
        return [f"{path} is {saved!r} in the checkpoint, {current!r} now"]
    return []


def describe(run_dir: Path) -> str | None:
    """``"RUN/checkpoints/last, epoch 3"`` (``, step 7`` inside an epoch), or None if none."""
    path = directory(run_dir) / LAST
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))["state"]
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"{path}, {_where(epoch, step)}"
