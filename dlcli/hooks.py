"""What a callback is: the hooks the training loop calls, and what they may see of it.

A leaf module (it imports nothing of dlcli), so that everything that plugs into the loop —
progress bars, schedules, checkpoints, TensorBoard, data-parallel workers — can name
:class:`Callback` without importing the loop, and the loop (``dlcli.engine``) imports them
without a cycle. The loop itself is :class:`~dlcli.engine.Trainer`; callbacks see it through
:class:`Loop`, the part of it they may read and set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

Logs = dict[str, float]
"""Metrics by name: ``loss``, ``accuracy``, ``val_loss``, ..., ``lr``, ``seconds``."""


class Loop(Protocol):
    """What a callback sees of the running :class:`~dlcli.engine.Trainer`."""

    model: nn.Module  # the module being trained (its parameters and names)
    optimizer: torch.optim.Optimizer
    history: list[Logs]  # one row per finished epoch
    epoch: int  # epochs completed
    global_step: int  # steps completed, over every epoch
    steps_per_epoch: int
    step_in_epoch: int  # steps done in the epoch under way
    step_loss: torch.Tensor | None  # the last step's loss, on the device (dlcli/steps.py)
    step_lr: float  # the learning rate the last step used
    stop_training: bool  # set it to end the fit after this step or epoch
    interrupted: str | None  # set (by a signal handler) to checkpoint and stop

    @property
    def epochs(self) -> int:
        """The number of epochs the fit runs to (``training.epochs``)."""
        ...

    @property
    def batch_size(self) -> int:
        """Samples per step (``training.batch_size``, the global batch)."""
        ...

    def elapsed_fit_seconds(self) -> float: ...

    def running_logs(self) -> Logs: ...

    def state_dict(self) -> dict[str, Any]: ...

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights validation scores (with ``training.ema``, the average), copied."""
        ...


class Callback:
    """Hooks called by the training loop; override the ones you need.

    ``on_fit_end`` is called however the fit ends (finished, stopped, interrupted, failed);
    ``on_interrupt`` just before :class:`~dlcli.errors.Interrupted` is raised, after the
    current step. A callback with state that a resumed run needs returns it from
    ``state_dict`` (plain data and tensors) and takes it back in ``load_state_dict``.
    """

    def on_fit_begin(self, trainer: Loop) -> None: ...

    def on_resume(self, trainer: Loop) -> None:
        """A fit continues from a checkpoint: every callback's state is loaded, no step has
        run (a callback that had ended the run, e.g. early stopping, sets ``stop_training``
        again, so a finished run is not trained further)."""

    def on_epoch_begin(self, trainer: Loop, epoch: int) -> None: ...

    def on_step_end(self, trainer: Loop, step: int) -> None: ...

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None: ...

    def on_fit_end(self, trainer: Loop) -> None: ...

    def on_interrupt(self, trainer: Loop) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...
