"""The workflows the commands run, KotlinDL's "training a model" in a few readable steps:
load the archives, split off validation, build the model, fit, evaluate, save.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from dlcli import __version__, checkpoint, distributed, signals, store
from dlcli.callbacks import Checkpointer, build_callbacks, reports
from dlcli.config import Config, DataConfig, TrainingConfig
from dlcli.data.dataset import Dataset, Split, load_archives, load_dataset, split
from dlcli.data.download import default_data_dir
from dlcli.engine import Callback, Logs, Trainer, resolve_device
from dlcli.errors import DataError, Interrupted, ModelDirError, TrainingError, UsageError
from dlcli.metrics import PerClass, confusion_matrix, per_class
from dlcli.model import BuiltModel, build_model
from dlcli.threads import ThreadChoice, apply_threads


@dataclass
class Prepared:
    """Everything a run needs before the first step (what ``train`` announces)."""

    config: Config
    dataset: Dataset
    train: Split
    validation: Split
    model: BuiltModel
    device: torch.device
    run_dir: Path
    resume: checkpoint.Checkpoint | None = None  # --resume: where training continues from
    world: distributed.World = distributed.SINGLE  # this worker's place in a torchrun job
    threads: ThreadChoice | None = None  # training.threads, resolved


@dataclass
class TrainResult:
    run_dir: Path
    history: list[Logs]
    metrics: dict[str, Any] = field(default_factory=dict)


def load_data(data: DataConfig, data_dir: str | None = None) -> Dataset:
    """The dataset a config names: a registry entry, or four explicit IDX archives."""
    if data.dataset is not None:
        root = Path(data_dir or data.data_dir or default_data_dir())
        return load_dataset(data.dataset, root)
    assert data.num_classes is not None  # guaranteed by config validation
    return load_archives(
        str(data.train_images),
        str(data.train_labels),
        str(data.test_images),
        str(data.test_labels),
        data.num_classes,
        class_names=tuple(data.class_names) if data.class_names else None,
    )


def split_train(dataset: Dataset, cfg: Config) -> tuple[Split, Split]:
    """KotlinDL's ``train.split(1 - validation_split)``, seeded (and shuffled unless told not)."""
    return split(
        dataset.train,
        1.0 - cfg.data.validation_split,
        seed=cfg.training.seed,
        shuffle=cfg.data.shuffle_split,
        stratify=cfg.data.stratify,
    )


@distributed.collective_errors
def prepare(
    cfg: Config,
    *,
    overwrite: bool = False,
    resume: bool = False,
    dist_timeout: float | None = None,
) -> Prepared:
    """Load and split the data and build the model, seeded, before any training.

    With ``resume``, the newest checkpoint of the run dir is verified and read first (it must
    come from the same config, up to ``checkpoint.RESUMABLE_CHANGES``). Started by torchrun,
    this process first joins the other workers (``dist_timeout``: see dlcli.distributed); only
    rank 0 writes, and reads the checkpoint for all of them.
    """
    world, device = distributed.init_from_env(cfg.training.device, dist_timeout)
    chosen = apply_threads(cfg.training.threads)  # auto: the free cores (dlcli/threads.py)
    run_dir = Path(str(cfg.output.dir))
    store.check_output_dir(run_dir, overwrite=overwrite, resume=resume)
    if world.is_main:
        store.check_writable(run_dir)
    resumed = world.from_main(
        lambda: checkpoint.load(checkpoint.latest(run_dir), cfg) if resume else None
    )
    dataset = load_data(cfg.data)
    _check_input_shape(cfg, dataset)
    train, validation = split_train(dataset, cfg)
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model, num_classes=dataset.num_classes)
    if overwrite and not resume and world.is_main:
        checkpoint.clear(run_dir)  # a fresh run: stale checkpoints must not be resumed later
    return Prepared(cfg, dataset, train, validation, model, device, run_dir, resumed, world, chosen)


def _check_input_shape(cfg: Config, dataset: Dataset) -> None:
    channels, height, width = dataset.train.images.shape[1:]
    found = [int(height), int(width), int(channels)]
    if list(cfg.model.input_shape) != found:
        raise UsageError(
            f"model.input_shape: the config says {list(cfg.model.input_shape)}, "
            f"but the dataset's images are {found} (height, width, channels)"
        )


@distributed.collective_errors
def train(
    prepared: Prepared, callbacks: Sequence[Callback] = (), *, config_path: Path | None = None
) -> TrainResult:
    """Fit, evaluate on validation and test, and save the run directory.

    SIGINT/SIGTERM stop after the current step with a checkpoint (:class:`Interrupted`, whose
    message says how to resume: ``config_path`` names the config in it).
    """
    cfg = prepared.config
    world = prepared.world
    configured = build_callbacks(cfg, prepared.run_dir)  # the checkpoint callback runs last
    if not world.is_main:  # distributed: rank 0 alone writes (checkpoints, event files)
        configured = [cb for cb in configured if not isinstance(cb, Checkpointer)]
    writers = _output_callbacks(prepared) if world.is_main else []
    trainer = Trainer(
        prepared.model.module,
        cfg.training,
        num_classes=prepared.dataset.num_classes,
        device=prepared.device,
        callbacks=[*callbacks, *writers, *configured, *distributed.test_hooks(world)],
        world=world,
    )
    if prepared.resume is not None:
        checkpoint.check_fits(
            prepared.resume,
            trainer.model,
            trainer.optimizer,
            epochs=cfg.training.epochs,
            steps_per_epoch=math.ceil(len(prepared.train) / cfg.training.batch_size),
            train_size=len(prepared.train),
            tools=trainer.tool_state(),
        )
        trainer.load_state_dict(
            prepared.resume.state, source=str(prepared.resume.path / checkpoint.STATE)
        )
    with signals.stop_on_signals(trainer) as guard, distributed.stop_watchdog(world):
        try:
            history = trainer.fit(prepared.train, prepared.validation)
        except Interrupted as err:
            world.barrier()  # distributed: rank 0's checkpoint is written before the hint
            raise Interrupted(err.message + _resume_hint(prepared, config_path)) from None
        except TrainingError as err:
            raise TrainingError(err.message + _last_good(prepared)) from None
        guard.immediate = True  # no step left to finish: a signal now stops at once
        metrics = _metrics(prepared, trainer) | reports(configured) | world.describe()
        if world.is_main:
            store.save_run(
                prepared.run_dir,
                config=cfg,
                state_dict=trainer.model.state_dict(),
                metrics=metrics,
                history=history,
            )
        world.barrier()  # distributed: the other workers wait for rank 0's save
    return TrainResult(prepared.run_dir, history, metrics)


def _resume_hint(prepared: Prepared, config_path: Path | None) -> str:
    found = checkpoint.describe(prepared.run_dir)
    if found is None:
        return "; no checkpoint was written (training.checkpoint.every is 0, or none was due yet)"
    config = config_path if config_path is not None else "CONFIG"
    return (
        f"; checkpoint saved ({found}). Continue with: "
        f"dlcli train {config} --resume {prepared.run_dir}"
    )


def _last_good(prepared: Prepared) -> str:
    found = checkpoint.describe(prepared.run_dir)
    if found is None:
        return "; no checkpoint was written before it"
    return f"; the last good checkpoint is kept ({found})"


def _output_callbacks(prepared: Prepared) -> list[Callback]:
    """Callbacks the config's ``output`` section asks for (TensorBoard event files)."""
    if not prepared.config.output.tensorboard:
        return []
    from dlcli.tensorboard import TensorBoardLogger

    return [TensorBoardLogger(prepared.run_dir, prepared.config)]


def _metrics(prepared: Prepared, trainer: Trainer) -> dict[str, Any]:
    final_train = {k: v for k, v in trainer.history[-1].items() if k in ("loss", *_metric_keys())}
    dataset = prepared.dataset
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dlcli_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(prepared.device),
        **({"threads": prepared.threads.describe()} if prepared.threads else {}),
        "seed": prepared.config.training.seed,
        "epochs": trainer.epoch,
        "fit_seconds": round(trainer.fit_seconds, 4),
        **_resumed(prepared),
        "train": final_train,
        "validation": trainer.evaluate(prepared.validation, tta=prepared.config.training.tta),
        "test": trainer.evaluate(dataset.test, tta=prepared.config.training.tta),
        **_accuracy_tools(prepared, trainer),
        "params": prepared.model.total_params,
        "dataset": {
            "name": dataset.name,
            "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "train_size": len(prepared.train),
            "validation_size": len(prepared.validation),
            "test_size": len(dataset.test),
            "checksums": dataset.checksums,
        },
    }


def _accuracy_tools(prepared: Prepared, trainer: Trainer) -> dict[str, Any]:
    """What metrics.json says about EMA and TTA when they are on: the saved model is the
    weight average; validation and test were scored with test-time augmentation."""
    found: dict[str, Any] = {}
    if trainer.ema is not None:
        found["ema"] = {**trainer.ema.describe(), "saved_model": "average"}
    if prepared.config.training.tta != "none":
        found["tta"] = prepared.config.training.tta
    return found


def describe_recipe(training: TrainingConfig) -> str:
    """The accuracy tools a run uses, in words ("" when none): what ``train`` announces."""
    parts = []
    augment = training.augment
    if augment is not None:
        names = {
            "translate": f"translate ±{augment.translate}px" if augment.translate else "",
            "flip": "flip" if augment.flip else "",
            "erase": f"random erasing {augment.erase:g}" if augment.erase else "",
            "mixup": f"mixup {augment.mixup:g}" if augment.mixup else "",
            "cutmix": f"cutmix {augment.cutmix:g}" if augment.cutmix else "",
        }
        chosen = [text for text in names.values() if text]
        if chosen:
            parts.append("augmentation (" + ", ".join(chosen) + ")")
    if training.ema is not None:
        parts.append(f"EMA of the weights (decay {training.ema.decay:g}: the saved model)")
    if training.class_weights is not None:
        weights = training.class_weights
        parts.append(f"class weights {weights if isinstance(weights, str) else 'as listed'}")
    if training.tta != "none":
        parts.append(f"test-time augmentation {training.tta}")
    return "; ".join(parts)


def _resumed(prepared: Prepared) -> dict[str, Any]:
    if prepared.resume is None:
        return {}
    resumed = prepared.resume
    return {
        "resumed_from": {
            "checkpoint": str(resumed.path),
            "epoch": resumed.epoch,
            "step_in_epoch": resumed.step_in_epoch,
        }
    }


def _metric_keys() -> tuple[str, ...]:
    return ("accuracy", "top_k_accuracy")


# --- evaluate ------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    run: store.Run
    trainer: Trainer
    built: BuiltModel


def load_model(run_dir: Path, device: str = "auto") -> LoadedModel:
    """Verify a run dir and rebuild its model with the saved weights (CPU if no GPU)."""
    run = store.load_run(run_dir)
    cfg = run.config
    num_classes = int(run.metrics.get("dataset", {}).get("num_classes", 0)) or None
    built = build_model(cfg.model, num_classes=num_classes)
    try:
        built.module.load_state_dict(run.state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ModelDirError(
            f"{run_dir}: the weights do not fit the model its config.yaml describes ({first})"
        ) from None
    trainer = Trainer(
        built.module,
        cfg.training,
        num_classes=built.output_shape[0],
        device=resolve_device("auto" if device == "auto" else device),
    )
    return LoadedModel(run, trainer, built)


@dataclass
class Predictions:
    """True and predicted class indices of one split."""

    split: str
    labels: npt.NDArray[np.int64]
    predicted: npt.NDArray[np.int64]
    class_names: tuple[str, ...]

    def per_class(self) -> PerClass:
        cm = confusion_matrix(self.labels, self.predicted, len(self.class_names))
        return per_class(cm, self.class_names)


@dataclass
class SavedRun:
    """A saved run's model and its data, rebuilt: what evaluate, plot and --per-class share."""

    loaded: LoadedModel
    dataset: Dataset
    tta: str | None = None  # test-time augmentation; None: the run's training.tta

    @property
    def augmentation(self) -> str:
        return self.tta or self.loaded.run.config.training.tta

    def split(self, name: str) -> Split:
        """``validation``, ``test`` or ``train``: the same split the run was trained with."""
        if name == "test":
            return self.dataset.test
        train, validation = split_train(self.dataset, self.loaded.run.config)
        return validation if name == "validation" else train

    def metrics(self, name: str, batch_size: int = 1000) -> Logs:
        """Loss and metrics on a split, with its ``seconds`` and ``samples``."""
        start = time.perf_counter()
        part = self.split(name)
        logs = self.loaded.trainer.evaluate(part, batch_size=batch_size, tta=self.augmentation)
        logs["seconds"] = time.perf_counter() - start
        logs["samples"] = float(len(part))
        return logs

    def predictions(self, name: str, batch_size: int = 1000) -> Predictions:
        part = self.split(name)
        logits = self.loaded.trainer.predict_logits(
            part.images, batch_size=batch_size, tta=self.augmentation
        )
        return Predictions(
            name,
            part.labels.cpu().numpy().astype(np.int64),
            logits.argmax(dim=1).numpy().astype(np.int64),
            tuple(self.dataset.class_names),
        )


def open_run(
    run_dir: Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    accept_changed_data: bool = False,
    changed: list[str] | None = None,
    tta: str | None = None,
) -> SavedRun:
    """Verify and load a run dir's model and the dataset its config names.

    Every data file read is compared with the SHA-256 ``metrics.json`` recorded at training
    time: a changed file is a :class:`DataError` naming it, unless ``accept_changed_data``;
    the changed files' paths are appended to ``changed`` when given. ``tta``: the
    test-time augmentation of its evaluations (None: the run's ``training.tta``)."""
    loaded = load_model(run_dir, device)
    dataset = load_data(loaded.run.config.data, data_dir)
    different = changed_data(loaded.run.metrics, dataset)
    if different and not accept_changed_data:
        path, recorded, found = different[0]
        more = f" (and {len(different) - 1} more)" if len(different) > 1 else ""
        raise DataError(
            f"{path}: changed since the model was trained{more}: its sha256 is {found[:12]}…, "
            f"{run_dir / store.METRICS} records {recorded[:12]}…; pass --accept-changed-data "
            "to use it anyway (evaluate's result then says so)"
        )
    if changed is not None:
        changed += [path for path, _, _ in different]
    return SavedRun(loaded, dataset, tta)


def changed_data(metrics: dict[str, Any], dataset: Dataset) -> list[tuple[str, str, str]]:
    """(path, recorded sha256, sha256 now) of each data file that differs from what the run
    recorded; files the run recorded nothing for are not compared."""
    recorded = metrics.get("dataset", {}).get("checksums", {}) if isinstance(metrics, dict) else {}
    if not isinstance(recorded, dict):
        return []
    return [
        (str(dataset.sources.get(name, name)), str(recorded[name]), sha)
        for name, sha in dataset.checksums.items()
        if name in recorded and recorded[name] != sha
    ]


def evaluate(
    run_dir: Path,
    *,
    splits: Sequence[str] = ("validation",),
    batch_size: int = 1000,
    data_dir: str | None = None,
    device: str = "auto",
    accept_changed_data: bool = False,
    changed: list[str] | None = None,
    tta: str | None = None,
) -> dict[str, Logs]:
    """Rebuild a saved run's data split and report its metrics on the requested splits
    (``accept_changed_data``, ``changed``, ``tta``: see :func:`open_run`)."""
    saved = open_run(
        run_dir,
        data_dir=data_dir,
        device=device,
        accept_changed_data=accept_changed_data,
        changed=changed,
        tta=tta,
    )
    return {name: saved.metrics(name, batch_size) for name in splits}


@dataclass
class SplitReport:
    metrics: Logs
    per_class: PerClass


def evaluate_per_class(
    run_dir: Path,
    *,
    splits: Sequence[str] = ("validation",),
    batch_size: int = 1000,
    data_dir: str | None = None,
    device: str = "auto",
    accept_changed_data: bool = False,
    changed: list[str] | None = None,
    tta: str | None = None,
) -> dict[str, SplitReport]:
    """:func:`evaluate` plus per-class precision/recall/F1 and the confusion matrix."""
    saved = open_run(
        run_dir,
        data_dir=data_dir,
        device=device,
        accept_changed_data=accept_changed_data,
        changed=changed,
        tta=tta,
    )
    return {
        name: SplitReport(
            saved.metrics(name, batch_size), saved.predictions(name, batch_size).per_class()
        )
        for name in splits
    }
