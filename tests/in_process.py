"""Runs trained in this process through the pipeline, for the tests that compare whole runs
(resume to the same bytes, the accuracy tools, the explicit step): a tiny learnable dataset and
config, and a callback that stops a run as a signal would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dlcli import pipeline
from dlcli.config import load_config
from dlcli.data.idx import write_idx
from dlcli.engine import Trainer
from dlcli.errors import Interrupted
from dlcli.hooks import Callback


def write_dataset(folder: Path, train: int = 4000, test: int = 200) -> dict[str, Any]:
    """``data`` keys of 8x8 images whose class lights up one row, plus noise (learnable in a
    few steps): four IDX archives in ``folder``, 4 classes."""
    rng = np.random.default_rng(0)
    files: dict[str, Any] = {}
    for part, n in (("train", train), ("test", test)):
        labels = rng.integers(0, 4, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
        images[np.arange(n), labels * 2, :] = 250
        for kind, array in (("images", images), ("labels", labels)):
            path = folder / f"{part}-{kind}.gz"
            write_idx(path, array)
            files[f"{part}_{kind}"] = str(path)
    return {**files, "num_classes": 4}


CONV_NET: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same"},
    {"type": "batch_norm"},
    {"type": "activation", "activation": "relu"},
    {"type": "flatten"},
    {"type": "dropout", "rate": 0.2},
    {"type": "dense", "units": 4},
]


def write_run_config(
    folder: Path,
    *,
    layers: list[dict[str, Any]] | None = None,
    name: str = "run",
    images: tuple[int, int] = (300, 60),
    validation_split: float = 0.2,
    **training: Any,
) -> Path:
    """8x8 images whose class lights up one row (``images``: train and test counts, 4
    classes); ``layers`` (default: a conv net with batch norm and dropout); 3 epochs of
    one-cycle at batch 32, with the ``training`` keys given; saved as ``folder/<name>.yaml``,
    training into ``folder/runs/<name>``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "data": {**write_dataset(folder, *images), "validation_split": validation_split},
        "model": {
            "input_shape": [8, 8, 1],
            "layers": CONV_NET if layers is None else layers,
        },
        "training": {
            "epochs": 3,
            "batch_size": 32,
            "optimizer": {"learning_rate": 0.01},
            "lr_schedule": {"name": "one_cycle"},
            **training,
        },
        "output": {"dir": str(folder / "runs" / name)},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


EPOCHS = 3  # write_config's run length: a stop after epoch 1 still leaves two epochs to run
# write_config's images for a test that needs a run or a checkpoint, not a stop mid-run:
# 300 training images, 30 steps an epoch (the default's 300 steps leave time to stop one).
SMALL = (400, 40)

DROPOUT_MLP: list[dict[str, Any]] = [
    {"type": "flatten"},
    {"type": "dense", "units": 32, "activation": "relu"},
    {"type": "dropout", "rate": 0.3},
    {"type": "dense", "units": 4},
]


def write_config(
    folder: Path, name: str = "run", images: tuple[int, int] = (4000, 200), **training: Any
) -> Path:
    """The resume tests' run: a small MLP with dropout (global RNG) and one_cycle (per-step
    scheduler state), so an exact resume must restore both; ``EPOCHS`` epochs at batch 10 on
    4,000 training images (300 steps an epoch: long enough to stop mid-run; ``images``, the
    train and test counts, smaller for a test that only needs a checkpoint), saving to
    ``folder/runs/<name>``."""
    settings = {"epochs": EPOCHS, "batch_size": 10, **training}
    return write_run_config(
        folder,
        layers=DROPOUT_MLP,
        name=name,
        images=images,
        validation_split=0.25,
        **settings,
    )


class StopAt(Callback):
    """Asks for a stop (as a signal handler would) after global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if trainer.global_step == self.step:
            trainer.interrupted = "SIGTERM"


def train_in_process(config: Path, *, stop_at: int | None = None, **kwargs: Any) -> None:
    prepared = pipeline.prepare(load_config(config), **kwargs)
    callbacks = [StopAt(stop_at)] if stop_at else []
    pipeline.train(prepared, callbacks=callbacks)


def resumed_run_metrics(folder: Path, stop_at: int, **settings: Any) -> tuple[dict[str, Any], ...]:
    """Train the same config (``write_run_config`` with ``settings``) uninterrupted into
    ``folder/a`` and stopped after step ``stop_at`` then resumed into ``folder/b``; assert the
    two saved models are the same bytes and the same train, validation and test metrics;
    return both metrics.json documents."""
    train_in_process(write_run_config(folder / "a", **settings))
    resumed = write_run_config(folder / "b", **settings)
    with pytest.raises(Interrupted):
        train_in_process(resumed, stop_at=stop_at)
    train_in_process(resumed, resume=True)
    a, b = folder / "a/runs/run", folder / "b/runs/run"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    metrics = tuple(json.loads((run / "metrics.json").read_text()) for run in (a, b))
    for key in ("train", "validation", "test"):
        assert metrics[0][key] == metrics[1][key]
    return metrics
