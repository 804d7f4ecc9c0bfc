"""dlcli's Adam/AdamW step (the fused kernel called directly) is torch's Adam/AdamW(fused=True)
step bit for bit, with the same state dict, and follows the learning rate a scheduler sets."""

from __future__ import annotations

import copy

import pytest
import torch

from dlcli import optim
from dlcli.config import OptimizerConfig, parse_config


def optimizer_config(name: str, weight_decay: float) -> OptimizerConfig:
    cfg = parse_config(
        {
            "data": {"dataset": "fashion-mnist"},
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
            "training": {
                "optimizer": {"name": name, "learning_rate": 0.01, "weight_decay": weight_decay}
            },
        }
    )
    return cfg.training.optimizer


def gradients(n: int, steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=generator) for _ in range(steps)]


@pytest.mark.parametrize(
    ("name", "torch_class"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_update_is_the_fused_step_bit_for_bit(
    name: str, torch_class: type, weight_decay: float
) -> None:
    start = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    ours_param, theirs_param = start.clone(), start.clone()
    ours = optim.make_optimizer([ours_param], optimizer_config(name, weight_decay))
    assert isinstance(ours, optim.FlatFused)
    theirs = torch_class([theirs_param], lr=0.01, weight_decay=weight_decay, fused=True)
    for i, grad in enumerate(gradients(1000, 20)):
        if i == 10:  # a scheduler's change of the learning rate
            for group in (*ours.param_groups, *theirs.param_groups):
                group["lr"] = 0.003
        ours_param.grad, theirs_param.grad = grad.clone(), grad.clone()
        optim.step(ours)
        theirs.step()
    assert torch.equal(ours_param, theirs_param)
    assert not torch.equal(ours_param, start)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == other["param_groups"]
    for key, value in other["state"][0].items():
        assert torch.equal(mine["state"][0][key], value), key


def test_a_state_dict_moves_between_update_and_step() -> None:
    """A checkpoint written by update() resumes under torch's step() and vice versa."""
    start = torch.randn(50, generator=torch.Generator().manual_seed(0))
    grads = gradients(50, 10)
    ours_param = start.clone()
    ours = optim.make_optimizer([ours_param], optimizer_config("adam", 0.0))
    for grad in grads[:5]:
        ours_param.grad = grad.clone()
        optim.step(ours)
    theirs_param = ours_param.clone()
    theirs = torch.optim.Adam([theirs_param], lr=0.01, fused=True)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # as read from a checkpoint
    for grad in grads[5:]:
        ours_param.grad, theirs_param.grad = grad.clone(), grad.clone()
        optim.step(ours)
        theirs.step()
    assert torch.equal(ours_param, theirs_param)


def test_other_optimizers_take_their_own_step() -> None:
    param = torch.ones(3)
    sgd = optim.make_optimizer([param], optimizer_config("sgd", 0.0))
    assert not isinstance(sgd, optim.FlatFused)
    param.grad = torch.ones(3)
    optim.step(sgd)
    assert torch.allclose(param, torch.full((3,), 0.99))
