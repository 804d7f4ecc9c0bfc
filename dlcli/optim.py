"""The optimizers: built from ``training.optimizer``, over the one flat parameter tensor that
:class:`~dlcli.accel.FlatParameters` makes.

Adam and AdamW are torch's own classes (their state dicts, learning-rate schedulers and grad
scaling work as ever) with one addition: :meth:`FlatFused.update`, the step the training loop
takes. It runs the same fused kernel as ``Adam(fused=True).step()``, with the same state,
and skips what ``step()`` does around the kernel for the general case (optimizer hooks, a
profiler record, grouping tensors by device and dtype): 40-80 µs of a ~1.3 ms step of the
seed MLP on the 2-core benchmark CPU (alone / in the loop), for one tensor it has nothing
to group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dlcli.config import OptimizerConfig


def make_optimizer(params: Sequence[torch.Tensor], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Build the optimizer; Adam/AdamW use the fused kernel (same maths, fewer passes)."""
    lr = cfg.learning_rate
    if cfg.name in ("adam", "adamw"):
        cls = FlatAdam if cfg.name == "adam" else FlatAdamW
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


def step(optimizer: torch.optim.Optimizer) -> None:
    """One update: :meth:`FlatFused.update` where the optimizer has it, else ``step()``."""
    if isinstance(optimizer, FlatFused):
        optimizer.update()
    else:
        optimizer.step()


class FlatFused(torch.optim.Optimizer):
    """Adam/AdamW's fused step, called directly (mixed into torch's classes below)."""

    _kernel: Callable[..., Any]

    @torch.no_grad()
    def update(self) -> None:
        """``step()`` without a closure, grad scaling or hooks: the training loop's update."""
        self._opt_called = True  # what torch's LR schedulers check: the optimizer has stepped
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # what Adam's first fused step creates, so state dicts match
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                type(self)._kernel(
                    [p],
                    [p.grad],
                    [state["exp_avg"]],
                    [state["exp_avg_sq"]],
                    [],
                    [state["step"]],
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                )


class FlatAdam(FlatFused, torch.optim.Adam):
    _kernel = torch._fused_adam_


class FlatAdamW(FlatFused, torch.optim.AdamW):
    _kernel = torch._fused_adamw_
