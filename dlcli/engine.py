"""fit: the training loop and its one step. Never prints.

:meth:`Trainer.train_step` is the whole step, top to bottom: the batch, forward, loss,
backward, update, metrics. The options that change how a step runs (mixed precision,
torch.compile, channels_last, the flat parameter buffer: ``dlcli/accel.py``; data parallelism:
``dlcli/distributed``; explicit matmuls instead of autograd for a stack of dense layers:
``dlcli/dense_step.py``) are small objects it calls at named points; a single process has no
data-parallel object and runs no distributed code. Two points are left for what plugs into the
step: ``augment`` (an on-device transform of each uint8 batch, before forward:
``training.augment``, dlcli/augment.py) and ``after_update`` (hooks after each optimizer
update: ``training.ema``'s weight average, dlcli/averaging.py). With a weight average,
validation scores the average and the fit ends with the average in the model (the run's
model); ``training.class_weights`` weighs the training loss.

Around the step, :meth:`Trainer.fit` runs epochs: the whole dataset is one uint8 tensor on the
device, batches are slices of a seeded per-epoch permutation (the same seed gives the same
run), metrics accumulate on the device and are read once an epoch, and progress, checkpoints,
early stopping and the like are callbacks (:class:`~dlcli.hooks.Callback`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dlcli import dense_step, metric_names, native
from dlcli.accel import (
    ChannelsLast,
    DeviceData,
    FlatParameters,
    Precision,
    compiled,
    to_float,
)
from dlcli.augment import Augmenter
from dlcli.averaging import WeightAverage
from dlcli.config import TrainingConfig
from dlcli.data.dataset import Split
from dlcli.errors import ConfigError, Interrupted, ModelDirError, TrainingError
from dlcli.evaluation import Objective, Running, Scorer, score
from dlcli.hooks import Callback, Logs
from dlcli.model import has_fused_conv, has_native_pool, native_pooling
from dlcli.optim import make_optimizer, stepper
from dlcli.untrusted import conforms, shorten

if TYPE_CHECKING:
    from dlcli.distributed import World

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(images, labels) → (images, targets)`` on the device: uint8 N×C×H×W images in, uint8
images or float images in [0, 1] out; targets the labels, or class probabilities (N×classes)
for mixing (:class:`dlcli.augment.Augmenter`)."""


class Trainer:
    """Fits a model to a :class:`Split` and evaluates it; see :class:`~dlcli.hooks.Callback`
    for the hooks. ``world`` is this worker's place in a data-parallel run (``None``: a single
    process)."""

    def __init__(
        self,
        model: nn.Module,
        training: TrainingConfig,
        *,
        num_classes: int,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        world: World | None = None,
        augment: BatchTransform | None = None,
        after_update: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.training = training
        self.device = device
        self.num_classes = num_classes
        self.objective = Objective.of(training, num_classes)
        # The step's options (dlcli/accel.py), resolved once for this device and model.
        self.precision = Precision(training.precision, device)  # auto (a Trainer made directly)
        self.channels_last = ChannelsLast(training.channels_last, model)
        self.model = self.channels_last.model(model.to(device))  # its parameters and names
        self.flat = FlatParameters(self.model)  # every parameter in one buffer
        self.forward = compiled(self.model, training.compile)  # what runs the model
        # Data parallel: training runs through DistributedDataParallel (compiled too with
        # training.compile); evaluation through self.forward on this worker's block.
        self.world = world if world is not None and world.distributed else None
        self.train_forward = self.forward
        if self.world is not None:
            self.train_forward = compiled(self.world.wrap(self.model, device), training.compile)
        self.optimizer = make_optimizer([self.flat.params], training.optimizer)
        self.optimizer_step = stepper(self.optimizer)  # optimizer.step, or the same kernel call
        # training.backward: explicit matmuls for a stack of dense layers (dlcli/dense_step.py)
        self.explicit = dense_step.plan(
            self.model, training, distributed=self.world is not None, precision=self.precision.name
        )
        # training.native_kernels: dlcli's compiled 2x2 max-pooling (dlcli/native.py), built
        # and checked here, before the first step
        self.native_pooling = has_native_pool(self.model) and not native.why_not(
            enabled=training.native_kernels,
            device=device,
            compiled=training.compile,
            precision=self.precision.name,
        )
        native_pooling(self.model, self.native_pooling)
        # ... and its convolutions fused with such a pooling (float32, or as bf16 autocast
        # computes it)
        self.native_conv = (
            self.native_pooling
            and self.precision.name in ("fp32", "bf16")
            and has_fused_conv(self.model)
        )
        self.augment = augment
        self.after_update = list(after_update)
        # training.ema: the weight average among the hooks, which validation scores.
        self.ema = next((h for h in self.after_update if isinstance(h, WeightAverage)), None)
        self._average_in_model = False  # set when the fit ends: the model is the average now
        self.class_weights: torch.Tensor | None = None  # set by fit from the training labels
        self.scorer = Scorer(self.model, device, self.precision, self.channels_last, self.forward)
        self.on_device = DeviceData(device)  # each split copied to the device once
        if device.type == "cuda":  # batches of one shape: let cuDNN pick its fastest kernels
            torch.backends.cudnn.benchmark = True
        self.callbacks = list(callbacks)
        self.history: list[Logs] = []
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.steps_per_epoch = 0
        self.stop_training = False  # set by callbacks: end after this epoch (or step)
        self._interrupted: str | None = None  # what every worker agreed on (see interrupted)
        self._stop_request: str | None = None  # this worker's signal, not yet agreed on
        self._signal_vote = self.world.signal_vote() if self.world is not None else None
        self.step_in_epoch = 0  # steps done in the epoch under way
        # What the last step did, for callbacks that record it (dlcli/steps.py): its loss, a
        # tensor still on the device (reading it would wait for the step), and learning rate.
        self.step_loss: torch.Tensor | None = None
        self.step_lr = 0.0
        self.fit_seconds = 0.0
        self._fit_start: float | None = None
        self._running: Running | None = None
        self._resume: Mapping[str, Any] | None = None
        self._resume_source = "checkpoint"

    @property
    def batch_size(self) -> int:
        """Samples per step (``training.batch_size``, the global batch)."""
        return self.training.batch_size

    @property
    def epochs(self) -> int:
        """The number of epochs the fit runs to (``training.epochs``)."""
        return self.training.epochs

    # --- the step ---------------------------------------------------------------------------

    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor:
        """One step on the samples ``batch`` (indices into the uint8 ``images`` and the
        ``labels``, all on the device); returns the batch's mean loss (detached)."""
        # 1. The batch: this worker's share of it (data parallel only), then its rows.
        index = batch if self.world is None else self.world.shard(batch)
        x, y = images.index_select(0, index), labels.index_select(0, index)
        targets = y
        # 2. Augmentation, on the device, of the uint8 batch (``augment``; none by default).
        if self.augment is not None:
            x, targets = self.augment(x, y)
        # 3. Pixels → float32 in [0, 1] (augmented ones already are), NHWC for convolutions.
        x = self.channels_last.batch(x if x.is_floating_point() else to_float(x))
        if self.explicit is not None:
            # 4+5. A stack of dense layers: forward, loss and backward as explicit matmuls,
            #      the gradients written into the flat buffer (training.backward; the maths
            #      autograd does, without its bookkeeping).
            logits, loss = self.explicit(x, targets)
            self.flat.attach()
        else:
            # 4. Forward and loss (weighted by training.class_weights), in mixed precision if
            #    asked.
            over = self._weighted_over(targets, labels, batch)
            with self.precision.autocast():
                logits = self.train_forward(x)
                loss = self.objective.loss_of(logits, targets, self.class_weights, over)
            # 5. Backward: zero the one flat gradient buffer (one memset), then back-propagate
            #    (fp16: the loss scaled against underflow; data parallel: weighted by this
            #    worker's share of the global batch, DDP averaging the gradients).
            self.flat.zero_grad()
            if self.world is None or over is not None:
                self.precision.backward(loss)
            else:
                self.precision.backward(self.world.scale_loss(loss, len(y), len(batch)))
        # 6. Update: one optimizer step (Adam: one fused kernel over the flat buffer).
        self.precision.update(self.optimizer, self.optimizer_step)
        # 7. After the update: weight averaging and the like (``after_update``; none by default).
        for hook in self.after_update:
            hook()
        # 8. Metrics: file the loss and the predictions on the device; read once an epoch.
        loss = loss.detach()
        assert self._running is not None
        self._running.add(loss, logits.detach(), y)
        return loss

    def _weighted_over(
        self, targets: torch.Tensor, labels: torch.Tensor, batch: torch.Tensor
    ) -> torch.Tensor | None:
        """Data parallel with class weights and class-index targets: what each worker's loss is
        a mean over, the global batch's summed weights over the workers (DDP averages the
        workers' gradients into the global batch's weighted mean's; a worker's own weighted
        mean, scaled by its share of the samples, gave another update than one process's).
        None otherwise: each worker's mean, scaled by :meth:`World.scale_loss`."""
        if self.world is None or self.class_weights is None or targets.is_floating_point():
            return None
        whole = self.objective.mean_over(labels.index_select(0, batch), self.class_weights)
        return torch.as_tensor(whole) / self.world.size

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, train: Split, validation: Split | None = None) -> list[Logs]:
        """Train until ``training.epochs`` epochs are done (continuing from ``self.epoch``, or
        from :meth:`load_state_dict`); return the history.

        Raises :class:`Interrupted` when :attr:`interrupted` is set (after the current step and
        the callbacks' ``on_interrupt``), :class:`TrainingError` on a non-finite loss.
        """
        images, labels = self.on_device(train.images, train.labels)
        self.class_weights = class_weights(self.training.class_weights, labels, self.num_classes)
        self._average_in_model = False
        self.steps_per_epoch = math.ceil(len(labels) / self.training.batch_size)
        self._call("on_fit_begin")
        if self._resume is not None:  # after on_fit_begin: schedulers exist to take their state
            self._apply_checked_state(self._resume)
            self._resume = None
            self._call("on_resume")
        self._fit_start = time.perf_counter()
        try:
            while self.epoch < self.epochs and not (self.stop_training or self.interrupted):
                epoch = self.epoch + 1
                self._call("on_epoch_begin", epoch)
                epoch_start = time.perf_counter()
                logs = self._train_epoch(images, labels, epoch)
                if self.interrupted:
                    break
                if validation is not None:  # with training.tta, as the run's final metrics
                    scored = self.evaluate(validation, tta=self.training.tta)
                    logs |= metric_names.tagged(scored, "validation")
                # The rate the epoch's last step used (steps.csv's): after it a per-step
                # schedule has moved the optimizer's to the next step's.
                logs["lr"] = float(self.step_lr)
                logs["seconds"] = time.perf_counter() - epoch_start
                self.epoch = epoch
                self.history.append({"epoch": float(epoch), **logs})
                self._call("on_epoch_end", epoch, self.history[-1])
                self._agree()
            if self.interrupted:
                self._gather_running()
                self._call("on_interrupt")
                raise Interrupted(
                    f"training interrupted ({self.interrupted}) in epoch {self.epoch + 1}, "
                    f"after step {self.step_in_epoch} of {self.steps_per_epoch}"
                )
            if self.ema is not None:  # the run's model is the average (before early
                self.ema.copy_to_model()  # stopping restores its best, an average too)
                self._average_in_model = True
        finally:
            self.fit_seconds = self.elapsed_fit_seconds()
            self._fit_start = None
            self._call("on_fit_end")
        return self.history

    def _train_epoch(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Logs:
        self.model.train()
        done = self.step_in_epoch  # > 0 only when resuming inside this epoch
        if self._running is None:
            self._running = self.objective.running(self.device)
        batches = itertools.islice(self._batches(len(labels), epoch), done, None)
        start, samples = time.perf_counter(), 0  # this process's share of the epoch: speed
        for step, batch in enumerate(batches, start=done + 1):
            if self.world is not None:  # each worker its own dropout stream, seeded by the
                # step: a run resumed at any step draws what the uninterrupted run drew
                self.world.seed(self.training.seed, self.global_step)
            loss = self.train_step(images, labels, batch)
            self.global_step += 1
            self.step_in_epoch = step
            self.step_loss, self.step_lr = loss.detach(), self.optimizer.param_groups[0]["lr"]
            samples += len(batch)
            if self.device.type == "cpu" and not math.isfinite(loss.item()):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch}, step {step}; "
                    "lower training.optimizer.learning_rate or check the data"
                )
            self._call("on_step_end", step)
            self._agree(each_step=True)
            if self.stop_training or self.interrupted:
                break
        if self.interrupted:  # keep the running sums: the checkpoint needs them
            return {}
        logs = self._read(self._running)  # waits for the last step: the time below is honest
        seconds = time.perf_counter() - start
        logs["samples_per_second"] = samples / seconds if seconds > 0 else 0.0
        self._running = None
        self.step_in_epoch = 0
        if not math.isfinite(logs["loss"]):
            raise TrainingError(
                f"the loss became {logs['loss']} during epoch {epoch}; "
                "lower training.optimizer.learning_rate or check the data"
            )
        return logs

    def _batches(self, n: int, epoch: int) -> Iterator[torch.Tensor]:
        """Index tensors for one epoch: a permutation seeded by (seed, epoch), so a resumed
        run shuffles exactly as an uninterrupted one would."""
        if self.training.shuffle:
            # Modulo 2^64, what a torch seed can hold (training.seed goes up to 2^63-1).
            seed = (self.training.seed * 100_003 + epoch) % 2**64
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        yield from order.split(self.training.batch_size)

    def elapsed_fit_seconds(self) -> float:
        """Seconds spent in :meth:`fit` so far, over every run of a resumed fit."""
        if self._fit_start is None:
            return self.fit_seconds
        return self.fit_seconds + time.perf_counter() - self._fit_start

    # --- stopping: signals and callbacks, agreed between workers ----------------------------

    @property
    def interrupted(self) -> str | None:
        """Set (to the signal's name) by a signal handler: checkpoint and stop after the current
        step. In a distributed run it reads what the workers agreed on, so all of them stop at
        the same step (a worker leaving alone would leave the others waiting); see _agree."""
        return self._interrupted

    @interrupted.setter
    def interrupted(self, value: str | None) -> None:
        self._stop_request = value
        if self.world is None:
            self._interrupted = value

    def _agree(self, *, each_step: bool = False) -> None:
        """Distributed: stop everywhere if a signal reached any worker, or (at the end of an
        epoch) a callback on any worker says so. After each step the signal vote runs while the
        next step computes and is read one step later, so it costs no wait; callbacks see the
        same global logs on every worker and decide alike in between."""
        if self.world is None or self._signal_vote is None:
            return
        if each_step:
            if self._signal_vote.step(self._stop_request is not None):
                self._interrupted = self._stop_request or "a signal to another worker"
            return
        self._signal_vote.settle()
        self.stop_training, self._interrupted = self.world.agree(
            self.stop_training, self._stop_request
        )

    def _gather_running(self) -> None:
        """Distributed and stopped inside an epoch: make rank 0's running sums every worker's
        (all of them stop at the same step), so the checkpoint rank 0 writes holds the whole
        epoch so far and a resumed run reports the epoch's metrics over every sample."""
        running = self._running
        if self.world is None or running is None or not self.step_in_epoch:
            return
        values, total = self.world.sum_metrics(running.sums(), running.count)
        if self.world.is_main:
            self._running = Running(
                self.objective,
                torch.tensor([values[0]], device=self.device),
                torch.tensor(round(values[1]), device=self.device),
                torch.tensor(round(values[2]), device=self.device),
                total,
            )

    # --- state: what a checkpoint holds -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a fit needs to continue exactly where it is: nested plain data and
        tensors (a checkpoint stores the tensors as safetensors and the rest as JSON)."""
        running = None
        if self._running is not None and self.step_in_epoch:
            r = self._running
            r.fold()  # pending steps into the tensors saved
            running = {
                "loss_terms": r.loss_terms,
                "correct": r.correct,
                "top_k": r.top_k,
                "count": r.count,
            }
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        elif self.device.type == "mps":  # dropout on an Apple GPU draws from its own generator
            rng["mps"] = torch.mps.get_rng_state()
        callbacks = {key: cb.state_dict() for key, cb in self._keyed_callbacks().items()}
        return {
            **self.tool_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "step_lr": float(self.step_lr),
            "fit_seconds": self.elapsed_fit_seconds(),
            "history": [dict(row) for row in self.history],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "running": running,
            "rng": rng,
            "callbacks": {key: state for key, state in callbacks.items() if state},
        }

    def tool_state(self) -> dict[str, Any]:
        """The augmentation generators' and the weight average's state, when they are on."""
        state: dict[str, Any] = {}
        if isinstance(self.augment, Augmenter):
            state["augment"] = self.augment.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], source: str = "checkpoint") -> None:
        """Continue from :meth:`state_dict` (also as read back from JSON). The weights load now;
        the rest when :meth:`fit` begins, once the callbacks have built their schedulers.
        ``source`` names the file in error messages."""
        self.model.load_state_dict(state["model"], strict=True)
        self._resume = state
        self._resume_source = source

    def _apply_checked_state(self, state: Mapping[str, Any]) -> None:
        """:meth:`_apply_state`, the callbacks' states checked against the form they have
        now (dlcli.checkpoint has checked every tensor, counter and optimizer setting); a
        state that still does not fit is a :class:`ModelDirError`, never a crash."""
        saved = state.get("callbacks", {})
        for key, callback in self._keyed_callbacks().items():
            if isinstance(saved, Mapping) and key in saved:
                problem = conforms(saved[key], callback.state_dict(), key)
                if problem:
                    raise ModelDirError(
                        f"{self._resume_source}: the state of {key} does not fit this run "
                        f"({problem})"
                    )
        try:
            self._apply_state(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
            raise ModelDirError(
                f"{self._resume_source}: the checkpoint's state does not fit this run "
                f"({type(err).__name__}: {shorten(str(err))})"
            ) from None

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.fit_seconds = float(state["fit_seconds"])
        self.history = [{k: float(v) for k, v in row.items()} for row in state["history"]]
        self.optimizer.load_state_dict(_optimizer_state(state["optimizer"], self.optimizer))
        # The rate of the last step taken (what its epoch's row records, should no step of
        # that epoch be left to take); a checkpoint from before it was kept: the optimizer's.
        saved_lr = state.get("step_lr")
        if not (isinstance(saved_lr, int | float) and math.isfinite(saved_lr)):
            saved_lr = self.optimizer.param_groups[0]["lr"]
        self.step_lr = float(saved_lr)
        running = state.get("running")
        if running and (self.world is None or self.world.is_main):  # see _gather_running
            self._running = Running(
                self.objective,
                running["loss_terms"].to(self.device),
                running["correct"].to(self.device),
                running["top_k"].to(self.device),
                int(running["count"]),
            )
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        elif self.device.type == "mps" and "mps" in state["rng"]:
            torch.mps.set_rng_state(state["rng"]["mps"])
        if isinstance(self.augment, Augmenter) and "augment" in state:
            self.augment.load_state_dict(state["augment"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        saved = state.get("callbacks", {})
        for key, callback in self._keyed_callbacks().items():
            if key in saved:
                callback.load_state_dict(saved[key])

    def _keyed_callbacks(self) -> dict[str, Callback]:
        """Callbacks by a stable key (class name, numbered when repeated) for their state."""
        keyed: dict[str, Callback] = {}
        for callback in self.callbacks:
            key = name = type(callback).__name__
            for n in itertools.count(2):
                if key not in keyed:
                    break
                key = f"{name}_{n}"
            keyed[key] = callback
        return keyed

    # --- evaluation and metrics ---------------------------------------------------------------

    def evaluate(self, split: Split, batch_size: int = 1000, tta: str = "none") -> Logs:
        """Loss and metrics of the model on a split (dlcli.evaluation; distributed: each
        worker scores its block of the split, and the sums are added up). With
        ``training.ema`` the average is scored; never augmented, but for the test-time
        augmentation ``tta`` (none or flip)."""
        images, labels = self.on_device(split.images, split.labels)
        scorer = self.scorer if tta == self.scorer.tta else replace(self.scorer, tta=tta)
        rows = None
        with self.averaged():
            if self.world is not None:
                self.world.broadcast_buffers(self.model)  # score the model rank 0 saves
                rows = self.world.block(len(labels))
            running = score(
                scorer, images, labels, self.objective, batch_size=batch_size, rows=rows
            )
        return self._read(running)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """With ``training.ema``, the weight average in the model for the duration (once the
        fit has ended the model already holds it)."""
        if self.ema is None or self._average_in_model:
            yield
            return
        with self.ema.swapped_in():
            yield

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights validation scores (with ``training.ema``, the average), copied."""
        with self.averaged():
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def running_logs(self) -> Logs:
        """Mean loss and metrics of the epoch so far (one device sync; for progress bars)."""
        running = self._running
        return self._read(running, local=True) if running and running.count else {}

    def _read(self, running: Running, *, local: bool = False) -> Logs:
        """Means of the sums (one sync); distributed, summed over every worker unless
        ``local`` (progress bars: rank 0 alone must not wait for the others)."""
        if local or self.world is None:
            return running.logs()
        values, total = self.world.sum_metrics(running.sums(), running.count)
        return self.objective.logs(values, total)

    def _call(self, hook: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def class_weights(
    setting: str | list[float] | None, labels: torch.Tensor, num_classes: int
) -> torch.Tensor | None:
    """``training.class_weights`` as a tensor on the labels' device: ``balanced`` gives class
    c the weight n / (classes * n_c) of the training labels (absent classes: 0); a list is
    taken as is."""
    if setting is None:
        return None
    if setting == "balanced":
        counts = torch.bincount(labels, minlength=num_classes).double()
        weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), 0.0)
        return weights.float()
    if len(setting) != num_classes:
        raise ConfigError(
            f"training.class_weights: expected {num_classes} weights (one per class), "
            f"found {len(setting)}"
        )
    return torch.tensor(setting, dtype=torch.float32, device=labels.device)


def _optimizer_state(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state dict as JSON gives it back (string keys, lists for tuples), made
    what ``load_state_dict`` expects: integer parameter ids, tuples where the optimizer has
    tuples (Adam's betas)."""
    current = optimizer.param_groups
    groups = []
    for i, group in enumerate(saved["param_groups"]):
        like = current[i] if i < len(current) else {}
        groups.append(
            {
                k: tuple(v) if isinstance(like.get(k), tuple) and isinstance(v, list) else v
                for k, v in group.items()
            }
        )
    state = {int(k): dict(v) for k, v in saved["state"].items()}
    return {"state": state, "param_groups": groups}
