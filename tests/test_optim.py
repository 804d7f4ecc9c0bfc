"""The optimizers are torch's own, through their public API: Adam/AdamW with ``fused=True``
where this torch has the kernel, else torch's default implementation (the fallback, run here
too), the same update either way."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.optim.optimizer as torch_optimizer

from dlcli import optim
from dlcli.config import OptimizerConfig, parse_config
from dlcli.errors import TrainingError


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


def run(optimizer: torch.optim.Optimizer, param: torch.Tensor, steps: int = 20) -> None:
    for i, grad in enumerate(gradients(param.numel(), steps)):
        if i == steps // 2:  # a scheduler's change of the learning rate
            for group in optimizer.param_groups:
                group["lr"] = 0.003
        param.grad = grad.clone()
        optimizer.step()


def start() -> torch.Tensor:
    return torch.randn(1000, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "torch_class"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_is_torchs_fused_adam(name: str, torch_class: type, weight_decay: float) -> None:
    assert optim.FUSED  # torch >= 2.4 on the CPU (pyproject.toml)
    ours_param, theirs_param = start(), start()
    ours = optim.make_optimizer([ours_param], optimizer_config(name, weight_decay))
    assert type(ours) is torch_class and optim.is_fused(ours)
    theirs = torch_class([theirs_param], lr=0.01, weight_decay=weight_decay, fused=True)
    run(ours, ours_param)
    run(theirs, theirs_param)
    assert torch.equal(ours_param, theirs_param)
    assert not torch.equal(ours_param, start())


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_without_the_fused_kernel_adam_falls_back_to_the_default(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused_param, plain_param = start(), start()
    fused = optim.make_optimizer([fused_param], optimizer_config(name, 0.1))
    monkeypatch.setattr(optim, "FUSED", False)  # a torch whose Adam has no `fused`
    plain = optim.make_optimizer([plain_param], optimizer_config(name, 0.1))
    assert not optim.is_fused(plain)
    run(fused, fused_param)
    run(plain, plain_param)
    # The same update, computed in other kernels: equal up to float rounding.
    torch.testing.assert_close(plain_param, fused_param, rtol=1e-5, atol=1e-6)
    assert plain.state_dict()["state"][0].keys() == fused.state_dict()["state"][0].keys()


def test_a_device_without_the_fused_kernel_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    adam = torch.optim.Adam

    def no_fused_kernel(*args: Any, fused: bool | None = None, **kwargs: Any) -> Any:
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be ... supported devices")
        return adam(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused_kernel)
    optimizer = optim.make_optimizer([start()], optimizer_config("adam", 0.0))
    assert isinstance(optimizer, adam) and not optim.is_fused(optimizer)


def test_training_through_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole fit through the fallback optimizer ends where the fused one does."""
    from dlcli.data.dataset import Split
    from dlcli.engine import Trainer

    cfg = parse_config(
        {
            "data": {"dataset": "fashion-mnist"},
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 4}]},
            "training": {"epochs": 2, "batch_size": 8},
        }
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=generator)
    data = Split(images, torch.arange(40) % 4)

    def fit() -> Trainer:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        trainer = Trainer(model, cfg.training, num_classes=4, device=torch.device("cpu"))
        trainer.fit(data)
        return trainer

    fused = fit()
    monkeypatch.setattr(optim, "FUSED", False)
    plain = fit()
    assert optim.is_fused(fused.optimizer) and not optim.is_fused(plain.optimizer)
    for a, b in zip(fused.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_other_optimizers_are_torchs() -> None:
    param = torch.ones(3)
    sgd = optim.make_optimizer([param], optimizer_config("sgd", 0.0))
    assert type(sgd) is torch.optim.SGD
    param.grad = torch.ones(3)
    sgd.step()
    assert torch.allclose(param, torch.full((3,), 0.99))


# --- the direct kernel call: the same bits as optimizer.step() ---------------------------------


def run_stepper(name: str, weight_decay: float, *, steps: int = 20) -> tuple[Any, torch.Tensor]:
    """(optimizer, parameter) after ``steps`` updates through ``optim.stepper``, the learning
    rate changed halfway as a scheduler would."""
    param = start()
    optimizer = optim.make_optimizer([param], optimizer_config(name, weight_decay))
    step = optim.stepper(optimizer)
    for i, grad in enumerate(gradients(param.numel(), steps)):
        if i == steps // 2:
            optimizer.param_groups[0]["lr"] = 0.003
        param.grad = grad.clone()
        step()
    return optimizer, param


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_the_direct_adam_step_is_optimizer_step_bit_for_bit(name: str, weight_decay: float) -> None:
    reference_param = start()
    reference = optim.make_optimizer([reference_param], optimizer_config(name, weight_decay))
    run(reference, reference_param)
    assert isinstance(optim.stepper(reference), optim.DirectAdam)
    ours, param = run_stepper(name, weight_decay)
    assert torch.equal(param, reference_param)
    for key, value in reference.state_dict()["state"][0].items():
        assert torch.equal(ours.state_dict()["state"][0][key], value), key
    assert ours.state_dict()["param_groups"] == reference.state_dict()["param_groups"]


def test_the_direct_step_runs_hooks_through_optimizer_step() -> None:
    param = start()
    optimizer = optim.make_optimizer([param], optimizer_config("adam", 0.0))
    step = optim.stepper(optimizer)
    seen: list[str] = []
    param.grad = torch.ones_like(param)
    step()  # the first step creates the state through optimizer.step()
    handle = optimizer.register_step_post_hook(lambda *_: seen.append("own"))
    step()
    handle.remove()
    handle = torch_optimizer.register_optimizer_step_pre_hook(lambda *_: seen.append("all"))
    try:
        step()
    finally:
        handle.remove()
    step()
    assert seen == ["own", "all"]
    assert int(optimizer.state[param]["step"]) == 4


def test_without_the_private_kernel_the_stepper_is_optimizer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(optim, "_KERNELS", {False: None, True: None})
    reference_param = start()
    reference = optim.make_optimizer([reference_param], optimizer_config("adam", 0.0))
    run(reference, reference_param)
    ours, param = run_stepper("adam", 0.0)
    step = optim.stepper(ours)
    assert not isinstance(step, optim.DirectAdam)
    assert torch.equal(param, reference_param)


def test_what_the_direct_step_does_not_cover() -> None:
    two = torch.optim.Adam([start(), start()], fused=True)  # two tensors: not dlcli's flat buffer
    amsgrad = torch.optim.Adam([start()], amsgrad=True, fused=True)
    unfused = torch.optim.Adam([start()])
    sgd = torch.optim.SGD([start()], lr=0.1)
    for optimizer in (two, amsgrad, unfused, sgd):
        assert not isinstance(optim.stepper(optimizer), optim.DirectAdam), optimizer


def test_a_tensor_learning_rate_takes_optimizer_step() -> None:
    param, reference_param = start(), start()
    optimizer = torch.optim.Adam([param], lr=torch.tensor(0.01), fused=True)
    reference = torch.optim.Adam([reference_param], lr=torch.tensor(0.01), fused=True)
    step = optim.stepper(optimizer)
    for grad in gradients(param.numel(), 5):
        param.grad, reference_param.grad = grad.clone(), grad.clone()
        step()
        reference.step()
    assert torch.equal(param, reference_param)


def test_the_direct_step_follows_a_loaded_state() -> None:
    """load_state_dict replaces the optimizer's group dicts: a scheduler then changes the new
    ones, and the direct step must read those (a resumed run's learning rate)."""
    param, reference_param = start(), start()
    optimizer = optim.make_optimizer([param], optimizer_config("adam", 0.0))
    reference = optim.make_optimizer([reference_param], optimizer_config("adam", 0.0))
    step = optim.stepper(optimizer)
    for grad in gradients(param.numel(), 3):
        param.grad, reference_param.grad = grad.clone(), grad.clone()
        step()
        reference.step()
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # not shared tensors
    for i, grad in enumerate(gradients(param.numel(), 6)):
        for group in (*optimizer.param_groups, *reference.param_groups):
            group["lr"] = 0.01 / (i + 2)
        param.grad, reference_param.grad = grad.clone(), grad.clone()
        step()
        reference.step()
    assert torch.equal(param, reference_param)


def test_moments_of_another_shape_are_an_error_not_a_crash() -> None:
    """torch's fused kernel does not check the moments' shape (optimizer.step() with such a
    state crashes the process): the direct call refuses them first."""
    param = start()
    optimizer = optim.make_optimizer([param], optimizer_config("adam", 0.0))
    step = optim.stepper(optimizer)
    param.grad = torch.ones_like(param)
    step()
    step()
    optimizer.state[param]["exp_avg"] = torch.zeros(10)
    with pytest.raises(TrainingError, match=r"state does not fit the parameters.*\(1000,\)"):
        step()
