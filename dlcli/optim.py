"""The optimizers, built from ``training.optimizer`` over the one flat parameter tensor that
:class:`~dlcli.accel.FlatParameters` makes: torch's own classes, used through their public API
(``step()``, ``state_dict()``), so learning-rate schedulers, grad scaling and optimizer hooks
work as documented.

Adam and AdamW take ``fused=True`` where this torch has the fused kernel for the parameters'
device (CPU since torch 2.4, CUDA, ...): the whole update is then one kernel over the one flat
tensor. Where it does not, they fall back to torch's default implementation (the same update,
computed in several kernels).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from dlcli.config import OptimizerConfig

# Whether this torch's Adam takes ``fused`` at all (a public keyword since torch 2.0).
FUSED = "fused" in inspect.signature(torch.optim.Adam).parameters


def make_optimizer(
    params: Sequence[torch.Tensor], optimizer: OptimizerConfig
) -> torch.optim.Optimizer:
    """Build the optimizer ``training.optimizer`` names (Adam/AdamW fused where available)."""
    lr = optimizer.learning_rate
    if optimizer.name in ("adam", "adamw"):
        adam = torch.optim.Adam if optimizer.name == "adam" else torch.optim.AdamW
        betas = (optimizer.beta1, optimizer.beta2)
        eps, decay = optimizer.epsilon, optimizer.weight_decay
        if FUSED:
            try:
                return adam(params, lr=lr, betas=betas, eps=eps, weight_decay=decay, fused=True)
            except RuntimeError:  # a device (or dtype) without the fused kernel
                pass
        return adam(params, lr=lr, betas=betas, eps=eps, weight_decay=decay)
    if optimizer.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=optimizer.momentum,
            nesterov=optimizer.nesterov,
            weight_decay=optimizer.weight_decay,
        )
    return torch.optim.RMSprop(
        params,
        lr=lr,
        momentum=optimizer.momentum,
        eps=optimizer.epsilon,
        weight_decay=optimizer.weight_decay,
    )


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer runs torch's fused kernel."""
    return bool(optimizer.defaults.get("fused"))
