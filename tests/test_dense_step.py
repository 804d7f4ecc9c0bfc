"""``training.backward``: the explicit step of a dense stack computes autograd's gradients
(step by step, and over whole fits with a hand-written loop), is chosen only where it covers
the model and settings, and resumes to the same bytes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from in_process import resumed_run_metrics
from torch import nn

from dlcli import dense_step
from dlcli.accel import FlatParameters
from dlcli.config import TrainingConfig, parse_config
from dlcli.data.dataset import Split
from dlcli.engine import Callback, Trainer
from dlcli.model import build_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def training(**overrides: Any) -> TrainingConfig:
    return parse_config(
        {
            "data": {"dataset": "fashion-mnist"},
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
            "training": {"batch_size": 16, "shuffle": False, **overrides},
        }
    ).training


def dense_model(
    *, bias: bool = True, last_relu: bool = False, activation: type[nn.Module] = nn.ReLU
) -> nn.Module:
    """Nested as dlcli builds it: a Sequential per layer, with Identity and a bias-free layer."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Flatten(),
        nn.Sequential(nn.Linear(64, 32), activation()),
        nn.Identity(),
        nn.Sequential(nn.Linear(32, 16, bias=bias), nn.ReLU()),
        nn.Linear(16, 4),
    ]
    if last_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.randint(
        0, 4, (n,), generator=generator
    )


def autograd_gradients(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    loss.backward()
    return logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize(
    "make",
    [
        dense_model,
        lambda: dense_model(bias=False, last_relu=True),
        lambda: dense_model(activation=nn.Tanh),
        lambda: dense_model(activation=nn.Sigmoid),
    ],
    ids=["mlp", "variant", "tanh", "sigmoid"],
)
def test_one_step_has_autograds_gradients(smoothing: float, soft: bool, make: Any) -> None:
    model = make()
    reference = copy.deepcopy(model)
    flat = FlatParameters(model)
    step = dense_step.plan(
        model, training(label_smoothing=smoothing), distributed=False, precision="fp32"
    )
    assert step is not None
    x, labels = batch()
    targets = F.softmax(torch.randn(16, 4), dim=1) if soft else labels
    flat.grads.fill_(123.0)  # stale values: every gradient is written, not added to
    logits, loss = step(x, targets)
    ref_logits, ref_loss, ref_grads = autograd_gradients(reference, x, targets, smoothing)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for (name, p), expected in zip(model.named_parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7, msg=name)
    assert not flat.grads.eq(123.0).any()


def hand_written_loop(model: nn.Module, data: Split, epochs: int, batch_size: int) -> list[float]:
    """What a user writes: default Adam, autograd; the mean training loss of each epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(data), batch_size):
            x = data.images[start : start + batch_size].float() / 255
            y = data.labels[start : start + batch_size]
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        losses.append(total / len(data))
    return losses


def tiny_split(n: int = 200) -> Split:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)
    images[torch.arange(n), 0, labels * 2, :] = 250
    return Split(images, labels)


def test_a_fit_has_the_loss_curve_and_weights_of_a_hand_written_loop() -> None:
    data = tiny_split()
    model = dense_model()
    reference = copy.deepcopy(model)
    trainer = Trainer(model, training(epochs=4), num_classes=4, device=CPU)
    assert trainer.explicit is not None
    trainer.fit(data)
    expected = hand_written_loop(reference, data, epochs=4, batch_size=16)
    ours = [row["loss"] for row in trainer.history]
    assert ours == pytest.approx(expected, rel=1e-5)
    assert expected[-1] < expected[0] * 0.9  # it learns: not two no-ops compared
    for (name, a), b in zip(
        trainer.model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_the_same_seed_gives_the_same_bytes() -> None:
    def weights() -> list[torch.Tensor]:
        trainer = Trainer(
            dense_model(), training(epochs=2, shuffle=True), num_classes=4, device=CPU
        )
        trainer.fit(tiny_split())
        return [t.clone() for t in trainer.model.state_dict().values()]

    assert all(torch.equal(a, b) for a, b in zip(weights(), weights(), strict=True))


def test_a_last_batch_of_another_size() -> None:
    trainer = Trainer(dense_model(), training(epochs=1, batch_size=64), num_classes=4, device=CPU)
    trainer.fit(tiny_split(200))  # 64, 64, 64, 8
    assert trainer.explicit is not None and set(trainer.explicit._buffers) == {64, 8}


def test_an_optimizer_zero_grad_from_a_callback_does_not_stop_the_updates() -> None:
    class ZeroGrad(Callback):
        def on_step_end(self, trainer: Trainer, step: int) -> None:
            trainer.optimizer.zero_grad()
            trainer.model.zero_grad()

    plain = Trainer(dense_model(), training(epochs=2), num_classes=4, device=CPU)
    plain.fit(tiny_split())
    zeroed = Trainer(
        dense_model(), training(epochs=2), num_classes=4, device=CPU, callbacks=[ZeroGrad()]
    )
    zeroed.fit(tiny_split())
    for a, b in zip(plain.model.parameters(), zeroed.model.parameters(), strict=True):
        assert torch.equal(a, b)


MLP = [
    {"type": "flatten"},
    {"type": "dense", "units": 16, "activation": "relu"},
    {"type": "dense", "units": 10},
]


@pytest.mark.parametrize(
    ("layers", "settings", "why"),
    [
        (MLP, {}, ""),
        (MLP, {"backward": "explicit"}, ""),
        (MLP, {"backward": "autograd"}, None),
        (MLP, {"precision": "bf16"}, "training.precision is bf16"),
        (MLP, {"compile": True}, "training.compile is on"),
        (MLP, {"class_weights": "balanced"}, "training.class_weights is set"),
        (MLP, {"loss": "mse"}, "training.loss is mse"),
        ([*MLP[:2], {"type": "dropout", "rate": 0.1}, MLP[2]], {}, "no Dropout layer"),
        ([MLP[0], {"type": "dense", "units": 16, "activation": "tanh"}, MLP[2]], {}, ""),
        ([MLP[0], {"type": "dense", "units": 16, "activation": "gelu"}, MLP[2]], {}, "no GELU"),
        (
            [{"type": "conv2d", "filters": 2, "kernel_size": 3}, *MLP],
            {},
            "does not start with flatten",
        ),
    ],
)
def test_the_plan_takes_the_explicit_step_only_where_it_covers(
    layers: list[dict[str, Any]], settings: dict[str, Any], why: str | None
) -> None:
    cfg = parse_config(
        {
            "data": {"dataset": "fashion-mnist"},
            "model": {"input_shape": [8, 8, 1], "layers": layers},
            "training": settings,
        }
    )
    model = build_model(cfg.model, num_classes=10).module
    precision = cfg.training.precision  # fp32 or bf16: itself on any device
    reason = dense_step.why_not(model, cfg.training, distributed=False, precision=precision)
    FlatParameters(model)  # the gradient buffers the step writes into, as the Trainer makes
    step = dense_step.plan(model, cfg.training, distributed=False, precision=precision)
    if why == "":
        assert step is not None and reason == ""
    else:
        assert step is None
        assert why is None or why in reason


def test_frozen_or_hooked_layers_take_autograd() -> None:
    frozen = dense_model()
    frozen[1][0].weight.requires_grad_(False)
    assert "frozen" in why_not(frozen)
    hooked = dense_model()
    hooked[4].register_forward_hook(lambda *_: None)
    assert "hooks" in why_not(hooked)
    assert "data parallel" in why_not(dense_model(), distributed=True)


def why_not(model: nn.Module, *, distributed: bool = False) -> str:
    """dense_step.why_not under the default training settings (fp32)."""
    return dense_step.why_not(model, training(), distributed=distributed, precision="fp32")


@pytest.mark.parametrize(
    ("resolved", "why"),
    [("fp32", ""), ("bf16", "training.precision is auto (bf16 on this device)")],
)
def test_auto_precision_takes_the_step_its_resolved_precision_allows(
    resolved: str, why: str
) -> None:
    auto = training(precision="auto")
    assert dense_step.why_not(dense_model(), auto, distributed=False, precision=resolved) == why


@pytest.mark.parametrize(
    ("fallback", "kernel", "forward"),
    [
        (dense_step._relu_backward, dense_step._relu_backward_aten, torch.relu),
        (dense_step._tanh_backward, torch.ops.aten.tanh_backward, torch.tanh),
        (dense_step._sigmoid_backward, torch.ops.aten.sigmoid_backward, torch.sigmoid),
    ],
)
def test_the_activation_fallbacks_are_the_aten_kernels(
    fallback: Any, kernel: Any, forward: Any
) -> None:
    grad, output = torch.randn(50, 30), forward(torch.randn(50, 30))
    expected = kernel(grad.clone(), output)
    torch.testing.assert_close(fallback(grad.clone(), output), expected, rtol=1e-6, atol=1e-7)
    x = torch.randn(50, 30, requires_grad=True)
    forward(x).backward(grad)  # autograd's own gradient, from the input's side
    torch.testing.assert_close(kernel(grad, forward(x.detach())), x.grad, rtol=1e-6, atol=1e-7)


def test_a_global_module_hook_takes_autograd() -> None:
    from torch.nn.modules.module import register_module_forward_hook

    handle = register_module_forward_hook(lambda *_: None)
    try:
        assert "global" in why_not(dense_model())
    finally:
        handle.remove()
    assert why_not(dense_model()) == ""


# --- through the pipeline: recorded, and a resumed run is the same bytes ----------------------


@pytest.mark.parametrize("stop_at", [11, 8])  # inside epoch 2; after epoch 1's last step
def test_a_resumed_run_is_the_same_bytes_and_says_which_step_ran(
    tmp_path: Path, stop_at: int
) -> None:
    settings: dict[str, Any] = {"layers": [*MLP[:2], {"type": "dense", "units": 4}]}
    settings["label_smoothing"] = 0.1
    reference, resumed = resumed_run_metrics(tmp_path, stop_at, **settings)
    assert reference["backward"] == resumed["backward"] == "explicit"


def test_with_augmentation_and_label_smoothing_it_follows_autograd() -> None:
    """Mixed batches (soft targets) and smoothed labels through the Trainer: the explicit
    step's epoch losses and weights are autograd's, to float rounding."""
    from dlcli.augment import make_augmenter

    def fit(backward: str) -> Trainer:
        cfg = parse_config(
            {
                "data": {"dataset": "fashion-mnist"},
                "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 4}]},
                "training": {
                    "epochs": 3,
                    "batch_size": 16,
                    "label_smoothing": 0.1,
                    "augment": {"flip": True, "mixup": 0.4, "cutmix": 1.0},
                    "backward": backward,
                },
            }
        ).training
        assert cfg.augment is not None
        augment = make_augmenter(cfg.augment, CPU, cfg.seed, 4)
        trainer = Trainer(dense_model(), cfg, num_classes=4, device=CPU, augment=augment)
        assert (trainer.explicit is None) == (backward == "autograd")
        trainer.fit(tiny_split())
        return trainer

    explicit, autograd = fit("auto"), fit("autograd")
    ours = [row["loss"] for row in explicit.history]
    assert ours == pytest.approx([row["loss"] for row in autograd.history], rel=1e-5)
    for a, b in zip(explicit.model.parameters(), autograd.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
