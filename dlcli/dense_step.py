"""``training.backward``: the forward, loss and backward of a stack of dense layers as explicit
matmuls, without autograd (the same maths; see benchmarks/RESULTS.md for what it saves).

A step of a small MLP at batch 100 is mostly not arithmetic: autograd records a graph, saves
tensors, zeroes and accumulates into the gradients, and calls each kernel through several
layers of dispatch. For a model that is a plain stack of ``Flatten`` and ``Linear`` layers,
each with an optional ReLU, tanh or sigmoid (dlcli's ``dense`` layers with those activations
or ``linear``: the seed MLP), the backward
pass is short enough to write out, and :class:`DenseStep` does, with the kernels autograd
would call in the layouts it would call them in:

    forward   h = addmm(b, x, W.T) per layer, the activation in place
    loss      nll_loss(log_softmax(logits)), which is what F.cross_entropy computes (with
              label smoothing or soft targets, F.cross_entropy itself)
    backward  g = (softmax(logits) - targets) / batch; per layer, last first:
              W.grad.T = x.T @ g and b.grad = sum(g) written into the flat gradient buffer
              (no memset, no accumulation), then g = g @ W through the activation's
              backward (ATen's threshold_backward, tanh_backward, sigmoid_backward)

The gradients land in the buffer :class:`dlcli.accel.FlatParameters` made, and the optimizer
steps as after autograd. ``tests/test_dense_step.py`` checks the losses and weights against
autograd's step by step.

:func:`plan` decides: with ``auto`` (the default) the explicit step runs the models and
settings it covers and autograd the rest; ``explicit`` does the same and ``dlcli train`` says
why where it cannot (:func:`why_not`); ``autograd`` never takes it. Not covered (autograd
runs): any other layer (dropout, batch norm, convolutions...), mixed precision, torch.compile,
data parallelism, class weights, the mse loss, frozen parameters and modules with hooks.
``metrics.json`` records which one ran (``backward``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlcli.config import TrainingConfig
from dlcli.model import global_hooks, has_hooks


def plan(
    model: nn.Module, training: TrainingConfig, *, distributed: bool, precision: str
) -> DenseStep | None:
    """The explicit step for ``model`` (its parameters in dlcli.accel.FlatParameters), or
    None where :func:`kind` says autograd."""
    if kind(model, training, distributed=distributed, precision=precision)[0] == "autograd":
        return None
    layers, _ = _dense_stack(model)
    if not all(p.grad is not None for linear, _ in layers for p in linear.parameters()):
        return None  # no gradient buffers to write into
    return DenseStep(layers, training.label_smoothing)


def kind(
    model: nn.Module, training: TrainingConfig, *, distributed: bool, precision: str
) -> tuple[str, str]:
    """The step ``training.backward`` gives ``model``: ``("explicit", "")``, or
    ``("autograd", why not the explicit one)`` ("" when autograd was asked for).
    ``precision``: the one the run computes in (``training.precision`` resolved for the
    device by dlcli.accel.resolve_precision: ``auto`` is fp32 or bf16 there)."""
    if training.backward == "autograd":
        return "autograd", ""
    why = why_not(model, training, distributed=distributed, precision=precision)
    return ("autograd", why) if why else ("explicit", "")


def why_not(
    model: nn.Module, training: TrainingConfig, *, distributed: bool, precision: str
) -> str:
    """Why the explicit step cannot run ``model`` under ``training`` ("" where it can)."""
    return _unsupported_setting(training, distributed, precision) or _dense_stack(model)[1]


def _unsupported_setting(training: TrainingConfig, distributed: bool, precision: str) -> str:
    if precision != "fp32":
        if training.precision != precision:  # auto, resolved to bf16 on this device
            return f"training.precision is {training.precision} ({precision} on this device)"
        return f"training.precision is {precision}"
    if training.compile:
        return "training.compile is on"
    if distributed:
        return "the run is data parallel"
    if training.loss != "softmax_cross_entropy_with_logits":
        return f"training.loss is {training.loss}"
    if training.class_weights is not None:
        return "training.class_weights is set"
    return ""


def _leaves(module: nn.Module) -> list[nn.Module]:
    """The modules a plain (nested) ``nn.Sequential`` runs, in order."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def _dense_stack(model: nn.Module) -> tuple[list[tuple[nn.Linear, Activation | None]], str]:
    """``[(linear, its activation or None), ...]`` if the model is Flatten, then Linear
    layers each followed by an optional ReLU, Tanh or Sigmoid; else ``([], why not)``."""
    leaves = [m for m in _leaves(model) if not isinstance(m, nn.Identity)]
    if not leaves or not isinstance(leaves[0], nn.Flatten):
        return [], "the model does not start with flatten"
    if (leaves[0].start_dim, leaves[0].end_dim) != (1, -1):
        return [], "the model's flatten is not over all but the batch dimension"
    if global_hooks():
        return [], "a global module hook is registered"
    layers: list[tuple[nn.Linear, Activation | None]] = []
    for leaf in leaves[1:]:
        if has_hooks(leaf):
            return [], f"a {type(leaf).__name__} layer has hooks"
        activation = ACTIVATIONS.get(type(leaf))
        if type(leaf) is nn.Linear:
            if not all(p.requires_grad for p in leaf.parameters()):
                return [], "a dense layer is frozen"
            layers.append((leaf, None))
        elif activation is not None and layers and layers[-1][1] is None:
            layers[-1] = (layers[-1][0], activation)
        else:
            return [], f"the explicit step has no {type(leaf).__name__} layer"
    if not layers:
        return [], "the model has no dense layer"
    return layers, ""


@dataclass(frozen=True)
class Activation:
    """An activation the explicit step knows: applied in place to a layer's output, and its
    backward from that output (the ATen kernel autograd runs, or the same formula in public
    tensor operations where this torch has no such kernel)."""

    forward_: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _aten_or(name: str, fallback: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Any:
    """``torch.ops.aten.<name>`` (a core ATen operator: what autograd calls) if this torch has
    it, else ``fallback``, the same formula."""
    return getattr(torch.ops.aten, name) if hasattr(torch.ops.aten, name) else fallback


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad`` where the output is positive, else 0: the output's sign is the mask (~10x
    faster than ``masked_fill_`` with a boolean mask on the benchmark CPU)."""
    return grad.mul_(output.sign())


def _tanh_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return grad.mul_(1 - output * output)


def _sigmoid_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return grad.mul_(output * (1 - output))


def _relu_backward_aten(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """ATen's ``threshold_backward`` at 0: one pass, the kernel autograd runs for ReLU."""
    result: torch.Tensor = torch.ops.aten.threshold_backward(grad, output, 0)
    return result


ACTIVATIONS: dict[type[nn.Module], Activation] = {
    nn.ReLU: Activation(
        torch.relu_,
        _relu_backward_aten if hasattr(torch.ops.aten, "threshold_backward") else _relu_backward,
    ),
    nn.Tanh: Activation(torch.tanh_, _aten_or("tanh_backward", _tanh_backward)),
    nn.Sigmoid: Activation(torch.sigmoid_, _aten_or("sigmoid_backward", _sigmoid_backward)),
}


@dataclass(frozen=True)
class _Dense:
    """One dense layer: its weight and bias, where their gradients go (the views into the
    flat buffer, taken once: ``weight_grad_t`` is the weight's gradient seen input-major,
    ``(in, out)``, contiguous as dlcli.accel.FlatParameters stores it), and its activation."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_grad_t: torch.Tensor
    bias_grad: torch.Tensor | None
    activation: Activation | None

    @classmethod
    def of(cls, linear: nn.Linear, activation: Activation | None) -> _Dense:
        weight, bias = linear.weight, linear.bias
        assert weight.grad is not None and (bias is None or bias.grad is not None)
        bias_grad = None if bias is None else bias.grad
        return cls(weight, bias, weight.grad.t(), bias_grad, activation)


_Buffers = tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]


class DenseStep:
    """Forward, loss and backward of a dense stack (see the module docstring): call it with
    the float batch (N×C×H×W) and its targets (class indices, or class probabilities N×classes)
    after which the layers' gradient buffers hold the batch's gradient; returns the logits and
    the batch's mean loss (detached; the logits live in a buffer the next call overwrites).

    Every layer's output and input gradient go into buffers kept per batch size (an epoch has
    at most two), so a step allocates no large tensor: the same memory every step, warm in the
    caches, as in benchmarks/floor.py's matmuls.
    """

    def __init__(
        self, layers: list[tuple[nn.Linear, Activation | None]], label_smoothing: float
    ) -> None:
        self.layers = [_Dense.of(linear, activation) for linear, activation in layers]
        self.label_smoothing = label_smoothing
        self._buffers: dict[int, _Buffers] = {}

    def buffers(self, x: torch.Tensor) -> _Buffers:
        """(each layer's output, each layer's input gradient but the first's, a column of
        -1s) for a batch like ``x``."""
        n = len(x)
        if n not in self._buffers:
            if len(self._buffers) >= 2:  # an epoch's full and last batch; never more kept
                self._buffers.clear()
            outputs = [x.new_empty(n, layer.weight.shape[0]) for layer in self.layers]
            grads = [x.new_empty(n, layer.weight.shape[1]) for layer in self.layers[1:]]
            self._buffers[n] = (outputs, grads, x.new_full((n, 1), -1.0))
        return self._buffers[n]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, input_grads, minus_one = self.buffers(x)
        # Forward: every layer's input and output are kept (acts[i] in, acts[i + 1] out), for
        # the weight gradients and the activations' backward (which reads the output, as
        # autograd's does for ReLU, tanh and sigmoid).
        acts = [x.flatten(1)]
        for layer, out in zip(self.layers, outputs, strict=True):
            if layer.bias is None:
                torch.mm(acts[-1], layer.weight.t(), out=out)
            else:
                torch.addmm(layer.bias, acts[-1], layer.weight.t(), out=out)
            acts.append(out if layer.activation is None else layer.activation.forward_(out))
        logits = acts[-1]
        # Loss, and its gradient with respect to the logits: (softmax - targets) / batch,
        # the targets smoothed as cross_entropy smooths them.
        smoothing, n = self.label_smoothing, len(targets)
        if smoothing or targets.is_floating_point():
            loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
            g = torch.softmax(logits, dim=1)
            if smoothing:
                g.sub_(smoothing / logits.shape[1])
            if targets.is_floating_point():
                g.sub_(targets.to(g.dtype), alpha=1 - smoothing)
            else:
                g.scatter_add_(1, targets[:, None], minus_one.mul(1 - smoothing))
        else:  # cross_entropy is nll_loss of log_softmax: computed once, then exp'd in place
            g = torch.log_softmax(logits, dim=1)
            loss = F.nll_loss(g, targets)
            g.exp_().scatter_add_(1, targets[:, None], minus_one)
        g.mul_(1 / n)
        # Backward, last layer first: through its ReLU, then its weight and bias gradients
        # straight into their buffers, then the gradient of its input (not for the first).
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if layer.activation is not None:
                g = layer.activation.backward(g, acts[i + 1])
            torch.mm(acts[i].t(), g, out=layer.weight_grad_t)
            if layer.bias_grad is not None:
                torch.sum(g, dim=0, out=layer.bias_grad)
            if i:
                g = torch.mm(g, layer.weight, out=input_grads[i - 1])
        return logits, loss
