"""The per-step history: the learning rate and training loss of every step (or of every few
steps in a long run), what ``RUN_DIR/steps.csv`` holds and ``dlcli plot`` draws, so that a
schedule's warm-up and the loss within an epoch are visible. ``history.csv`` stays per epoch.

A step's loss is a tensor on the device, and reading it makes the CPU wait for the step: on a
GPU that would stall the pipeline at every step. :class:`StepRecorder` keeps the tensors where
they are (stacked into one every 32 rows, no copy) and reads them in one transfer at the end of
each epoch, before a checkpoint and at the end of the fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from dlcli.errors import ModelDirError
from dlcli.hooks import Callback, Logs, Loop

COLUMNS = ("step", "epoch", "lr", "loss")
MAX_ROWS = 10_000  # beyond this many steps, a row is the mean loss of every N steps
_STACK_EVERY = 32  # rows kept as separate tensors before they are stacked into one

Row = tuple[int, float, float, float]


class StepRecorder(Callback):
    """Records ``step`` (1-based, over the whole run), ``epoch`` (epochs done at that step, a
    fraction inside an epoch), ``lr`` (the rate the step used) and ``loss`` (the step's
    training loss, or the mean over the steps since the previous row)."""

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self.every = 1
        self.rows: list[Row] = []  # read back from the device
        self._losses: list[torch.Tensor] = []  # the steps since the last row
        self._unread: list[torch.Tensor] = []  # row losses on the device, stacked now and then
        self._meta: list[tuple[int, float, float]] = []  # (step, epoch, lr) of those rows

    def on_fit_begin(self, trainer: Loop) -> None:
        total = trainer.epochs * trainer.steps_per_epoch
        self.every = max(1, math.ceil(total / self.max_rows))

    def on_step_end(self, trainer: Loop, step: int) -> None:
        if trainer.step_loss is None:
            return
        self._losses.append(trainer.step_loss)
        if trainer.global_step % self.every and step != trainer.steps_per_epoch:
            return
        losses, self._losses = self._losses, []
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).float().mean()
        self._unread.append(loss.float().reshape(1))
        epoch = trainer.global_step / max(trainer.steps_per_epoch, 1)
        self._meta.append((trainer.global_step, epoch, float(trainer.step_lr)))
        if len(self._unread) >= _STACK_EVERY:  # a few tensors, not thousands of tiny ones
            self._unread = [torch.cat(self._unread)]

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        self.read()

    def on_interrupt(self, trainer: Loop) -> None:
        self.read()

    def on_fit_end(self, trainer: Loop) -> None:
        self.read()

    def read(self) -> list[Row]:
        """Move the recorded losses to the host (one transfer) and return every row so far."""
        if self._unread:
            values = torch.cat(self._unread).tolist()
            self.rows += [
                (step, epoch, lr, loss)
                for (step, epoch, lr), loss in zip(self._meta, values, strict=True)
            ]
            self._unread, self._meta = [], []
        return self.rows

    def state_dict(self) -> dict[str, Any]:
        # One string (a line per row) rather than a list: a checkpoint's state is checked
        # against the form a fresh run's has, and a list's length would differ.
        return {"rows": "\n".join(",".join(map(repr, row)) for row in self.read())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The rows a checkpoint saved, checked: lines of ``step,epoch,lr,loss`` numbers."""
        text = state.get("rows", "")
        rows = [_row(line) for line in text.splitlines()] if isinstance(text, str) else [None]
        if any(row is None for row in rows):
            raise ModelDirError(
                "corrupt checkpoint: the per-step history (callbacks.StepRecorder.rows) is not "
                "lines of step,epoch,lr,loss numbers"
            )
        self.rows = [row for row in rows if row is not None]


def _row(line: str) -> Row | None:
    parts = line.split(",")
    try:
        step, epoch, lr, loss = (float(part) for part in parts)
    except ValueError:  # not four numbers
        return None
    if not step.is_integer() or step < 1:
        return None
    return int(step), epoch, lr, loss
