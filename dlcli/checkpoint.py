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
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dlcli import atomic, limits, store, untrusted
from dlcli.config import PLACEMENT_KEYS, Config, config_differences, dump_yaml, to_dict
from dlcli.errors import ConfigError, ModelDirError, UsageError, named, write_problem

FORMAT = "dlcli-checkpoint/2"  # 2: the optimizer state of one flat tensor (accel.FlatParameters)
LAST, BEST = "last", "best"
CONFIG = "config.yaml"
MODEL = "model.safetensors"
EMA_AVERAGE = "ema/average"  # where a checkpoint's tensors hold training.ema's average
TENSORS = "state.safetensors"
STATE = "state.json"
FILES = (CONFIG, MODEL, TENSORS, STATE)
_TENSOR = "__tensor__"  # {"__tensor__": key} in state.json stands for a tensor in TENSORS

# Keys a resumed run may change: how long to train, where and on what to run, what to record.
RESUMABLE_CHANGES = (
    "training.epochs",
    "training.target",
    "training.stop_at_target",
    # Where and how often checkpoints go, but not the monitor that chose checkpoints/best: a
    # new one compared its values with the old metric's best, reported under its own name.
    *(key for key in PLACEMENT_KEYS if key != "training.checkpoint"),
    "training.checkpoint.every",
    "training.checkpoint.keep_best",
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
        if isinstance(err, OSError | SafetensorError):
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


def _os_message(root: Path, err: BaseException) -> str:
    if getattr(err, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "the directory is not writable"
    else:
        reason = write_problem(err)
    return (
        f"{root}: cannot write a checkpoint: {reason} (the previous checkpoint, if any, is "
        "intact; training.checkpoint.every: 0 turns checkpoints off)"
    )


def split_tensors(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
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

    return walk(obj, ""), tensors


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
    """Verify and read a checkpoint made with ``config`` (up to RESUMABLE_CHANGES).

    What is read is checked for form here (JSON depth, counters in range, every tensor
    referenced exactly once); :func:`check_fits` checks it against the model and optimizer
    before anything is loaded into them."""
    store.verify_manifest(path, FILES)
    check_same_config(path, config)
    check_same_run(path, config)
    try:
        model = load_file(str(path / MODEL))
        tensors = load_file(str(path / TENSORS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{path}: unreadable checkpoint tensors: {err}") from None
    document = untrusted.load_json(path / STATE, ModelDirError, "checkpoint state")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelDirError(
            f"{path / STATE}: unreadable checkpoint state (expected format {FORMAT})"
        )
    raw = document.get("state")
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path / STATE}: unreadable checkpoint state (no 'state' object)")
    state = _join_checked(raw, tensors, path)
    state["model"] = model
    _check_counters(state, path / STATE)
    return Checkpoint(path, state)


def load_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint ``name`` (best, last) of a saved run, verified."""
    path = directory(run_dir) / name
    if not (path / store.MANIFEST).is_file():
        raise ModelDirError(
            f"{run_dir}: no {name} checkpoint ({path}); training.checkpoint writes them "
            f"({_why_none(run_dir, name)})"
        )
    store.verify_manifest(path, FILES)
    try:
        weights = load_file(str(path / MODEL))
        tensors = load_file(str(path / TENSORS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelDirError(f"{path}: unreadable weights: {err}") from None
    return _averaged(weights, tensors, path)


def _why_none(run_dir: Path, name: str) -> str:
    """Why a saved run has no checkpoint ``name``, as its config tells."""
    try:
        written = store.read_saved_config(run_dir / store.CONFIG).training.checkpoint
    except ModelDirError:
        return "or the run predates them"
    if name == BEST and not written.keep_best:
        return "here off: training.checkpoint.keep_best was false"
    if name == BEST:
        return "here keep_best found no epoch to keep, or the run predates them"
    if written.every == 0:
        return "here off: training.checkpoint.every was 0"
    return "or the run predates them"


def _averaged(
    weights: dict[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """With ``training.ema``, the weights a checkpoint's validation scored are its weight
    average (``ema/average/NAME`` in its tensors), not the live weights: those, each checked
    against the live tensor it stands for."""
    prefix = f"/{EMA_AVERAGE}/"
    for key, tensor in tensors.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        like = weights.get(name)
        if like is None or like.shape != tensor.shape or like.dtype != tensor.dtype:
            raise ModelDirError(
                f"{path / TENSORS}: corrupt checkpoint: the weight average's "
                f"{untrusted.echo(name)} fits no weight of {MODEL}"
            )
        weights[name] = tensor
    return weights


def _join_checked(raw: dict[str, Any], tensors: Mapping[str, torch.Tensor], path: Path) -> Any:
    """:func:`join_tensors`, refusing a reference to a missing tensor and a tensor nothing
    refers to (a checkpoint holds exactly what its state names)."""
    used: set[str] = set()

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {_TENSOR}:
                key = obj[_TENSOR]
                if not isinstance(key, str) or key not in tensors or key in used:
                    raise ModelDirError(
                        f"{path / STATE}: refers to tensor {untrusted.echo(key)}, which "
                        f"{TENSORS} does not hold (or which is referred to twice)"
                    )
                used.add(key)
                return tensors[key]
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    joined = walk(raw)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ModelDirError(
            f"{path / TENSORS}: holds tensor {untrusted.echo(unused[0])} that {STATE} does not "
            f"refer to ({len(unused)} such)"
        )
    return joined


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_counters(state: dict[str, Any], shown: Path) -> None:
    """Counters are integers in range, ``fit_seconds`` a finite number, ``history`` one row of
    numbers per completed epoch."""
    for key in ("epoch", "step_in_epoch", "global_step"):
        value = state.get(key)
        top = limits.CHECKPOINT_MAX_EPOCHS if key == "epoch" else limits.INT_MAX
        if not _is_int(value) or not 0 <= value <= top:
            raise ModelDirError(
                f"{shown}: corrupt checkpoint: {key} is {untrusted.echo(value)}, expected an "
                f"integer from 0 to {top}"
            )
    seconds = state.get("fit_seconds")
    if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise ModelDirError(
            f"{shown}: corrupt checkpoint: fit_seconds is {untrusted.echo(seconds)}, expected a "
            "finite number >= 0"
        )
    history = state.get("history")
    if not isinstance(history, list) or len(history) != state["epoch"]:
        found = f"{len(history)} rows" if isinstance(history, list) else untrusted.echo(history)
        raise ModelDirError(
            f"{shown}: corrupt checkpoint: history is {found}, expected one row per completed "
            f"epoch ({state['epoch']})"
        )
    for i, row in enumerate(history):
        if not isinstance(row, dict) or not all(_is_number(v) for v in row.values()):
            raise ModelDirError(
                f"{shown}: corrupt checkpoint: history row {i} is {untrusted.echo(row)}, "
                "expected a mapping of metric names to numbers"
            )


def check_fits(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    train_size: int,
    tools: Mapping[str, Any] | None = None,
) -> None:
    """Check a checkpoint against the model and optimizer it is about to be loaded into: every
    tensor's name, dtype and shape (weights, optimizer state, RNG state, running metrics, the
    early-stopping copy of the weights), the optimizer's groups, and where it stopped against
    this run's epochs and steps. A crafted checkpoint is a :class:`ModelDirError` naming the
    file and the tensor; nothing unchecked reaches a torch kernel."""
    path, state = checkpoint.path, checkpoint.state
    expected = {k: v for k, v in model.state_dict().items()}
    _check_tensors(state["model"], expected, path / MODEL, "weights")
    _check_optimizer(state.get("optimizer"), optimizer, path / TENSORS)
    _check_rng(state.get("rng"), path / TENSORS)
    _check_running(state, path / TENSORS, train_size)
    for key, fresh in (tools or {}).items():  # training.augment / training.ema state
        saved = state.get(key)
        if isinstance(saved, dict) and key == "augment" and saved.get("device") != fresh["device"]:
            # Resumed on another kind of device: the per-image RNG state is not loaded (see
            # dlcli.augment), so only its presence matters.
            fresh = {**fresh, "images": saved.get("images"), "device": saved.get("device")}
        if saved is not None:
            _check_structure(saved, fresh, path / TENSORS, key)
    early = state.get("callbacks", {})
    if not isinstance(early, dict):
        raise ModelDirError(f"{path / STATE}: corrupt checkpoint: callbacks is not a mapping")
    for key, callback_state in early.items():
        best = callback_state.get("best_weights") if isinstance(callback_state, dict) else None
        if best is not None:
            _check_tensors(best, expected, path / TENSORS, f"{key} best_weights")
    epoch, step = checkpoint.epoch, checkpoint.step_in_epoch
    # step == steps_per_epoch is a stop after the epoch's last step, before its end (validation,
    # schedule, checkpoint): resuming runs that end with no steps left to take.
    if step > max(steps_per_epoch, 1):
        raise ModelDirError(
            f"{path / STATE}: corrupt checkpoint: step_in_epoch is {step}, but an epoch of this "
            f"run has {steps_per_epoch} steps"
        )
    needed = epoch + (1 if step else 0)
    if epochs < needed:
        raise UsageError(
            f"training.epochs: {epochs}, but the checkpoint {path} has trained "
            f"{_where(epoch, step)}; resume with {named('set')} training.epochs={needed} or more, "
            f"or train into a new {named('output')}"
        )
    if state["global_step"] > (epoch + 1) * steps_per_epoch:
        raise ModelDirError(
            f"{path / STATE}: corrupt checkpoint: global_step {state['global_step']} is more "
            f"than {epoch + 1} epochs of {steps_per_epoch} steps"
        )


def _describe_tensor(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def _check_tensors(
    saved: Any, expected: Mapping[str, torch.Tensor], shown: Path, what: str
) -> None:
    if not isinstance(saved, dict):
        raise ModelDirError(f"{shown}: corrupt checkpoint: {what} are not a mapping of tensors")
    missing = [name for name in expected if name not in saved]
    extra = [name for name in saved if name not in expected]
    if missing or extra:
        name = (missing or extra)[0]
        problem = "is missing" if missing else "is not a tensor of this model"
        raise ModelDirError(
            f"{shown}: {what}: tensor {untrusted.echo(name)} {problem} "
            f"({len(missing)} missing, {len(extra)} unexpected)"
        )
    for name, like in expected.items():
        _check_like(saved[name], like, shown, f"{what}: tensor {name!r}")


def _check_like(tensor: Any, like: torch.Tensor, shown: Path, what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ModelDirError(
            f"{shown}: {what} is {untrusted.echo(tensor)}, expected a tensor "
            f"{_describe_tensor(like)}"
        )
    if tensor.shape != like.shape or tensor.dtype != like.dtype:
        raise ModelDirError(
            f"{shown}: {what} is {_describe_tensor(tensor)}, the model and optimizer expect "
            f"{_describe_tensor(like)}"
        )


def _reference_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    """The state ``optimizer`` has after one step: the same class and settings stepped once
    over zero tensors shaped like its parameters (what a checkpoint's state must look like)."""
    groups = []
    for group in optimizer.param_groups:
        probes = []
        for p in group["params"]:
            probe = torch.zeros_like(p, requires_grad=True)
            probe.grad = torch.zeros_like(p)
            probes.append(probe)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": probes})
    reference = type(optimizer)(groups)  # type: ignore[call-arg]
    reference.step()
    return dict(reference.state_dict()["state"])


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, shown: Path) -> None:
    current = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ModelDirError(f"{shown}: corrupt checkpoint: no optimizer state")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(current["param_groups"]):
        raise ModelDirError(
            f"{shown}: corrupt checkpoint: the optimizer has {len(current['param_groups'])} "
            f"parameter group(s), the checkpoint {untrusted.echo(groups)}"
        )
    for i, (group, like) in enumerate(zip(groups, current["param_groups"], strict=True)):
        _check_group(group, like, shown, i)
    reference = _reference_optimizer_state(optimizer)
    ids = {str(k) for k in range(sum(len(g["params"]) for g in current["param_groups"]))}
    for key, entry in saved["state"].items():
        if key not in ids:
            raise ModelDirError(
                f"{shown}: optimizer state for parameter {untrusted.echo(key)}, which this "
                f"optimizer does not have (it has {len(ids)})"
            )
        like_entry = reference.get(int(key), {})
        if not isinstance(entry, dict) or set(entry) != set(like_entry):
            found = sorted(entry) if isinstance(entry, dict) else untrusted.echo(entry)
            raise ModelDirError(
                f"{shown}: optimizer state of parameter {key} holds {found}, expected "
                f"{sorted(like_entry)}"
            )
        for name, like in like_entry.items():
            what = f"optimizer state tensor 'optimizer/state/{key}/{name}'"
            if isinstance(like, torch.Tensor):
                _check_like(entry[name], like, shown, what)
            elif type(entry[name]) is not type(like):
                raise ModelDirError(
                    f"{shown}: {what} is {untrusted.echo(entry[name])}, expected "
                    f"{untrusted.echo(like)}"
                )


def _check_group(group: Any, like: Mapping[str, Any], shown: Path, index: int) -> None:
    """A saved parameter group has this optimizer's keys (plus the numbers a learning-rate
    schedule adds, e.g. ``initial_lr``), the same parameter ids, the same flags, and finite
    numbers where this optimizer has numbers."""
    missing = sorted(set(like) - set(group)) if isinstance(group, dict) else sorted(like)
    if missing:
        raise ModelDirError(
            f"{shown}: optimizer parameter group {index} lacks {', '.join(missing)}"
        )
    if group["params"] != like["params"]:
        raise ModelDirError(
            f"{shown}: optimizer parameter group {index} lists parameters "
            f"{untrusted.echo(group['params'])}, expected {like['params']}"
        )
    for key, saved in group.items():
        if key == "params":
            continue
        value = like.get(key, 0.0)  # a key a schedule added: a number
        if isinstance(value, bool) or value is None or isinstance(value, str):
            ok = saved == value and type(saved) is type(value)
        elif isinstance(value, tuple | list):
            ok = isinstance(saved, list | tuple) and len(saved) == len(value)
            ok = ok and all(_is_number(v) and math.isfinite(v) for v in saved)
        else:
            ok = _is_number(saved) and math.isfinite(saved)
        if not ok:
            raise ModelDirError(
                f"{shown}: optimizer parameter group {index}: {key} is {untrusted.echo(saved)}, "
                f"expected {untrusted.echo(value) if key in like else 'a number'}"
            )


def _check_structure(saved: Any, fresh: Any, shown: Path, where: str) -> None:
    """``saved`` has ``fresh``'s form: the same keys and list lengths, tensors of the same
    shape and dtype, integers where it has integers (augmentation RNG states, EMA weights)."""
    what = f"corrupt checkpoint: {where}"
    if isinstance(fresh, torch.Tensor):
        _check_like(saved, fresh, shown, f"tensor {where!r}")
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            raise ModelDirError(f"{shown}: {what} does not hold {', '.join(map(str, fresh))}")
        for key, value in fresh.items():
            _check_structure(saved[key], value, shown, f"{where}/{key}")
    elif isinstance(fresh, list):
        if not isinstance(saved, list) or len(saved) != len(fresh):
            raise ModelDirError(f"{shown}: {what} is not a list of {len(fresh)}")
        for i, (value, like) in enumerate(zip(saved, fresh, strict=True)):
            _check_structure(value, like, shown, f"{where}/{i}")
    elif isinstance(fresh, str) and not isinstance(saved, str):
        raise ModelDirError(f"{shown}: {what} is {untrusted.echo(saved)}, expected a string")
    elif _is_int(fresh) and not (_is_int(saved) and 0 <= saved <= limits.INT_MAX):
        raise ModelDirError(f"{shown}: {what} is {untrusted.echo(saved)}, expected an integer")


def _check_rng(rng: Any, shown: Path) -> None:
    if not isinstance(rng, dict):
        raise ModelDirError(f"{shown}: corrupt checkpoint: no RNG state")
    _check_like(rng.get("torch"), torch.get_rng_state(), shown, "RNG state tensor 'rng/torch'")
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        like = torch.cuda.get_rng_state()
        if not isinstance(cuda, list):
            raise ModelDirError(f"{shown}: corrupt checkpoint: rng/cuda is not a list")
        for i, tensor in enumerate(cuda):
            _check_like(tensor, like, shown, f"RNG state tensor 'rng/cuda/{i}'")


def _check_running(state: Mapping[str, Any], shown: Path, train_size: int) -> None:
    """The metrics of an interrupted epoch: one loss term per step, integer counts."""
    running = state.get("running")
    if running is None:
        return
    what = "corrupt checkpoint: running metrics"
    if not isinstance(running, dict) or set(running) != {"loss_terms", "correct", "top_k", "count"}:
        raise ModelDirError(f"{shown}: {what} are not the four expected entries")
    terms = running["loss_terms"]
    if (
        not isinstance(terms, torch.Tensor)
        or terms.ndim != 1
        or not terms.dtype.is_floating_point
        or len(terms) > max(state["step_in_epoch"], 1)
    ):
        found = _describe_tensor(terms) if isinstance(terms, torch.Tensor) else "not a tensor"
        raise ModelDirError(
            f"{shown}: {what}: tensor 'running/loss_terms' is {found}, expected a float vector "
            f"of at most {state['step_in_epoch']} terms"
        )
    for name in ("correct", "top_k"):
        tensor = running[name]
        if (
            not isinstance(tensor, torch.Tensor)
            or tensor.numel() != 1
            or tensor.dtype.is_floating_point
            or tensor.dtype == torch.bool
        ):
            found = _describe_tensor(tensor) if isinstance(tensor, torch.Tensor) else "missing"
            raise ModelDirError(
                f"{shown}: {what}: tensor 'running/{name}' is {found}, expected one integer"
            )
    count = running["count"]
    if not _is_int(count) or not 0 <= count <= train_size:
        raise ModelDirError(
            f"{shown}: {what}: count is {untrusted.echo(count)}, expected 0 to {train_size}"
        )


def check_same_config(path: Path, config: Config) -> None:
    """Refuse to resume a checkpoint with another model, data or optimisation."""
    from dlcli.config import read_yaml

    try:
        saved = read_yaml(path / CONFIG, saved=True)
    except ConfigError as err:
        raise ModelDirError(f"{path / CONFIG}: unreadable config ({err})") from None
    differences = config_differences(
        saved, to_dict(config), RESUMABLE_CHANGES, ("in the checkpoint", "now")
    )
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ModelDirError(
            f"{path}: model dir from a different config: {shown}. {named('resume')} continues "
            f"a run with the config it started with (only {', '.join(RESUMABLE_CHANGES)} may "
            f"change); train into a new {named('output')} instead"
        )


def check_same_run(path: Path, config: Config) -> None:
    """Refuse a checkpoint that its run dir's own saved config did not make (one copied in from
    another run): resuming it would save another run's model and config over this one's."""
    from dlcli.config import read_yaml

    owner = path.parent.parent  # the run dir (a pending --overwrite run's has no config.yaml)
    if not (owner / store.CONFIG).is_file():
        return
    try:
        saved = read_yaml(owner / store.CONFIG, saved=True)
    except ConfigError as err:
        raise ModelDirError(f"{owner / store.CONFIG}: unreadable config ({err})") from None
    labels = (f"in {owner / store.CONFIG}", "in the checkpoint")
    differences = config_differences(saved, to_dict(config), RESUMABLE_CHANGES, labels)
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ModelDirError(
            f"{path}: a checkpoint of another run: {shown}. Its run dir's config.yaml did not "
            "make it (copied in from another run?): move it away, or resume the run it came from"
        )


def describe(run_dir: Path) -> str | None:
    """``"RUN/checkpoints/last, epoch 3"`` (``, step 7`` inside an epoch), or None if none."""
    path = directory(run_dir) / LAST
    try:
        state = untrusted.load_json(path / STATE, ModelDirError)["state"]
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
    except (ModelDirError, OSError, ValueError, KeyError, TypeError):
        return None
    return f"{path}, {_where(epoch, step)}"
