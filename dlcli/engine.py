"""fit / evaluate: the training loop, its metrics and its callbacks. Never prints.

Progress, checkpoints, early stopping and the like are callbacks (:class:`Callback`); the
command line hands in one that draws rich progress bars. The loop keeps the whole dataset as one
uint8 tensor on the device and slices batches out of a seeded per-epoch permutation, so the
same seed gives the same run, and metrics accumulate on the device and are read once an epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dlcli.config import OptimizerConfig, TrainingConfig
from dlcli.data.dataset import Split
from dlcli.errors import ConfigError, TrainingError

Logs = dict[str, float]


class Callback:
    """Hooks called by :class:`Trainer`; override the ones you need."""

    def on_fit_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


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


def make_optimizer(params: Sequence[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Build the optimizer; Adam/AdamW use the fused kernel (same maths, fewer passes)."""
    lr = cfg.learning_rate
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return cls(
            params,
            lr=lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.epsilon,
            weight_decay=cfg.weight_decay,
            fused=True,
        )
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.RMSprop(
        params, lr=lr, momentum=cfg.momentum, eps=cfg.epsilon, weight_decay=cfg.weight_decay
    )


@dataclass
class _Running:
    """Sums accumulated on the device during an epoch; read with one sync."""

    loss: torch.Tensor
    correct: torch.Tensor
    top_k: torch.Tensor
    count: int = 0


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
    ) -> None:
        if training.optimizer.nesterov and training.optimizer.name != "sgd":
            raise ConfigError("training.optimizer.nesterov: only sgd supports Nesterov momentum")
        self.cfg = training
        self.device = device
        self.model = model.to(device)
        self.num_classes = num_classes
        self.optimizer = make_optimizer(list(self.model.parameters()), training.optimizer)
        self.callbacks = list(callbacks)
        self.history: list[Logs] = []
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.steps_per_epoch = 0
        self.stop_training = False
        self.fit_seconds = 0.0
        self._running: _Running | None = None

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, train: Split, validation: Split | None = None) -> list[Logs]:
        """Train for ``cfg.epochs`` epochs (continuing from ``self.epoch``); return the history."""
        images, labels = self._to_device(train)
        self.steps_per_epoch = math.ceil(len(labels) / self.cfg.batch_size)
        self._call("on_fit_begin")
        start = time.perf_counter()
        while self.epoch < self.cfg.epochs and not self.stop_training:
            epoch = self.epoch + 1
            self._call("on_epoch_begin", epoch)
            epoch_start = time.perf_counter()
            logs = self._train_epoch(images, labels, epoch)
            if validation is not None:
                logs |= {f"val_{k}": v for k, v in self.evaluate(validation).items()}
            logs["lr"] = float(self.optimizer.param_groups[0]["lr"])
            logs["seconds"] = time.perf_counter() - epoch_start
            self.epoch = epoch
            self.history.append({"epoch": float(epoch), **logs})
            self._call("on_epoch_end", epoch, self.history[-1])
        self.fit_seconds += time.perf_counter() - start
        self._call("on_fit_end")
        return self.history

    def _train_epoch(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> Logs:
        self.model.train()
        self._running = self._new_running()
        for step, index in enumerate(self._batches(len(labels), epoch), start=1):
            x = images[index].float().div_(255)
            y = labels[index]
            # 1. forward and loss, 2. backward, 3. update; metrics stay on the device.
            logits = self.model(x)
            loss = self._loss(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._accumulate(self._running, logits.detach(), y, loss.detach())
            self.global_step += 1
            if self.device.type == "cpu" and not math.isfinite(loss.item()):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch}, step {step}; "
                    "lower training.optimizer.learning_rate or check the data"
                )
            self._call("on_step_end", step)
            if self.stop_training:
                break
        logs = self._read(self._running)
        self._running = None
        if not math.isfinite(logs["loss"]):
            raise TrainingError(
                f"the loss became {logs['loss']} during epoch {epoch}; "
                "lower training.optimizer.learning_rate or check the data"
            )
        return logs

    def _batches(self, n: int, epoch: int) -> Iterator[torch.Tensor]:
        """Index tensors for one epoch: a permutation seeded by (seed, epoch), so a resumed
        run shuffles exactly as an uninterrupted one would."""
        if self.cfg.shuffle:
            generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        yield from order.split(self.cfg.batch_size)

    # --- evaluation -------------------------------------------------------------------------

    @torch.inference_mode()
    def evaluate(self, split: Split, batch_size: int = 1000) -> Logs:
        """Loss and metrics of the model on a split (eval mode, no gradients)."""
        self.model.eval()
        images, labels = self._to_device(split)
        running = self._new_running()
        for index in torch.arange(len(labels), device=self.device).split(batch_size):
            logits = self.model(images[index].float().div_(255))
            y = labels[index]
            self._accumulate(running, logits, y, self._loss(logits, y))
        return self._read(running)

    @torch.inference_mode()
    def predict_logits(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        self.model.eval()
        out = [
            self.model(batch.to(self.device).float().div_(255)).float().cpu()
            for batch in images.split(batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def running_logs(self) -> Logs:
        """Mean loss and metrics of the epoch so far (one device sync; for progress bars)."""
        return self._read(self._running) if self._running and self._running.count else {}

    # --- metrics ----------------------------------------------------------------------------

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.loss == "mse":
            target = F.one_hot(y, self.num_classes).to(logits.dtype)
            return F.mse_loss(logits, target)
        return F.cross_entropy(logits, y)

    def _new_running(self) -> _Running:
        zero = torch.zeros((), device=self.device)
        return _Running(zero.clone(), zero.clone(), zero.clone())

    def _accumulate(
        self, running: _Running, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor
    ) -> None:
        n = len(y)
        running.loss += loss.float() * n
        running.count += n
        if "accuracy" in self.cfg.metrics:
            running.correct += (logits.argmax(dim=1) == y).sum()
        if "top_k_accuracy" in self.cfg.metrics:
            k = min(self.cfg.top_k, logits.shape[1])
            running.top_k += (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()

    def _read(self, running: _Running) -> Logs:
        count = max(running.count, 1)
        values = torch.stack([running.loss, running.correct, running.top_k]).tolist()
        logs: Logs = {"loss": values[0] / count}
        if "accuracy" in self.cfg.metrics:
            logs["accuracy"] = values[1] / count
        if "top_k_accuracy" in self.cfg.metrics:
            logs["top_k_accuracy"] = values[2] / count
        return logs

    # --- plumbing ---------------------------------------------------------------------------

    def _to_device(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return split.images.to(self.device), split.labels.to(self.device)

    def _call(self, hook: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)
