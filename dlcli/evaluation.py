"""Scoring a model: its loss and metrics on a split, or its outputs for some images.

Functions of a model and its inputs, usable without a Trainer or an optimizer: ``evaluate``,
``predict``, ``export``, ``plot`` and the training loop's own validation all run through them.
The loss and the metrics a run is scored by are one :class:`Objective` (from ``training.*``);
an epoch's sums accumulate on the device in :class:`Running` and are read with one sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcli import limits
from dlcli.accel import ChannelsLast, FlatParameters, Precision, to_float
from dlcli.averaging import tta_forward
from dlcli.config import TrainingConfig
from dlcli.data.dataset import Split
from dlcli.errors import UsageError
from dlcli.hooks import Logs

# Steps filed before they are folded: small tensors kept alive across many steps fragment the
# CPU allocator's heap (never folding, an epoch of Fashion-MNIST grew peak RSS by ~300 MB).
_FOLD_EVERY = 32


@dataclass(frozen=True)
class Objective:
    """What a model is trained and scored by: ``training.loss`` (with ``label_smoothing``) and
    ``training.metrics`` (``accuracy``, ``top_k_accuracy`` with ``top_k``)."""

    num_classes: int
    loss: str = "softmax_cross_entropy_with_logits"
    label_smoothing: float = 0.0
    metrics: tuple[str, ...] = ("accuracy",)
    top_k: int = 5

    @classmethod
    def of(cls, training: TrainingConfig, num_classes: int) -> Objective:
        return cls(
            num_classes,
            training.loss,
            training.label_smoothing,
            tuple(training.metrics),
            training.top_k,
        )

    def loss_of(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weight: torch.Tensor | None = None,
        over: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The batch's mean loss; an empty batch's is a zero that still reaches every
        parameter (a data-parallel worker with an empty shard joins the gradient all-reduce).
        ``targets``: class indices, or class probabilities (N×classes: a mixed batch, see
        dlcli.augment); ``weight``: per-class weights of the cross-entropy
        (``training.class_weights``); ``over``: what the weighted loss of class indices is a
        mean over (default: the batch's summed weights, :meth:`mean_over`; a data-parallel
        worker's: the global batch's, over the workers)."""
        if not len(targets):
            return logits.sum() * 0.0
        soft = targets.is_floating_point()
        if self.loss == "mse":
            onehot = targets if soft else F.one_hot(targets, self.num_classes)
            return F.mse_loss(logits, onehot.to(logits.dtype))
        if soft:  # probabilities: the mean over the batch of -sum(w_c * t_c * log p_c)
            targets = targets.to(logits.dtype)
        elif weight is not None:  # torch's weighted mean, but a batch of weight-0 classes is 0
            total = F.cross_entropy(
                logits,
                targets,
                weight=weight,
                label_smoothing=self.label_smoothing,
                reduction="sum",
            )
            return per(total, self.mean_over(targets, weight) if over is None else over)
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing)

    def mean_over(
        self, targets: torch.Tensor, weight: torch.Tensor | None = None
    ) -> int | torch.Tensor:
        """What :meth:`loss_of` divides a batch's summed loss by: the number of samples, or,
        with class weights and class indices (``training.class_weights``), the sum of the
        samples' weights (a tensor; 0 for a batch whose classes all weigh 0, see :func:`per`)."""
        if weight is None or targets.is_floating_point() or self.loss == "mse":
            return len(targets)
        return weight.index_select(0, targets).sum()

    def running(self, device: torch.device) -> Running:
        """Empty sums for an epoch or an evaluation, on ``device``."""
        zero = torch.zeros((), device=device, dtype=torch.long)
        return Running(self, torch.zeros(0, device=device), zero.clone(), zero.clone())

    def logs(self, sums: list[float], count: int) -> Logs:
        """Means of ``[loss sum, correct, top-k correct]`` over ``count`` samples."""
        count = max(count, 1)
        logs: Logs = {"loss": sums[0] / count}
        if "accuracy" in self.metrics:
            logs["accuracy"] = sums[1] / count
        if "top_k_accuracy" in self.metrics:
            logs["top_k_accuracy"] = sums[2] / count
        return logs


def per(total: torch.Tensor, amount: int | torch.Tensor) -> torch.Tensor:
    """``total / amount``, and 0 (with zero gradients) where the amount is 0: a batch of
    classes that all weigh 0 in ``training.class_weights`` carries no loss (torch's weighted
    mean is 0/0 = NaN there, which stopped training as a diverged loss)."""
    if isinstance(amount, int):
        return total / amount if amount else total * 0.0
    some = amount > 0
    return total * some / torch.where(some, amount, torch.ones_like(amount))


@dataclass
class Running:
    """Loss and metric sums so far, kept on the device and read with one sync.

    :meth:`add` only files a step's tensors (the loss, the predicted classes and the labels:
    one argmax kernel, no arithmetic); :meth:`fold` takes them in every ``_FOLD_EVERY`` steps
    and when somebody reads (a progress bar, the end of the epoch, a checkpoint). The loss is
    kept as one term per step and summed whole at each read, so the epoch's mean is the same
    float however often it was read or wherever a run was interrupted and resumed; the counts
    are integers.
    """

    objective: Objective
    loss_terms: torch.Tensor  # loss * batch size, one per step so far
    correct: torch.Tensor
    top_k: torch.Tensor
    count: int = 0
    pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]] = (
        field(default_factory=list)
    )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """File one batch's (detached) mean loss, outputs and labels."""
        metrics = self.objective.metrics
        predicted = logits.argmax(dim=1) if "accuracy" in metrics else None
        top_k = None
        if "top_k_accuracy" in metrics:
            top_k = logits.topk(min(self.objective.top_k, logits.shape[1]), dim=1).indices
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

    def logs(self) -> Logs:
        """The means so far (one device sync)."""
        return self.objective.logs(self.sums().tolist(), self.count)


@dataclass
class Scorer:
    """How a model is run for scoring: on which device, in which precision and layout, through
    which callable (``forward``: the model itself, or its compiled version)."""

    model: nn.Module
    device: torch.device
    precision: Precision
    channels_last: ChannelsLast
    forward: Callable[..., Any]
    tta: str = "none"  # test-time augmentation (training.tta, --tta): none or flip

    @classmethod
    def of(
        cls,
        model: nn.Module,
        *,
        device: torch.device | None = None,
        precision: str = "fp32",
        channels_last: bool | None = None,
        tta: str = "none",
    ) -> Scorer:
        """A model moved to ``device`` (default: where its parameters are) and laid out in
        memory as training lays it out (``training.channels_last``, and the flat buffer's
        input-major dense weights: a matmul over another layout may round its last bit
        otherwise, so a saved run scores exactly what its training reported); ``precision``
        as ``training.precision`` (fp16 off CUDA: fp32; auto: resolved for ``device``, as
        training resolves it); ``tta`` as ``training.tta``."""
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        layout = ChannelsLast(channels_last, model)
        module = layout.model(model.to(device))
        FlatParameters(module)
        inference = Precision(precision, device, training=False)
        return cls(module, device, inference, layout, module, tta)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The model's outputs for uint8 (or 0-255 float) images on the device, in the layout
        training used; with ``tta: flip``, the mean of each image's and its mirror's. Call it
        inside :attr:`precision`'s autocast."""
        x = self.channels_last.batch(to_float(images))
        return tta_forward(self.forward, self.tta)(x)

    def outputs(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`run` in the scorer's precision."""
        with self.precision.autocast():
            return self.run(images)


def check_batch_size(batch_size: int) -> None:
    """A batch size is a whole number from 1 to ``INT_MAX`` (the command line's
    ``--batch-size`` takes no other; from Python, 0 crashed and a negative one scored no
    batch: loss 0.0; beyond 64 bits torch's split overflowed: an internal error)."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= limits.INT_MAX
    ):
        raise UsageError(
            f"batch_size: expected a whole number from 1 to {limits.INT_MAX}, found {batch_size!r}"
        )


@torch.inference_mode()
def score(
    scorer: Scorer,
    images: torch.Tensor,
    labels: torch.Tensor,
    objective: Objective,
    *,
    batch_size: int = 1000,
    rows: range | None = None,
) -> Running:
    """The loss and metric sums of the model on ``images``/``labels`` (or on their ``rows``),
    in eval mode, without gradients."""
    check_batch_size(batch_size)
    scorer.model.eval()
    images, labels = images.to(scorer.device), labels.to(scorer.device)
    rows = range(len(labels)) if rows is None else rows
    running = objective.running(scorer.device)
    for start in range(rows.start, rows.stop, batch_size):
        index = slice(start, min(start + batch_size, rows.stop))  # in order: views
        y = labels[index]
        with scorer.precision.autocast():
            logits = scorer.run(images[index])  # never augmented, but for tta
            loss = objective.loss_of(logits, y)
        running.add(loss, logits, y)
    running.fold()  # here: tensors made in inference mode take in-place updates only in it
    return running


def evaluate(
    model: nn.Module | Scorer, split: Split, objective: Objective, *, batch_size: int = 1000
) -> Logs:
    """Loss and metrics of ``model`` on ``split`` (eval mode, no gradients)."""
    scorer = model if isinstance(model, Scorer) else Scorer.of(model)
    return score(scorer, split.images, split.labels, objective, batch_size=batch_size).logs()


@torch.inference_mode()
def outputs(
    model: nn.Module | Scorer, images: torch.Tensor, *, batch_size: int = 1000
) -> torch.Tensor:
    """The model's outputs (logits) for N×C×H×W images of 0-255 pixel values, batched, as
    float32 on the CPU."""
    check_batch_size(batch_size)
    scorer = model if isinstance(model, Scorer) else Scorer.of(model)
    scorer.model.eval()
    batches = images.split(batch_size) if len(images) else [images]  # none: an empty answer
    return torch.cat([scorer.outputs(b.to(scorer.device)).float().cpu() for b in batches])
