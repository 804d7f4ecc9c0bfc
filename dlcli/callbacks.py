"""The callbacks a config asks for: learning-rate schedules, early stopping, a target to reach,
checkpoints, the thread count following the free cores, a watched split's metrics. Each is a
:class:`~dlcli.hooks.Callback`; :func:`build_callbacks` makes the list of the first four for a
config, with the checkpoint callback last so that what it saves includes what the others
decided at the end of the epoch (the training pipeline adds :class:`SplitMetrics` before all
of them and :class:`FollowFreeCores` after).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.optim import lr_scheduler

from dlcli import checkpoint, metric_names
from dlcli.config import (
    Config,
    CosineSchedule,
    EarlyStoppingConfig,
    OneCycleSchedule,
    ReduceOnPlateauSchedule,
    ScheduleSpec,
    StepSchedule,
    TargetConfig,
    metric_mode,
    watched_metrics,
)
from dlcli.data.dataset import Split
from dlcli.hooks import Callback, Logs, Loop
from dlcli.metric_names import improved
from dlcli.threads import LoadFollower, ThreadChoice


def build_callbacks(cfg: Config, run_dir: Path, work_dir: Path | None = None) -> list[Callback]:
    """The callbacks ``cfg.training`` configures, in the order they must run (checkpoints are
    written under ``work_dir``, default ``run_dir``: see dlcli.store.Output)."""
    training = cfg.training
    callbacks: list[Callback] = []
    if training.lr_schedule is not None:
        callbacks.append(LRSchedule(training.lr_schedule))
    if training.early_stopping is not None:
        callbacks.append(EarlyStopping(training.early_stopping))
    if training.target is not None:
        callbacks.append(TargetTracker(training.target, stop=training.stop_at_target))
    callbacks.append(Checkpointer(cfg, run_dir, work_dir=work_dir))
    return callbacks


def history_key(name: str) -> str:
    """The epoch-log column a monitor or target name stands for (``validation.accuracy`` →
    ``val_accuracy``); the config was validated, so the name parses."""
    return metric_names.parse(name).history_key


def reports(callbacks: list[Callback]) -> dict[str, Any]:
    """What the callbacks have to say in metrics.json (target reached, early stop, ...)."""
    return {cb.report_key: cb.report() for cb in callbacks if isinstance(cb, Reporting)}


class Reporting(Callback):
    """A callback that adds a section to metrics.json."""

    report_key = ""

    def report(self) -> dict[str, Any]:
        return {}


class SplitMetrics(Callback):
    """Adds a split's loss and metrics to every epoch's logs (``test_accuracy``, ...): what a
    monitor or target that watches the test split reads. Runs before the other callbacks.
    ``name``: the split's name (``test``), which tags its metrics."""

    def __init__(self, split: Split, name: str) -> None:
        self.split = split
        self.name = name

    def on_epoch_end(self, trainer: Any, epoch: int, logs: Logs) -> None:
        logs.update(metric_names.tagged(trainer.evaluate(self.split), self.name))


def test_split_watchers(cfg: Config) -> dict[str, str]:
    """The monitors and target of ``cfg`` that watch the test split (evaluated every epoch
    then), by key path: ``{"training.early_stopping.monitor": "test_loss"}``."""
    watched = watched_metrics(cfg.training).items()
    return {key: name for key, name in watched if metric_names.parse(name).split == "test"}


def watched_test_split(cfg: Config) -> bool:
    """Does a monitor or target of ``cfg`` watch the test split (evaluated every epoch then)?"""
    return bool(test_split_watchers(cfg))


# --- learning-rate schedules ------------------------------------------------------------------


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then half a cosine down to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    spec: ScheduleSpec, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int
) -> lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau:
    """The torch scheduler for a schedule spec; its state_dict is plain data (JSON-able)."""
    base_lr = float(optimizer.param_groups[0]["lr"])
    total = epochs * steps_per_epoch
    if isinstance(spec, OneCycleSchedule):
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=spec.max_lr if spec.max_lr is not None else base_lr,
            total_steps=total,
            pct_start=spec.pct_start,
            anneal_strategy=spec.anneal,
            cycle_momentum=spec.cycle_momentum,
            div_factor=spec.div_factor,
            final_div_factor=spec.final_div_factor,
        )
    if isinstance(spec, CosineSchedule):
        warmup = spec.warmup_steps or round(spec.warmup_epochs * steps_per_epoch)
        ratio = spec.min_lr / base_lr
        factor: Callable[[int], float] = lambda step: cosine_factor(step, total, warmup, ratio)  # noqa: E731
        return lr_scheduler.LambdaLR(optimizer, factor)
    if isinstance(spec, StepSchedule):
        return lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
    return lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=metric_mode(spec.monitor, spec.mode),  # type: ignore[arg-type]
        factor=spec.factor,
        patience=spec.patience,
        threshold=spec.min_delta,
        threshold_mode="abs",
        cooldown=spec.cooldown,
        min_lr=spec.min_lr,
    )


def rates_at(scheduler: lr_scheduler.LRScheduler, step: int) -> list[float]:
    """The rates a per-step schedule (one_cycle, cosine) gives step ``step`` (0-based): moves
    it there, as a checkpoint's position does, without stepping an optimizer."""
    scheduler.last_epoch = step
    with warnings.catch_warnings():  # torch warns that get_lr is called outside step()
        warnings.simplefilter("ignore", UserWarning)
        return [float(rate) for rate in scheduler.get_lr()]


def schedule_rate(
    spec: ScheduleSpec, learning_rate: float, *, epochs: int, steps_per_epoch: int, step: int
) -> float:
    """The learning rate a per-step schedule built for ``epochs`` epochs gives step ``step``
    (0-based), for an optimizer whose rate is ``learning_rate``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    scheduler = make_scheduler(spec, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch)
    assert isinstance(scheduler, lr_scheduler.LRScheduler)
    return rates_at(scheduler, step)[0]


class LRSchedule(Callback):
    """``training.lr_schedule``: one_cycle and cosine change the rate every step, step and
    reduce_on_plateau at the end of an epoch."""

    def __init__(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.per_step = isinstance(spec, OneCycleSchedule | CosineSchedule)
        self.scheduler: lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | None = None

    def on_fit_begin(self, trainer: Loop) -> None:
        self.scheduler = make_scheduler(
            self.spec,
            trainer.optimizer,
            epochs=trainer.epochs,
            steps_per_epoch=trainer.steps_per_epoch,
        )

    def on_step_end(self, trainer: Loop, step: int) -> None:
        if self.per_step and isinstance(self.scheduler, lr_scheduler.LRScheduler):
            self.scheduler.step()

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            assert isinstance(self.spec, ReduceOnPlateauSchedule)
            self.scheduler.step(logs[history_key(self.spec.monitor)])
        elif not self.per_step and self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()} if self.scheduler else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.scheduler is not None  # built in on_fit_begin, before the state loads
        saved = state["scheduler"]
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.load_state_dict(saved)  # no length: its whole state carries over
            return
        # The run's length may change on --resume (training.epochs): the schedule built for
        # this fit keeps its length and takes its position from the checkpoint: last_epoch,
        # the step count a torch scheduler computes the rate from. A per-step schedule's
        # rate at that step goes into the optimizer: with the length changed, the stretched
        # schedule's rate applies from the first step resumed (train says so, from what to
        # what); unchanged, it is the rate the optimizer was restored with.
        step = int(saved["last_epoch"])
        if not self.per_step:
            self.scheduler.last_epoch = step
            return
        for group, rate in zip(
            self.scheduler.optimizer.param_groups, rates_at(self.scheduler, step), strict=True
        ):
            group["lr"] = rate


class FollowFreeCores(Callback):
    """``training.threads: auto`` on a CPU: the thread count follows the free cores while
    training (:class:`dlcli.threads.LoadFollower`, polled after every step)."""

    def __init__(self, choice: ThreadChoice) -> None:
        self.follower = LoadFollower(choice, torch.set_num_threads)

    def on_step_end(self, trainer: Loop, step: int) -> None:
        self.follower.poll(trainer.epoch + 1, step)


# --- early stopping, target ---------------------------------------------------------------------


class EarlyStopping(Reporting):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs; with
    ``restore_best``, end with the weights of the best epoch."""

    report_key = "early_stopping"

    def __init__(self, early_stopping: EarlyStoppingConfig) -> None:
        self.early_stopping = early_stopping
        self.mode = metric_mode(early_stopping.monitor, early_stopping.mode)
        self.key = history_key(early_stopping.monitor)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.restored = False

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        value = logs.get(self.key)
        if improved(value, self.best, self.mode, self.early_stopping.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if (
                self.early_stopping.restore_best
            ):  # the weights scored: with training.ema, the average
                self.best_weights = trainer.averaged_state_dict()
            return
        self.wait += 1
        if self.wait >= self.early_stopping.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_resume(self, trainer: Loop) -> None:
        if self.stopped_epoch is not None:  # the run had stopped early: it is finished
            trainer.stop_training = True

    def on_fit_end(self, trainer: Loop) -> None:
        stopped = self.stopped_epoch is not None and not trainer.interrupted
        if stopped and self.best_weights is not None and self.best_epoch != self.stopped_epoch:
            trainer.model.load_state_dict(self.best_weights)
            self.restored = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
        self.best_weights = state["best_weights"]

    def report(self) -> dict[str, Any]:
        return {
            "monitor": self.early_stopping.monitor,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "restored_best": self.restored,
        }


class TargetTracker(Reporting):
    """Record the epoch and elapsed fit seconds at which ``metric`` first reaches ``value``;
    with ``stop``, end training there."""

    report_key = "target"

    def __init__(self, target: TargetConfig, *, stop: bool = False) -> None:
        self.target = target
        self.mode = metric_mode(target.metric, target.mode)
        self.key = history_key(target.metric)
        self.stop = stop
        self.epoch: int | None = None
        self.seconds: float | None = None

    def reached(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return value >= self.target.value if self.mode == "max" else value <= self.target.value

    def on_resume(self, trainer: Loop) -> None:
        # training.target may change on --resume: the epoch recorded for another target (or
        # none) is not this one's. The first epoch of the history that reaches this one is; its
        # time was not measured against it (seconds: None).
        rows = trainer.history
        first = next((int(r["epoch"]) for r in rows if self.reached(r.get(self.key))), None)
        if first != self.epoch:
            self.epoch, self.seconds = first, None
        if self.stop and self.epoch is not None:  # the run had ended at its target
            trainer.stop_training = True

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        if self.epoch is None and self.reached(logs.get(self.key)):
            self.epoch = epoch
            self.seconds = round(trainer.elapsed_fit_seconds(), 4)
        if self.stop and self.epoch is not None:
            trainer.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seconds": self.seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.seconds = state["epoch"], state["seconds"]

    def report(self) -> dict[str, Any]:
        return {
            "metric": self.target.metric,
            "value": self.target.value,
            "reached": self.epoch is not None,
            "epoch": self.epoch,
            "seconds": self.seconds,
        }


def shared_min_delta(cfg: Config, key: str, mode: str) -> float:
    """The ``min_delta`` an improvement of ``key`` (its direction ``mode``) must beat: early
    stopping's when it watches the same metric the same way, so that ``checkpoints/best``,
    the epoch early stopping restores and the best epoch reported are one epoch; else 0."""
    early = cfg.training.early_stopping
    if early is None or history_key(early.monitor) != key:
        return 0.0
    return early.min_delta if metric_mode(early.monitor, early.mode) == mode else 0.0


# --- checkpoints ------------------------------------------------------------------------------


class Checkpointer(Reporting):
    """``training.checkpoint``: save ``checkpoints/last`` every N epochs, at the end, and when
    interrupted; keep ``checkpoints/best`` by the monitored metric (see dlcli.checkpoint)."""

    report_key = "checkpoints"

    def __init__(self, config: Config, run_dir: Path, *, work_dir: Path | None = None) -> None:
        self.config = config
        self.checkpointing = config.training.checkpoint
        self.run_dir = Path(run_dir)  # where the checkpoints will be once the run is saved
        self.work_dir = Path(work_dir or run_dir)  # where they are written while training
        self.mode = metric_mode(self.checkpointing.monitor, self.checkpointing.mode)
        self.key = history_key(self.checkpointing.monitor)
        self.min_delta = shared_min_delta(config, self.key, self.mode)
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        if not self.checkpointing.every:
            return
        value = logs.get(self.key)
        better = self.checkpointing.keep_best and improved(
            value, self.best, self.mode, self.min_delta
        )
        if better:
            self.best, self.best_epoch = value, epoch
        due = (
            epoch % self.checkpointing.every == 0
            or epoch >= trainer.epochs
            or trainer.stop_training
        )
        if due:
            self._save(trainer, checkpoint.LAST)
        if better and due:
            checkpoint.copy(self.work_dir, checkpoint.LAST, checkpoint.BEST)
        elif better:
            self._save(trainer, checkpoint.BEST)

    def on_interrupt(self, trainer: Loop) -> None:
        if self.checkpointing.every:
            self._save(trainer, checkpoint.LAST)

    def _save(self, trainer: Loop, name: str) -> None:
        checkpoint.save(self.work_dir, name, self.config, trainer.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]

    def report(self) -> dict[str, Any]:
        root = checkpoint.directory(self.run_dir)
        return {
            "every": self.checkpointing.every,
            "last": str(root / checkpoint.LAST) if self.checkpointing.every else None,
            "best": str(root / checkpoint.BEST) if self.best_epoch is not None else None,
            "monitor": self.checkpointing.monitor,
            "best_epoch": self.best_epoch,
        }
