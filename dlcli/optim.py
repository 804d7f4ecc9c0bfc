"""The optimizers, built from ``training.optimizer`` over the one flat parameter tensor that
:class:`~dlcli.accel.FlatParameters` makes: torch's own classes, used through their public API
(``step()``, ``state_dict()``), so learning-rate schedulers, grad scaling and optimizer hooks
work as documented.

Adam and AdamW take ``fused=True`` where this torch has the fused kernel for the parameters'
device (CPU since torch 2.4, CUDA, ...): the whole update is then one kernel over the one flat
tensor. Where it does not, they fall back to torch's default implementation (the same update,
computed in several kernels).

:func:`stepper` is what the training step calls to update: ``optimizer.step()``, or for a fused
Adam/AdamW over the one tensor, :class:`DirectAdam`, the kernel that ``step()`` comes down to,
called with the same arguments (the same bits). It is the one private torch name dlcli uses,
looked up rather than imported, with ``optimizer.step()`` as the fallback wherever it is
missing or a step needs what ``step()`` does around the kernel (hooks, a tensor learning
rate, creating the state).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.optim.optimizer as torch_optimizer

from dlcli.config import OptimizerConfig
from dlcli.errors import TrainingError

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


# --- the update, without the optimizer's Python ------------------------------------------------

# torch's fused Adam kernels: private names, so looked up (and, when missing, not used) rather
# than imported. ``optimizer.step()`` of a fused Adam over one tensor adds 1 to the step count
# and calls one of them; around that it spends ~0.1 ms a step in Python (hooks, grouping the
# tensors by device, profiler records): 5-8% of the seed MLP's step on the benchmark CPU.
_KERNELS = {  # by decoupled weight decay: Adam, AdamW
    False: getattr(torch, "_fused_adam_", None),
    True: getattr(torch, "_fused_adamw_", None),
}
_HOOKS = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")


def stepper(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
    """What updates the parameters: ``optimizer.step``, or where it is a fused Adam or AdamW
    over one tensor, :class:`DirectAdam` (the same kernel with the same arguments, so the same
    bits; ``tests/test_optim.py`` checks it against ``step()``)."""
    if DirectAdam.covers(optimizer):
        return DirectAdam(optimizer)
    # Looked up at each call: a learning-rate scheduler wraps optimizer.step after this.
    return lambda: optimizer.step()


class DirectAdam:
    """``optimizer.step()`` of a fused Adam/AdamW over one parameter tensor, as the kernel call
    it comes down to. It falls back to ``optimizer.step()`` for any step it cannot take the
    same way: its first (it creates the state, and learning-rate schedulers check that
    ``optimizer.step()`` ran), a tensor learning rate, and whenever an optimizer hook is
    registered (hooks must run). Moments whose shape, dtype or device are not the parameter's
    are a :class:`TrainingError` (torch's kernel, through ``step()`` too, would read and write
    past them: dlcli.checkpoint refuses such a state before it is loaded)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.param = optimizer.param_groups[0]["params"][0]
        self.stepped = False

    @staticmethod
    def covers(optimizer: torch.optim.Optimizer) -> bool:
        groups = optimizer.param_groups
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(groups) != 1:
            return False
        group = groups[0]
        kernel = _KERNELS.get(bool(group.get("decoupled_weight_decay")))
        settings = ("amsgrad", "maximize", "capturable", "differentiable", "foreach")
        return (
            kernel is not None
            and bool(group.get("fused"))
            and len(group["params"]) == 1
            and not any(group.get(key) for key in settings)
            and all(isinstance(getattr(torch_optimizer, name, None), dict) for name in _HOOKS)
        )

    def _hooked(self) -> bool:
        optimizer = self.optimizer
        own = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")
        return any(getattr(torch_optimizer, name) for name in _HOOKS) or any(
            getattr(optimizer, name, True) for name in own
        )

    def __call__(self) -> None:
        # Looked up at every step: load_state_dict replaces the group and state dicts.
        group, param = self.optimizer.param_groups[0], self.param
        state = self.optimizer.state.get(param)
        if state and not _like(param, state.get("exp_avg"), state.get("exp_avg_sq")):
            # torch's fused kernel does not check: it would read and write past the moments.
            raise TrainingError(
                "the optimizer's state does not fit the parameters: its moments are not "
                f"tensors of shape {tuple(param.shape)}, {param.dtype}, on {param.device}"
            )
        lr = group["lr"]
        if (
            not self.stepped
            or not state
            or isinstance(lr, torch.Tensor)
            or param.grad is None
            or not _like(param, param.grad)
            or self._hooked()
        ):
            self.optimizer.step()
            self.stepped = True
            return
        kernel = _KERNELS[bool(group["decoupled_weight_decay"])]
        assert kernel is not None  # covers() checked
        step = state["step"]
        step.add_(1)
        beta1, beta2 = group["betas"]
        kernel(
            [param],
            [param.grad],
            [state["exp_avg"]],
            [state["exp_avg_sq"]],
            [],
            [step],
            amsgrad=False,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


def _like(param: torch.Tensor, *tensors: object) -> bool:
    """Whether every one of ``tensors`` is a tensor of the parameter's shape, dtype, device."""
    return all(
        isinstance(t, torch.Tensor)
        and t.shape == param.shape
        and t.dtype == param.dtype
        and t.device == param.device
        for t in tensors
    )
