"""``dlcli lr-find``: the learning-rate range test (Smith, "Cyclical Learning Rates", 2017;
fastai's and Lightning's ``lr_find``).

1. Build the config's model with its initial weights (the seeded ones ``train`` starts from)
   and its optimizer; no schedule, no checkpoints, no run directory.
2. Train for up to ``steps`` steps with the learning rate growing exponentially from
   ``start_lr`` to ``end_lr`` (one step each), recording each step's loss.
3. Smooth the loss (an exponential moving average, bias-corrected) and stop early once the
   smoothed loss exceeds ``diverge`` times its minimum, or the loss is no longer finite.
4. Suggest the learning rate where the smoothed loss falls fastest against log(lr) — the
   steepest descent — leaving out the first and last few steps, whose slopes are noise.
   ``minimum/10`` (a tenth of the rate at the lowest smoothed loss) is reported too.

The step is the engine's own (:class:`~dlcli.engine.Trainer`): a callback sets the rate
before each step and reads the loss after it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlcli.config import Config
from dlcli.engine import Trainer
from dlcli.errors import TrainingError, UsageError
from dlcli.hooks import Callback, Loop

SKIP_START, SKIP_END = 10, 5  # steps left out of the steepest-slope search
STEEPEST_RULE = (
    f"steepest descent: the rate where the smoothed loss falls fastest against log(lr) "
    f"(first {SKIP_START} and last {SKIP_END} steps left out)"
)
MINIMUM_RULE = "minimum/10: a tenth of the rate at the lowest smoothed loss"


@dataclass
class RangeTest(Callback):
    """Sets each step's learning rate and records its loss (see the module's steps)."""

    start_lr: float
    end_lr: float
    steps: int
    batch_size: int
    samples: int  # training samples per epoch (the last batch may be smaller)
    beta: float = 0.98
    diverge: float = 4.0
    learning_rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = ""
    _average: float = 0.0
    _sum_before: float = 0.0  # the epoch's loss sum before this step

    def rate(self, i: int) -> float:
        """The i-th step's rate, from start_lr to end_lr geometrically (in log space: the ratio of
        the two ends would overflow a float for 1e-300 and 1e300)."""
        low, high = math.log(self.start_lr), math.log(self.end_lr)
        return math.exp(low + (high - low) * i / max(self.steps - 1, 1))

    def _set_rate(self, trainer: Loop, lr: float) -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr

    def on_fit_begin(self, trainer: Loop) -> None:
        self._set_rate(trainer, self.rate(0))

    def on_epoch_begin(self, trainer: Loop, epoch: int) -> None:
        self._sum_before = 0.0

    def on_step_end(self, trainer: Loop, step: int) -> None:
        # The engine keeps the epoch's running mean; this step's loss is the difference of the
        # running sums before and after it.
        count = min(step * self.batch_size, self.samples)
        total = trainer.running_logs()["loss"] * count
        loss = (total - self._sum_before) / (count - min((step - 1) * self.batch_size, count))
        self._sum_before = total
        self._record(trainer, loss)

    def _record(self, trainer: Loop, loss: float) -> None:
        i = len(self.losses)
        self.learning_rates.append(self.rate(i))
        self.losses.append(loss)
        self._average = self.beta * self._average + (1 - self.beta) * loss
        self.smoothed.append(self._average / (1 - self.beta ** (i + 1)))
        best = min(self.smoothed)
        if not math.isfinite(self.smoothed[-1]):
            self.stopped = f"the loss became {loss} at step {i + 1}"
        elif i > SKIP_START and self.smoothed[-1] > self.diverge * best:
            self.stopped = (
                f"diverged at step {i + 1}: smoothed loss > {self.diverge:g}x its minimum"
            )
        elif i + 1 >= self.steps:
            self.stopped = f"reached end_lr {self.end_lr:g} after {i + 1} steps"
        if self.stopped:
            trainer.stop_training = True
        else:
            self._set_rate(trainer, self.rate(i + 1))


@dataclass
class LRFindResult:
    learning_rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    rule: str
    minimum_lr: float  # the rate at the lowest smoothed loss
    stopped: str

    def to_dict(self) -> dict[str, Any]:
        points = zip(self.learning_rates, self.losses, self.smoothed, strict=True)
        return {
            "suggested_lr": self.suggested_lr,
            "rule": self.rule,
            "minimum_lr": self.minimum_lr,
            "minimum_over_10": self.minimum_lr / 10,
            "steps": len(self.losses),
            "stopped": self.stopped,
            "points": [{"lr": lr, "loss": raw, "smoothed": s} for lr, raw, s in points],
        }


def suggest(learning_rates: list[float], smoothed: list[float]) -> tuple[float, str, float]:
    """(suggested rate, the rule used, the rate at the lowest smoothed loss)."""
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if not finite:
        raise TrainingError("lr-find: the loss was never finite; check the data and the model")
    lowest = min(finite, key=lambda i: smoothed[i])
    minimum_lr = learning_rates[lowest]
    window = finite[SKIP_START : len(finite) - SKIP_END]
    if len(window) < 3:
        return minimum_lr / 10, MINIMUM_RULE + " (too few steps for the slope)", minimum_lr
    logs = np.log10([learning_rates[i] for i in window])
    slopes = np.gradient(np.array([smoothed[i] for i in window]), logs)
    steepest = window[int(np.argmin(slopes))]
    return learning_rates[steepest], STEEPEST_RULE, minimum_lr


def lr_find(
    cfg: Config,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 200,
    diverge: float = 4.0,
) -> LRFindResult:
    """Run the range test on ``cfg``'s model, data and optimizer; writes nothing."""
    import torch

    from dlcli import pipeline
    from dlcli.device import resolve_device
    from dlcli.model import build_model, check_batch_norm_batches

    if not 0 < start_lr < end_lr:
        raise UsageError(f"--start-lr {start_lr:g} must be > 0 and below --end-lr {end_lr:g}")
    dataset = pipeline.config_data(cfg)
    pipeline.record_input_shape(cfg, dataset)
    train, _ = pipeline.split_train(dataset, cfg)
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model, num_classes=dataset.num_classes)
    check_batch_norm_batches(model, len(train), cfg.training.batch_size)
    per_epoch = math.ceil(len(train) / cfg.training.batch_size)
    training = dataclasses.replace(
        cfg.training,
        epochs=math.ceil(steps / per_epoch),
        lr_schedule=None,
        early_stopping=None,
        target=None,
        stop_at_target=False,
    )
    test = RangeTest(start_lr, end_lr, steps, training.batch_size, len(train), diverge=diverge)
    trainer = Trainer(
        model.module,
        training,
        num_classes=dataset.num_classes,
        device=resolve_device(training.device),
        callbacks=[test],
    )
    try:
        trainer.fit(train)
    except TrainingError as err:  # a non-finite loss: the end of the range, not a failure
        test.stopped = test.stopped or err.message
    suggested, rule, minimum = suggest(test.learning_rates, test.smoothed)
    return LRFindResult(
        test.learning_rates, test.losses, test.smoothed, suggested, rule, minimum, test.stopped
    )
