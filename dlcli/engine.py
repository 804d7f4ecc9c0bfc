"""fit / evaluate: the training loop, its metrics and its callbacks. Never prints.

Progress, checkpoints, early stopping and the like are callbacks (:class:`Callback`); the
command line hands in one that draws rich progress bars. The loop keeps the whole dataset as one
uint8 tensor on the device and slices batches out of a seeded per-epoch permutation, so the
same seed gives the same run, and metrics accumulate on the device and are read once an epoch.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcli.accel import Accel
from dlcli.augment import Mixed, make_augmenter, mixed_loss
from dlcli.averaging import WeightAverage, tta_forward
from dlcli.config import TrainingConfig
from dlcli.data.dataset import Split
from dlcli.distributed import SINGLE, SignalVote, World
from dlcli.errors import ConfigError, Interrupted, ModelDirError, TrainingError
from dlcli.optim import make_optimizer
from dlcli.untrusted import conforms, shorten

Logs = dict[str, float]


class Callback:
    """Hooks called by :class:`Trainer`; override the ones you need.

    ``on_fit_end`` is called however the fit ends (finished, stopped, interrupted, failed);
    ``on_interrupt`` just before :class:`Interrupted` is raised, after the current step. A
    callback with state that a resumed run needs returns it from ``state_dict`` (plain data
    and tensors) and takes it back in ``load_state_dict``.
    """

    def on_fit_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def on_interrupt(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"training.device: expected auto, cpu, cuda or cuda:N, found {name!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"training.device: {name!r} requested, but CUDA is not available "
                f"(torch {torch.__version__}); use device: cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"training.device: {name!r} requested, but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise ConfigError(f"training.device: expected auto, cpu, cuda or cuda:N, found {name!r}")
    return device


# Steps filed before they are folded: small tensors kept alive across many steps fragment the
# CPU allocator's heap (never folding, an epoch of Fashion-MNIST grew peak RSS by ~300 MB).
_FOLD_EVERY = 32


@dataclass
class _Running:
    """An epoch's metrics so far, kept on the device and read with one sync.

    A step only files its tensors (the loss, the predicted classes and the labels: one argmax
    kernel, no arithmetic); :meth:`fold` takes them in every ``_FOLD_EVERY`` steps and when
    somebody reads (a progress bar, the end of the epoch, a checkpoint). The loss is kept as
    one term per step and summed whole at each read, so the epoch's mean is the same float
    however often it was read or wherever a run was interrupted and resumed; the counts are
    integers.
    """

    loss_terms: torch.Tensor  # loss * batch size, one per step so far
    correct: torch.Tensor
    top_k: torch.Tensor
    count: int = 0
    pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]] = (
        field(default_factory=list)
    )

    def add(
        self,
        loss: torch.Tensor,
        predicted: torch.Tensor | None,
        top_k: torch.Tensor | None,
        labels: torch.Tensor,
    ) -> None:
        self.pending.append((loss, predicted, top_k, labels))
        self.count += len(labels)
        if len(self.pending) == _FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        if not self.pending:
            return
        losses, predicted, top_k, labels = zip(*self.pending, strict=True)
        sizes = [len(y) for y in labels]
        terms = torch.stack(losses).float()
        if min(sizes) == max(sizes):  # a Python number: no host-to-device copy, no CUDA sync
            terms *= sizes[0]
        else:  # the epoch's last, smaller batch: a copy (and sync) once an epoch
            terms *= torch.tensor(sizes, dtype=terms.dtype, device=terms.device)
        self.loss_terms = torch.cat([self.loss_terms, terms])
        y = torch.cat(labels)
        if predicted[0] is not None:
            self.correct += (torch.cat(predicted) == y).sum()
        if top_k[0] is not None:
            self.top_k += (torch.cat(top_k) == y[:, None]).any(dim=1).sum()
        self.pending.clear()

    def sums(self) -> torch.Tensor:
        """[loss sum, correct, top-k correct] as one float tensor."""
        self.fold()
        return torch.stack([self.loss_terms.sum(), self.correct.float(), self.top_k.float()])


class Trainer:
    """Fits a model to a :class:`Split` and evaluates it; see :class:`Callback` for hooks."""

    def __init__(
        self,
        model: nn.Module,
        training: TrainingConfig,
        *,
        num_classes: int,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        world: World = SINGLE,
    ) -> None:
        if training.optimizer.nesterov and training.optimizer.name != "sgd":
            raise ConfigError("training.optimizer.nesterov: only sgd supports Nesterov momentum")
        self.cfg = training
        self.device = device
        # precision, compile, channels_last (dlcli/accel.py): self.model is the module (its
        # parameters and names), self._forward what runs it (torch.compile'd if asked).
        self.accel = Accel(training, device)
        self.model, self._forward = self.accel.prepare(model)
        # Data-parallel (dlcli/distributed.py): training runs through DistributedDataParallel
        # (compiled too with training.compile), evaluation through self._forward on this
        # worker's block; one process: both the same.
        self.world = world
        self._train_forward = self._forward
        if world.distributed:
            self._train_forward = self.accel.runner(world.wrap(self.model, device))
        self._interrupted: str | None = None  # what every worker agreed on (see interrupted)
        self._stop_request: str | None = None  # this worker's signal, not yet agreed on
        self._signal_vote = SignalVote(world)
        self.num_classes = num_classes
        # One tensor holds every parameter (dlcli/accel.py, FlatParameters): the optimizer
        # updates it in one kernel; the module's parameters are views into it.
        self.optimizer = make_optimizer([self.accel.flat.params], training.optimizer)
        # Accuracy tools (dlcli/augment.py, dlcli/averaging.py): a batch transform before the
        # forward, a weight average after the update; class weights in the training loss.
        self.augment = make_augmenter(training.augment, device, training.seed)
        self.ema = WeightAverage(self.model, training.ema) if training.ema else None
        self.class_weights: torch.Tensor | None = None  # set by fit from the training labels
        self.callbacks = list(callbacks)
        self.history: list[Logs] = []
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.steps_per_epoch = 0
        self.stop_training = False  # set by callbacks: end after this epoch (or step)
        self.interrupted = None  # set by a signal handler: checkpoint and stop
        self.step_in_epoch = 0  # steps done in the epoch under way
        self.fit_seconds = 0.0
        self._fit_start: float | None = None
        self._running: _Running | None = None
        self._resume: Mapping[str, Any] | None = None
        self._resume_source = "checkpoint"

    @property
    def interrupted(self) -> str | None:
        """Set (to the signal's name) by a signal handler: checkpoint and stop after the current
        step. In a distributed run it reads what the workers agreed on, so all of them stop at
        the same step (a worker leaving alone would leave the others waiting); see _agree."""
        return self._interrupted

    @interrupted.setter
    def interrupted(self, value: str | None) -> None:
        self._stop_request = value
        if not self.world.distributed:
            self._interrupted = value

    def _agree(self, *, each_step: bool = False) -> None:
        """Distributed: stop everywhere if a signal reached any worker, or (at the end of an
        epoch) a callback on any worker says so. After each step the signal vote runs while the
        next step computes and is read one step later, so it costs no wait; callbacks see the
        same global logs on every worker and decide alike in between."""
        if not self.world.distributed:
            return
        if each_step:
            if self._signal_vote.step(self._stop_request is not None):
                self._interrupted = self._stop_request or "a signal to another worker"
            return
        self._signal_vote.settle()
        self.stop_training, self._interrupted = self.world.agree(
            self.stop_training, self._stop_request
        )

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, train: Split, validation: Split | None = None) -> list[Logs]:
        """Train until ``cfg.epochs`` epochs are done (continuing from ``self.epoch``, or from
        :meth:`load_state_dict`); return the history.

        Raises :class:`Interrupted` when :attr:`interrupted` is set (after the current step and
        the callbacks' ``on_interrupt``), :class:`TrainingError` on a non-finite loss.
        """
        images, labels = self._to_device(train)
        self.class_weights = class_weights(self.cfg.class_weights, labels, self.num_classes)
        self.steps_per_epoch = math.ceil(len(labels) / self.cfg.batch_size)
        self._call("on_fit_begin")
        if self._resume is not None:  # after on_fit_begin: schedulers exist to take their state
            self._apply_checked_state(self._resume)
            self._resume = None
        self.world.seed(self.cfg.seed, self.global_step)  # distributed: a dropout stream each
        self._fit_start = time.perf_counter()
        try:
            while self.epoch < self.cfg.epochs and not (self.stop_training or self.interrupted):
                epoch = self.epoch + 1
                self._call("on_epoch_begin", epoch)
                epoch_start = time.perf_counter()
                logs = self._train_epoch(images, labels, epoch)
                if self.interrupted:
                    break
                if validation is not None:
                    with self.averaged():  # EMA: score the average, the model a run saves
                        logs |= {f"val_{k}": v for k, v in self.evaluate(validation).items()}
                logs["lr"] = float(self.optimizer.param_groups[0]["lr"])
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
            if self.ema is not None:  # the run's model is the average (before early stopping
                self.ema.copy_to_model()  # restores its best, which is an average too)
        finally:
            self.fit_seconds = self.elapsed_fit_seconds()
            self._fit_start = None
            self._call("on_fit_end")
        return self.history

    def _train_epoch(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Logs:
        self.model.train()
        done = self.step_in_epoch  # > 0 only when resuming inside this epoch
        if self._running is None:
            self._running = self._new_running()
        batches = itertools.islice(self._batches(len(labels), epoch), done, None)
        for step, batch in enumerate(batches, start=done + 1):
            index = self.world.shard(batch)  # distributed: this worker's part of the batch
            y = labels[index]
            # 0. the batch: uint8 → float32 / 255, augmented on the device if asked.
            x, mixed = self._train_inputs(images, index, y)
            # 1. forward and loss, 2. backward, 3. update; metrics stay on the device.
            with self.accel.autocast():
                logits = self._train_forward(x)
                # An empty shard (a last batch smaller than the world) still joins DDP's
                # all-reduce, with a zero loss that reaches every parameter.
                loss = (
                    mixed_loss(self._train_loss, logits, y, mixed)
                    if len(y)
                    else (logits.sum() * 0.0)
                )
            self.accel.zero_grad()
            scaled = self.world.scale_loss(loss, len(y), len(batch))
            self.accel.backward_and_step(scaled, self.optimizer)  # grad-scaled for fp16
            if self.ema is not None:  # 4. the weight average follows the update
                self.ema.update()
            self._accumulate(self._running, logits.detach(), y, loss.detach())
            self.global_step += 1
            self.step_in_epoch = step
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
        logs = self._read(self._running)
        self._running = None
        self.step_in_epoch = 0
        if not math.isfinite(logs["loss"]):
            raise TrainingError(
                f"the loss became {logs['loss']} during epoch {epoch}; "
                "lower training.optimizer.learning_rate or check the data"
            )
        return logs

    def _train_inputs(
        self, images: torch.Tensor, index: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Mixed | None]:
        """A training batch as the model takes it; with ``training.augment``, augmented."""
        if self.augment is None:
            return self.accel.inputs(images, index), None  # one kernel
        x, mixed = self.augment(images.index_select(0, index), y)
        return self.accel.layout(x), mixed

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """With ``training.ema``, the weight average in the model for the duration."""
        if self.ema is None:
            yield
            return
        with self.ema.swapped_in():
            yield

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights validation scores (the average with EMA), as a copy."""
        with self.averaged():
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _gather_running(self) -> None:
        """Distributed and stopped inside an epoch: make rank 0's running sums every worker's
        (all of them stop at the same step), so the checkpoint rank 0 writes holds the whole
        epoch so far and a resumed run reports the epoch's metrics over every sample."""
        running = self._running
        if not self.world.distributed or running is None or not self.step_in_epoch:
            return
        values, total = self.world.sum_metrics(running.sums(), running.count)
        if self.world.is_main:
            self._running = _Running(
                torch.tensor([values[0]], device=self.device),
                torch.tensor(round(values[1]), device=self.device),
                torch.tensor(round(values[2]), device=self.device),
                total,
            )

    def _batches(self, n: int, epoch: int) -> Iterator[torch.Tensor]:
        """Index tensors for one epoch: a permutation seeded by (seed, epoch), so a resumed
        run shuffles exactly as an uninterrupted one would."""
        if self.cfg.shuffle:
            # Modulo 2^64, what a torch seed can hold (training.seed goes up to 2^63-1).
            generator = torch.Generator().manual_seed((self.cfg.seed * 100_003 + epoch) % 2**64)
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        yield from order.split(self.cfg.batch_size)

    def elapsed_fit_seconds(self) -> float:
        """Seconds spent in :meth:`fit` so far, over every run of a resumed fit."""
        if self._fit_start is None:
            return self.fit_seconds
        return self.fit_seconds + time.perf_counter() - self._fit_start

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
        callbacks = {key: cb.state_dict() for key, cb in self._keyed_callbacks().items()}
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "fit_seconds": self.elapsed_fit_seconds(),
            "history": [dict(row) for row in self.history],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "running": running,
            "rng": rng,
            "callbacks": {key: state for key, state in callbacks.items() if state},
            **self.tool_state(),
        }

    def tool_state(self) -> dict[str, Any]:
        """The augmentation generators' and the weight average's state (when they are on)."""
        return {
            **({"augment": self.augment.state_dict()} if self.augment else {}),
            **({"ema": self.ema.state_dict()} if self.ema else {}),
        }

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
        running = state.get("running")
        if running and self.world.is_main:  # every worker's sums so far (_gather_running)
            self._running = _Running(
                running["loss_terms"].to(self.device),
                running["correct"].to(self.device),
                running["top_k"].to(self.device),
                int(running["count"]),
            )
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.augment is not None and "augment" in state:
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

    # --- evaluation -------------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, split: Split, batch_size: int = 1000, tta: str = "none") -> Logs:
        """Loss and metrics of the model on a split (eval mode, no gradients, never augmented
        but for the test-time augmentation ``tta``: none or flip)."""
        self.model.eval()
        self.world.broadcast_buffers(self.model)  # distributed: score the model rank 0 saves
        images, labels = self._to_device(split)
        running = self._new_running()
        forward = tta_forward(self._forward, tta)
        block = self.world.block(len(labels))  # distributed: this worker's block; all-reduced
        for start in range(block.start, block.stop, batch_size):
            index = slice(start, min(start + batch_size, block.stop))  # in order: views
            y = labels[index]
            with self.accel.autocast():
                logits = forward(self.accel.inputs(images, index))
                loss = self._loss(logits, y)
            self._accumulate(running, logits, y, loss)
        return self._read(running)

    @torch.inference_mode()
    def predict_logits(
        self, images: torch.Tensor, batch_size: int = 1000, tta: str = "none"
    ) -> torch.Tensor:
        """Logits of uint8 images (eval mode; ``tta``: none or flip)."""
        self.model.eval()
        forward = tta_forward(self._forward, tta)
        out = []
        for batch in images.split(batch_size):
            with self.accel.autocast():
                logits = forward(self.accel.inputs(batch.to(self.device), slice(None)))
            out.append(logits.float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def running_logs(self) -> Logs:
        """Mean loss and metrics of the epoch so far (one device sync; for progress bars)."""
        running = self._running
        return self._read(running, local=True) if running and running.count else {}

    # --- metrics ----------------------------------------------------------------------------

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "mse":
            target = F.one_hot(y, self.num_classes).to(logits.dtype)
            return F.mse_loss(logits, target)
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)

    def _train_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss: ``_loss`` with ``training.class_weights``, if any."""
        if self.class_weights is None:
            return self._loss(logits, y)
        return F.cross_entropy(
            logits, y, weight=self.class_weights, label_smoothing=self.cfg.label_smoothing
        )

    def _new_running(self) -> _Running:
        zero = torch.zeros((), device=self.device, dtype=torch.long)
        return _Running(torch.zeros(0, device=self.device), zero.clone(), zero.clone())

    def _accumulate(
        self, running: _Running, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor
    ) -> None:
        predicted = logits.argmax(dim=1) if "accuracy" in self.cfg.metrics else None
        top_k = None
        if "top_k_accuracy" in self.cfg.metrics:
            top_k = logits.topk(min(self.cfg.top_k, logits.shape[1]), dim=1).indices
        running.add(loss, predicted, top_k, y)

    def _read(self, running: _Running, *, local: bool = False) -> Logs:
        """Means of the sums (one sync); distributed, summed over every worker unless
        ``local`` (progress bars: rank 0 alone must not wait for the others)."""
        sums = running.sums()
        if local:
            values, total = sums.tolist(), running.count
        else:
            values, total = self.world.sum_metrics(sums, running.count)
        count = max(total, 1)
        logs: Logs = {"loss": values[0] / count}
        if "accuracy" in self.cfg.metrics:
            logs["accuracy"] = values[1] / count
        if "top_k_accuracy" in self.cfg.metrics:
            logs["top_k_accuracy"] = values[2] / count
        return logs

    # --- plumbing ---------------------------------------------------------------------------

    def _to_device(self, split: Split) -> tuple[torch.Tensor, ...]:
        # Copied to the device once per split and Trainer, not at every evaluate() call.
        return self.accel.to_device(split.images, split.labels)

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
