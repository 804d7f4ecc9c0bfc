"""What saved runs were: their key config values, final metrics and training summary.

Reads a run directory's ``config.yaml``, ``metrics.json``, ``history.csv`` and
``manifest.json`` as plain data — no torch, no weights — so ``dlcli runs list`` over many runs
stays fast. The files it shows are first checked against the SHA-256 the manifest records
(:func:`dlcli.manifest.verify_manifest`, the check ``dlcli evaluate`` makes; the weights are
only checked to be there, not hashed): a run whose manifest is unreadable or whose files were
edited, truncated or removed is *damaged*, listed apart with the reason, and never compared.
A directory without a manifest that holds what an unfinished run leaves
(:func:`dlcli.manifest.left_by_dlcli`) is an incomplete run (training was interrupted before
the save) and is skipped with a reason; any other folder is not a run, only counted.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlcli import limits, manifest, metric_names, untrusted
from dlcli.errors import ConfigError, ModelDirError, UsageError

# What a person tells runs apart by: the short label (a table column) and its config key path.
KEY_FIELDS: tuple[tuple[str, str], ...] = (
    ("dataset", "data.dataset"),
    ("layers", "model.layers"),
    ("optimizer", "training.optimizer.name"),
    ("lr", "training.optimizer.learning_rate"),
    ("epochs", "training.epochs"),
    ("batch_size", "training.batch_size"),
    ("seed", "training.seed"),
)
DEFAULT_ROOT = Path("runs")  # where dlcli train puts runs, and runs list looks by default
# Config keys that always differ between runs and say nothing about the model.
IGNORED_KEYS = ("output.dir", "data.data_dir")
# What a run's manifest must list, and the files read here: hashed, each within its reader's
# limit (the weights are not read, so not hashed: evaluate does that).
REQUIRED = (manifest.CONFIG, manifest.WEIGHTS, manifest.METRICS, manifest.HISTORY)
SHOWN = {
    manifest.CONFIG: (limits.CONFIG_MAX_BYTES, "config file"),
    manifest.METRICS: (limits.JSON_MAX_BYTES, "metrics file"),
    manifest.HISTORY: (limits.CSV_MAX_BYTES, "history file"),
}


@dataclass
class RunInfo:
    """One complete run directory, read as plain data."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, float]]

    @property
    def name(self) -> str:
        return self.path.name

    def flat_config(self) -> dict[str, Any]:
        """Every config value under its dotted key (layers as one summary string)."""
        return flatten_config(self.config)

    def key_values(self) -> dict[str, Any]:
        flat = self.flat_config()
        return {label: flat.get(key) for label, key in KEY_FIELDS}

    def final_metrics(self) -> dict[str, float]:
        """``val_loss``, ``val_accuracy``, ``test_loss``, ... from metrics.json."""
        out: dict[str, float] = {}
        for split in ("validation", "test"):
            values = self.metrics.get(split)
            if isinstance(values, dict):
                numbers = {k: v for k, v in values.items() if _is_number(v)}
                out |= metric_names.tagged(numbers, split)
        return out

    def summary(self) -> dict[str, Any]:
        dataset = self.metrics.get("dataset")
        train_size = dataset.get("train_size") if isinstance(dataset, dict) else None
        if not isinstance(train_size, int) or isinstance(train_size, bool):
            train_size = None
        monitor, mode, min_delta = monitored_metric(self.config)
        return summarize_history(
            self.history, monitor=monitor, mode=mode, min_delta=min_delta, train_size=train_size
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "created": self.metrics.get("created"),
            "config": self.key_values(),
            "metrics": self.final_metrics(),
            "summary": self.summary(),
        }


@dataclass
class Skipped:
    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class Listing:
    runs: list[RunInfo] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # incomplete or unreadable
    damaged: list[Skipped] = field(default_factory=list)  # failed verification (tampered?)
    missing: bool = False  # the default folder of runs is not there yet (no run trained)
    not_runs: list[Path] = field(default_factory=list)  # folders holding nothing dlcli wrote


@dataclass
class Difference:
    key: str
    values: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "values": self.values}


# --- reading ---------------------------------------------------------------------------------


class DamagedRun(ModelDirError):
    """A run whose manifest is unreadable, or whose files do not match it (edited, truncated,
    removed): its values are not to be trusted. Exit code as :class:`ModelDirError`."""


def read_run(path: Path) -> RunInfo:
    """Read a complete run directory, verified (:func:`verify`); :class:`ModelDirError` says
    why one is not (:class:`DamagedRun` when it fails verification). Every file is read within
    :mod:`dlcli.limits` (regular files only, bounded size and depth)."""
    if not path.is_dir():
        raise manifest.no_run_dir(path)
    manifest.recover(path)  # a save killed mid-way is finished first
    if not (path / manifest.MANIFEST).is_file():
        if not manifest.left_by_dlcli(path):
            raise ModelDirError(f"{path}: not a dlcli run (no files dlcli writes)")
        raise ModelDirError(f"{path}: incomplete run (no manifest.json; training interrupted?)")
    return manifest.while_unchanged(path, lambda: _read_run_once(path))


def _read_run_once(path: Path) -> RunInfo:
    from dlcli.config import read_yaml

    verify(path)
    try:
        config = read_yaml(path / "config.yaml", saved=True)
    except ConfigError as err:
        raise ModelDirError(err.message) from None
    metrics = untrusted.load_json(path / "metrics.json", ModelDirError, "metrics file")
    if not isinstance(metrics, dict):
        raise ModelDirError(f"{path / 'metrics.json'}: unreadable metrics file (not a JSON object)")
    return RunInfo(path, config, metrics, read_history(path / "history.csv"))


def verify(path: Path) -> None:
    """Check the files of run ``path`` that this module shows (config, metrics, history)
    against the SHA-256 its manifest records, and that the weights are there: the rule
    ``dlcli evaluate`` applies (:func:`dlcli.manifest.verify_manifest`), without hashing the
    weights. A failure is a :class:`DamagedRun` naming the file and why."""
    try:
        manifest.verify_manifest(path, REQUIRED, hashed=SHOWN)
    except ModelDirError as err:
        raise DamagedRun(err.message) from None


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv as one dict per epoch (an empty cell is left out of its row), read within
    :data:`~dlcli.limits.CSV_MAX_BYTES` and :data:`~dlcli.limits.CSV_MAX_VALUES`; a missing,
    oversized or malformed file is a :class:`ModelDirError` naming it."""
    return untrusted.load_csv_numbers(path, ModelDirError, "history file")


def read_steps(path: Path) -> list[dict[str, float]]:
    """steps.csv (``step, epoch, lr, loss``) as one dict per row, read within the same limits
    as history.csv; an absent file is no steps (a run saved before they were recorded)."""
    if not os.path.lexists(path):
        return []
    rows = untrusted.load_csv_numbers(path, ModelDirError, "steps file")
    columns = ("step", "epoch", "lr", "loss")
    return [{k: row[k] for k in columns} for row in rows if all(k in row for k in columns)]


def list_runs(root: Path, *, missing_ok: bool = False) -> Listing:
    """Every run directory directly inside ``root`` (or ``root`` itself when it is one).
    ``missing_ok`` (the default folder, :data:`DEFAULT_ROOT`): nothing at ``root`` is no runs
    yet (``missing`` set), not an error."""
    if os.path.lexists(root) and not root.is_dir():
        raise manifest.no_run_dir(root, "directory of runs")
    if missing_ok and not os.path.lexists(root):
        return Listing(missing=True)
    if not root.is_dir():
        raise ModelDirError(f"{root}: no such directory (train a model first: dlcli train CONFIG)")
    manifest.recover(root)
    if (root / "manifest.json").is_file():
        return Listing([read_run(root)])
    listing = Listing()
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (path / manifest.MANIFEST).is_file() or manifest.left_by_dlcli(path):
            _read_into(listing, path)
        else:  # a study's plots/, a checkout: not a run, not an interrupted one either
            listing.not_runs.append(path)
    return listing


def read_runs(paths: Sequence[Path]) -> Listing:
    """The given run directories; incomplete ones are skipped, a missing one is an error."""
    listing = Listing()
    for path in paths:
        if not path.is_dir():
            raise manifest.no_run_dir(path)
        _read_into(listing, path)
    return listing


def _read_into(listing: Listing, path: Path) -> None:
    try:
        listing.runs.append(read_run(path))
    except ModelDirError as err:
        reason = err.message.removeprefix(f"{path}: ").removeprefix(f"{path}{os.sep}")
        (listing.damaged if isinstance(err, DamagedRun) else listing.skipped).append(
            Skipped(path, reason)
        )


# --- comparing -------------------------------------------------------------------------------


def compare(paths: Sequence[Path]) -> tuple[Listing, list[Difference]]:
    """Read the runs and list every config key whose value is not the same in all of them."""
    if len(paths) < 2:
        raise UsageError(f"runs compare: expected at least 2 run directories, found {len(paths)}")
    _refuse_repeats(paths)
    listing = read_runs(paths)
    if listing.damaged:  # a comparison (or a gate on it) never stands on tampered numbers
        raise DamagedRun(
            "runs compare: refused: "
            + "; ".join(f"{s.path}: damaged run: {s.reason}" for s in listing.damaged)
            + " (its files do not match its manifest.json; dlcli evaluate refuses it too)"
        )
    if len(listing.runs) < 2:
        why = "; ".join(f"{s.path}: {s.reason}" for s in listing.skipped)
        raise ModelDirError(f"runs compare: fewer than 2 complete runs to compare ({why})")
    return listing, differences(listing.runs)


def _refuse_repeats(paths: Sequence[Path]) -> None:
    """A run named twice (``a a``, ``a ./a``, a link to it) would be compared with itself:
    refused, naming it, before anything is read."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = Path(os.path.realpath(path))
        if key in seen:
            same = "" if str(seen[key]) == str(path) else f" (the same folder as {seen[key]})"
            raise UsageError(f"runs compare: {path} is given twice{same}; name each run once")
        seen[key] = path


def differences(runs: Sequence[RunInfo]) -> list[Difference]:
    flats = [run.flat_config() for run in runs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    return [
        Difference(key, [flat.get(key) for flat in flats])
        for key in keys
        if key not in IGNORED_KEYS and len({_hashable(flat.get(key)) for flat in flats}) > 1
    ]


@dataclass
class Row:
    """One line of the comparison table: a label, a value per run, whether they differ."""

    label: str
    values: list[Any]
    differs: bool = False
    metric: bool = False  # a final metric or timing (not a config value)
    best: int | None = None  # the index of the best metric value


def comparison_rows(runs: Sequence[RunInfo], diffs: Sequence[Difference]) -> list[Row]:
    """Key config values, then every other config key that differs, then final metrics."""
    differing = {d.key for d in diffs}
    flats = [run.flat_config() for run in runs]
    rows = [
        Row(label, [flat.get(key) for flat in flats], key in differing) for label, key in KEY_FIELDS
    ]
    shown = {key for _, key in KEY_FIELDS}
    rows += [Row(d.key, d.values, True) for d in diffs if d.key not in shown]
    finals = [run.final_metrics() for run in runs]
    names: list[str] = []
    for final in finals:
        names += [k for k in final if k not in names]
    for name in names:
        values = [final.get(name) for final in finals]
        rows.append(Row(name, values, metric=True, best=_best_index(name, values)))
    summaries = [run.summary() for run in runs]
    for key in ("best_epoch", "seconds_per_epoch", "samples_per_second"):
        rows.append(Row(key, [s.get(key) for s in summaries], metric=True))
    return rows


def _best_index(name: str, values: Sequence[Any]) -> int | None:
    numbers = [(v, i) for i, v in enumerate(values) if _is_number(v)]
    if len(numbers) < 2 or len({v for v, _ in numbers}) == 1:
        return None
    return (max if metric_names.mode_of(name) == "max" else min)(numbers)[1]


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if path == "model.layers" and isinstance(value, list):
            out[path] = layers_summary(value)
        elif isinstance(value, dict):
            out |= flatten_config(value, f"{path}.")
        else:
            out[path] = value
    if not prefix and out.get("data.dataset") is None and "data.train_images" in out:
        out["data.dataset"] = "custom"
    return out


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str)


# --- describing ------------------------------------------------------------------------------

_LAYER_ARGS: dict[str, Callable[[Mapping[str, Any]], list[Any]]] = {
    "dense": lambda x: [x.get("units")],
    "conv2d": lambda x: [
        x.get("filters"),
        _size(x.get("kernel_size", 3)),
        *([f"stride {_size(x['strides'])}"] if x.get("strides", 1) not in (1, [1, 1]) else []),
        *(["same"] if x.get("padding") == "same" else []),
    ],
    "max_pool2d": lambda x: [_size(x.get("pool_size", 2))],
    "avg_pool2d": lambda x: [_size(x.get("pool_size", 2))],
    "dropout": lambda x: [x.get("rate")],
    "activation": lambda x: [x.get("activation")],
}


def layers_summary(layers: Sequence[Any]) -> str:
    """``flatten > dense(300, relu) > dense(10)``: the network in one line."""
    parts = []
    for layer in layers:
        if not isinstance(layer, dict):
            parts.append("?")
            continue
        kind = str(layer.get("type"))
        args = _LAYER_ARGS.get(kind, lambda _: [])(layer)
        if kind != "activation" and layer.get("activation") not in (None, "linear"):
            args.append(layer["activation"])
        parts.append(f"{kind}({', '.join(map(str, args))})" if args else kind)
    return " > ".join(parts)


def _size(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    return f"{value}x{value}"


def monitored_metric(config: Mapping[str, Any]) -> tuple[str | None, str, float]:
    """The metric (its mode: auto, min or max; and the ``min_delta`` an improvement must
    beat) that the config's early stopping or checkpointing watches, if it names one: the
    rule that picked the epoch early stopping restores and ``checkpoints/best`` holds."""
    training = config.get("training") or {}
    for section in ("early_stopping", "checkpoint"):
        value = training.get(section) if isinstance(training, dict) else None
        if isinstance(value, dict) and isinstance(value.get("monitor"), str):
            mode = value.get("mode")
            delta = value.get("min_delta", 0.0)
            min_delta = float(delta) if _is_number(delta) and delta > 0 else 0.0
            key = _history_key(value["monitor"])
            return key, mode if mode in ("min", "max") else "auto", min_delta
    return None, "auto", 0.0


def summarize_history(
    history: Sequence[Mapping[str, float]],
    *,
    monitor: str | None = None,
    mode: str = "auto",
    min_delta: float = 0.0,
    train_size: int | None = None,
) -> dict[str, Any]:
    """Epochs trained, best epoch (by ``monitor``, default val_loss, improving by more than
    ``min_delta``: :func:`dlcli.metric_names.best_row`), seconds per epoch and training
    samples per second (medians over the epochs).

    ``mode`` auto: the registry's direction (dlcli.metric_names).
    """
    if not history:
        return {}
    if monitor is None or not any(monitor in row for row in history):
        monitor, mode = next((m for m in ("val_loss", "loss") if m in history[0]), None), "auto"
        min_delta = 0.0
    summary: dict[str, Any] = {"monitor": monitor}
    last = history[-1].get("epoch")  # the epochs trained (training.epochs is the most asked)
    summary["epochs"] = int(last) if last is not None and _is_number(last) else len(history)
    rows = [row for row in history if monitor is not None and _is_number(row.get(monitor))]
    if rows and monitor is not None:
        mode = metric_names.mode_of(monitor, mode)
        best = metric_names.best_row(rows, monitor, mode, min_delta)
        assert best is not None  # rows hold finite values
        summary["best_epoch"] = int(best.get("epoch", history.index(best) + 1))
        summary["best_value"] = best[monitor]
    # Medians over epochs: a first epoch that warms up, or one resumed after a few steps (its
    # time and speed measured over those steps only), does not skew them.
    seconds = [row["seconds"] for row in history if _is_number(row.get("seconds"))]
    if seconds:
        summary["seconds_per_epoch"] = statistics.median(seconds)
    speeds = [row["samples_per_second"] for row in history if row.get("samples_per_second")]
    if speeds:
        summary["samples_per_second"] = statistics.median(speeds)
    elif train_size and seconds and summary["seconds_per_epoch"] > 0:  # an older history.csv
        summary["samples_per_second"] = train_size / summary["seconds_per_epoch"]
    return summary


def _history_key(name: str) -> str:
    """``validation.accuracy`` → ``val_accuracy`` (a name the registry does not know: as is)."""
    if metric_names.problem(name) is None:
        return metric_names.parse(name).history_key
    return name


def _is_number(value: Any) -> bool:
    """A finite int or float (JSON's NaN and Infinity from a crafted metrics.json are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
