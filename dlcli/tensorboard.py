"""``output.tensorboard: true``: TensorBoard event files in ``RUN_DIR/tensorboard/``.

A :class:`~dlcli.hooks.Callback` that writes every per-epoch history value as a scalar (step =
epoch) and the run's hyper-parameters (the flattened config) for TensorBoard's HParams tab.
Needs the ``tensorboard`` package (the optional extra ``dlcli[tensorboard]``); view with
``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dlcli import metric_names
from dlcli.config import Config, to_dict
from dlcli.errors import ConfigError
from dlcli.hooks import Callback, Logs, Loop
from dlcli.runs import IGNORED_KEYS, flatten_config

LOG_DIR = "tensorboard"
INSTALL_HINT = "pip install 'dlcli[tensorboard]'  (or: pip install tensorboard)"


def hparams_of(cfg: Config) -> dict[str, bool | int | float | str]:
    """The config as TensorBoard hyper-parameters: dotted keys, scalar values, lists as text."""
    flat = flatten_config(to_dict(cfg))
    out: dict[str, bool | int | float | str] = {}
    for key, value in flat.items():
        if key in IGNORED_KEYS or value is None:
            continue
        out[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return out


class TensorBoardLogger(Callback):
    """Per-epoch scalars (all history keys) and hparams, written with torch's SummaryWriter."""

    def __init__(self, run_dir: Path, cfg: Config) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                f"output.tensorboard: true needs the tensorboard package: {INSTALL_HINT}"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / LOG_DIR
        self.cfg = cfg
        self.writer: Any = None

    def on_epoch_begin(self, trainer: Loop, epoch: int) -> None:
        # Opened at the first epoch, not at fit begin: only then has a resumed run's epoch
        # been restored from its checkpoint.
        if self.writer is None:
            self._open(epoch)

    def _open(self, first_epoch: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        if first_epoch == 1:
            # A fresh run: events left by an overwritten run would mix with this one's.
            shutil.rmtree(self.log_dir, ignore_errors=True)
        # On resume, purge_step drops events a crashed run wrote after its last checkpoint.
        purge = first_epoch if first_epoch > 1 else None
        self.writer = self._writer_class(str(self.log_dir), purge_step=purge)
        experiment, start, _ = hparams(self.hparams(), dict.fromkeys(self._metric_tags(), 0.0))
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def hparams(self) -> dict[str, bool | int | float | str]:
        return hparams_of(self.cfg)

    def _metric_tags(self) -> list[str]:
        names = ["loss", *self.cfg.training.metrics]
        return [*names, *(metric_names.tag(name, "validation") for name in names)]

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        if self.writer is None:
            return
        for key, value in logs.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def on_fit_end(self, trainer: Loop) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.writer is None:
            return
        finished = trainer.stop_training or trainer.epoch >= trainer.epochs
        if finished and not getattr(trainer, "interrupted", False):  # the HParams "success"
            _, _, end = hparams(self.hparams(), dict.fromkeys(self._metric_tags(), 0.0))
            self.writer.file_writer.add_summary(end)
        self.writer.close()
        self.writer = None
