"""The workflows the commands run, KotlinDL's "training a model" in a few readable steps:
load the archives, split off validation, build the model, fit, evaluate, save.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dlcli import __version__, store
from dlcli.config import Config, DataConfig
from dlcli.data.dataset import Dataset, Split, load_archives, load_dataset, split
from dlcli.data.download import default_data_dir
from dlcli.engine import Callback, Logs, Trainer, resolve_device
from dlcli.errors import ModelDirError, UsageError
from dlcli.model import BuiltModel, build_model


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


def prepare(cfg: Config, *, overwrite: bool = False) -> Prepared:
    """Load and split the data and build the model, seeded, before any training."""
    run_dir = Path(str(cfg.output.dir))
    store.check_output_dir(run_dir, overwrite=overwrite)
    device = resolve_device(cfg.training.device)
    dataset = load_data(cfg.data)
    _check_input_shape(cfg, dataset)
    train, validation = split_train(dataset, cfg)
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model, num_classes=dataset.num_classes)
    return Prepared(cfg, dataset, train, validation, model, device, run_dir)


def _check_input_shape(cfg: Config, dataset: Dataset) -> None:
    channels, height, width = dataset.train.images.shape[1:]
    found = [int(height), int(width), int(channels)]
    if list(cfg.model.input_shape) != found:
        raise UsageError(
            f"model.input_shape: the config says {list(cfg.model.input_shape)}, "
            f"but the dataset's images are {found} (height, width, channels)"
        )


def train(prepared: Prepared, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Fit, evaluate on validation and test, and save the run directory."""
    cfg = prepared.config
    trainer = Trainer(
        prepared.model.module,
        cfg.training,
        num_classes=prepared.dataset.num_classes,
        device=prepared.device,
        callbacks=callbacks,
    )
    history = trainer.fit(prepared.train, prepared.validation)
    metrics = _metrics(prepared, trainer)
    store.save_run(
        prepared.run_dir,
        config=cfg,
        state_dict=trainer.model.state_dict(),
        metrics=metrics,
        history=history,
    )
    return TrainResult(prepared.run_dir, history, metrics)


def _metrics(prepared: Prepared, trainer: Trainer) -> dict[str, Any]:
    final_train = {k: v for k, v in trainer.history[-1].items() if k in ("loss", *_metric_keys())}
    dataset = prepared.dataset
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dlcli_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(prepared.device),
        "seed": prepared.config.training.seed,
        "epochs": trainer.epoch,
        "fit_seconds": round(trainer.fit_seconds, 4),
        "train": final_train,
        "validation": trainer.evaluate(prepared.validation),
        "test": trainer.evaluate(dataset.test),
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


def evaluate(
    run_dir: Path,
    *,
    splits: Sequence[str] = ("validation",),
    batch_size: int = 1000,
    data_dir: str | None = None,
    device: str = "auto",
) -> dict[str, Logs]:
    """Rebuild a saved run's data split and report its metrics on the requested splits."""
    loaded = load_model(run_dir, device)
    cfg = loaded.run.config
    dataset = load_data(cfg.data, data_dir)
    parts: dict[str, Callable[[], Split]] = {
        "validation": lambda: split_train(dataset, cfg)[1],
        "test": lambda: dataset.test,
        "train": lambda: split_train(dataset, cfg)[0],
    }
    results: dict[str, Logs] = {}
    for name in splits:
        start = time.perf_counter()
        part = parts[name]()
        results[name] = loaded.trainer.evaluate(part, batch_size=batch_size)
        results[name]["seconds"] = time.perf_counter() - start
        results[name]["samples"] = float(len(part))
    return results
