"""dlcli as a Python library: what the commands call, for notebooks and scripts.

    import dlcli

    run = dlcli.train("configs/fashion-mnist-mlp.yaml", overrides={"training.epochs": 3})
    run.metrics["test"]["accuracy"]          # what metrics.json holds
    model = dlcli.load(run.run_dir)          # verified, rebuilt with its weights
    model.evaluate("test")                   # {"loss": ..., "accuracy": ...}
    model.predict(images).classes            # uint8 N×H×W / N×C×H×W arrays, or files

``train`` is ``dlcli train`` without the terminal: the same checks, checkpoints, Ctrl-C
handling and run directory, raising :class:`~dlcli.errors.DlcliError` subclasses (each with
the command line's exit code) instead of exiting. Nothing here prints unless asked
(``callbacks``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from dlcli import pipeline
from dlcli.config import Config, load_config, parse_config, set_value, to_dict
from dlcli.data.dataset import Dataset, Split
from dlcli.errors import DataError, UsageError
from dlcli.hooks import Callback, Logs
from dlcli.metric_names import SPLITS
from dlcli.predict import PredictResult, array_inputs, rank, run_inputs


def train(
    config: str | Path | Config,
    overrides: Mapping[str, Any] | None = None,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> pipeline.TrainResult:
    """Train the model a config describes, evaluate it and save its run directory.

    ``config``: a YAML file, or a :class:`~dlcli.config.Config`. ``overrides``: config keys
    set to Python values (``{"training.epochs": 3, "model.layers[1].units": 128}``), applied
    before validation exactly as given (never re-read as YAML). ``output``: the run directory
    (default: the config's ``output.dir``); ``overwrite`` replaces an existing one, ``resume``
    continues it from its newest checkpoint. ``callbacks`` see every epoch and step (e.g.
    :class:`dlcli.progress.ProgressDisplay` for progress bars).

    Returns the run directory, the per-epoch history and the final metrics (metrics.json).
    """
    values = dict(overrides or {})
    if output is not None:
        values["output.dir"] = str(output)
    cfg = _config(config, values)
    prepared = pipeline.prepare(cfg, overwrite=overwrite, resume=resume)
    return pipeline.train(prepared, callbacks)


def load(run_dir: str | Path, *, device: str = "auto") -> Model:
    """A saved run's model, its files verified against the run's manifest, on ``device``
    (``auto``: CUDA when available, else the CPU)."""
    return Model(pipeline.load_model(Path(run_dir), device))


class Model:
    """A trained model, loaded from its run directory by :func:`load`."""

    def __init__(self, loaded: pipeline.LoadedModel) -> None:
        self._loaded = loaded

    @property
    def run_dir(self) -> Path:
        return self._loaded.run.path

    @property
    def config(self) -> Config:
        """The resolved config the run was trained with."""
        return self._loaded.run.config

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's metrics.json."""
        return self._loaded.run.metrics

    @property
    def module(self) -> nn.Module:
        """The ``torch.nn.Module`` itself (in eval mode on its device)."""
        return self._loaded.scorer.model

    @property
    def class_names(self) -> list[str]:
        from dlcli.predict import class_names

        return class_names(self.metrics, self._loaded.built.output_shape[0])

    def evaluate(
        self,
        split: str | Split = "test",
        *,
        batch_size: int = 1000,
        data_dir: str | None = None,
        accept_changed_data: bool = False,
    ) -> Logs:
        """Loss and metrics on ``split``: ``"train"``, ``"validation"`` or ``"test"`` of the
        run's dataset (split as the run split it; ``data_dir``: where the dataset lives; a
        data file changed since training is a :class:`DataError` unless
        ``accept_changed_data``, as for ``dlcli evaluate``), or any
        :class:`~dlcli.data.dataset.Split` of uint8 images and labels."""
        if isinstance(split, str):
            split = self._split(split, data_dir, accept_changed_data)
        else:
            self._check_split(split)
        return self._loaded.evaluate(split, batch_size=batch_size)

    def _check_split(self, split: Split) -> None:
        """A split given from Python holds what the run's own splits hold, else a
        :class:`DataError`: a (N, C, H, W) images layout of another shape was scored as if it
        fitted, an empty split as loss 0.0, and labels out of range crashed in torch."""
        c, h, w = self._loaded.built.input_shape
        images, labels = split.images, split.labels
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (c, h, w):
            raise DataError(
                f"split: expected uint8 images of shape (N, {c}, {h}, {w}) (pixel values "
                f"0-255, N×C×H×W), found {str(images.dtype).removeprefix('torch.')} "
                f"{tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.ndim != 1:
            raise DataError(
                f"split: expected int64 labels of shape (N,), found "
                f"{str(labels.dtype).removeprefix('torch.')} {tuple(labels.shape)}"
            )
        if not len(labels):
            raise DataError("split: holds no images; an empty split has no metrics")
        classes = self._loaded.built.output_shape[0]
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise DataError(
                f"split: labels must be 0 to {classes - 1} (the model has {classes} classes), "
                f"found {low} to {high}"
            )

    def predict(
        self,
        images: npt.NDArray[Any] | torch.Tensor | str | Path | Sequence[str | Path],
        *,
        top_k: int = 1,
        batch_size: int = 1000,
    ) -> Predictions:
        """Classify images: an array or tensor (uint8 0-255 or floats 0-1; N×H×W, N×H×W×C,
        N×C×H×W, or one image), or input files as ``dlcli predict`` reads them (IDX, .npy,
        PNG/JPEG..., folders and glob patterns; images resized as the run's ``data.resize``)."""
        if isinstance(images, str | Path):
            inputs = run_inputs(self._loaded, [Path(images)])
        elif isinstance(images, np.ndarray | torch.Tensor):
            inputs = array_inputs(images, self._loaded.built.input_shape)
        else:
            inputs = run_inputs(self._loaded, [Path(p) for p in images])
        return Predictions(rank(self._loaded, inputs, top_k=top_k, batch_size=batch_size))

    def _split(self, name: str, data_dir: str | None, accept_changed_data: bool) -> Split:
        if name not in SPLITS:
            raise UsageError(f"split: expected one of {', '.join(SPLITS)}, found {name!r}")
        if data_dir is not None and data_dir != self._data_dir:
            self._datasets.clear()
            self._data_dir = data_dir
        if accept_changed_data not in self._datasets:  # read (and checked) once each way
            self._datasets[accept_changed_data] = pipeline.run_data(
                self._loaded, self._data_dir, accept_changed_data=accept_changed_data
            )
        saved = pipeline.SavedRun(self._loaded, self._datasets[accept_changed_data])
        return saved.split(name)

    _data_dir: str | None = None

    @cached_property
    def _datasets(self) -> dict[bool, Dataset]:
        """The run's dataset, by whether a changed data file was accepted."""
        return {}


@dataclass
class Predictions:
    """What :meth:`Model.predict` found: per image, its classes best first."""

    result: PredictResult

    @property
    def classes(self) -> list[int]:
        """The top class of each image."""
        return [p.top[0][0] for p in self.result.predictions]

    @property
    def names(self) -> list[str]:
        """The top class's name for each image."""
        return [self.result.class_names[c] for c in self.classes]

    @property
    def probabilities(self) -> list[float]:
        """The top class's probability for each image."""
        return [p.top[0][1] for p in self.result.predictions]

    def __len__(self) -> int:
        return len(self.result.predictions)

    def to_dict(self) -> dict[str, Any]:
        """As ``dlcli predict --json`` prints it."""
        return self.result.to_dict()


def _config(config: str | Path | Config, values: Mapping[str, Any]) -> Config:
    if not isinstance(config, Config):
        return load_config(Path(config), values=values)
    if not values:
        return config
    raw = to_dict(config)
    for key, value in values.items():
        set_value(raw, key, value)
    return parse_config(raw, source="config")
