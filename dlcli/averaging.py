"""Weight averaging (``training.ema``) and flip test-time augmentation (``training.tta``).

**EMA.** After every update the average of each parameter and floating-point buffer (batch-norm
statistics) moves towards the live value::

    d_t     = decay * min(1, (t - 1) / warmup)      (t = 1, 2, ...; d_t = decay when warmup is 0)
    avg_t   = d_t * avg_{t-1} + (1 - d_t) * live_t

so with a warm-up the first update copies the weights (d_1 = 0) and the memory grows to
``1 / (1 - decay)`` steps over ``warmup`` steps; integer buffers (batch-norm's step counter) are
copied. Validation is scored with the average, and the average is what a run saves as its model.

**TTA.** ``flip`` scores each image and its left-right mirror and averages the two logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from dlcli.config import EmaConfig


class WeightAverage:
    """The exponential moving average of a module's parameters and buffers."""

    def __init__(self, module: nn.Module, ema: EmaConfig) -> None:
        """Build it from the module on its training device (the average lives beside it)."""
        self.ema = ema
        named = [*module.named_parameters(), *module.named_buffers()]
        self.names = [name for name, _ in named]  # as in the module's state_dict
        self.live = [t for _, t in named]
        self.average = [t.detach().clone() for t in self.live]
        self.updates = 0

    def __call__(self) -> None:
        """The Trainer's ``after_update`` hook: one step of the average."""
        self.update()

    def decay(self, update: int) -> float:
        """d_t of update number ``update`` (1-based)."""
        if not self.ema.warmup:
            return self.ema.decay
        return self.ema.decay * min(1.0, (update - 1) / self.ema.warmup)

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average (after an optimizer update)."""
        self.updates += 1
        weight = 1.0 - self.decay(self.updates)
        for average, live in zip(self.average, self.live, strict=True):
            if average.is_floating_point():
                average.lerp_(live, weight)
            else:
                average.copy_(live)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Make the module's weights the average (the run's final model)."""
        for average, live in zip(self.average, self.live, strict=True):
            live.copy_(average)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the module for the duration (to score it); the live weights after."""
        with torch.no_grad():
            saved = [t.detach().clone() for t in self.live]
            self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for live, value in zip(self.live, saved, strict=True):
                    live.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """The number of updates and the average by state_dict name (a checkpoint's
        ``ema``; ``dlcli evaluate --weights best|last`` scores this average)."""
        return {
            "updates": self.updates,
            "average": dict(zip(self.names, self.average, strict=True)),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["average"]
        if (
            not isinstance(saved, Mapping)
            or list(saved) != self.names
            or any(
                tuple(saved[name].shape) != tuple(a.shape)
                for name, a in zip(self.names, self.average, strict=True)
            )
        ):
            raise ValueError("the checkpoint's weight average does not fit this model")
        for name, average in zip(self.names, self.average, strict=True):
            average.copy_(saved[name])
        self.updates = int(state["updates"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The average as a state dict (copies)."""
        return {n: a.detach().clone() for n, a in zip(self.names, self.average, strict=True)}

    def describe(self) -> dict[str, Any]:
        """What metrics.json says about it."""
        return {"decay": self.ema.decay, "warmup": self.ema.warmup, "updates": self.updates}


def flip_averaged(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Flip TTA: the mean of the logits of ``x`` and of ``x`` mirrored left-right."""
    if x.dim() != 4:
        return forward(x)
    return (forward(x) + forward(x.flip(3))) / 2


def tta_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], tta: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` with the test-time augmentation ``tta`` (``none`` or ``flip``)."""
    if tta == "none":
        return forward
    if tta == "flip":
        return lambda x: flip_averaged(forward, x)
    raise ValueError(f"unknown test-time augmentation {tta!r}: expected none or flip")
