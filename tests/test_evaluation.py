"""Evaluation is a function of a model and a split (dlcli/evaluation.py): it needs no Trainer
and no optimizer, scores what a hand computation does, and the commands that only run a model
(evaluate, predict, export, plot, config validate) never build either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import REPO_ROOT, learnable_patterns, write_tiny_config
from torch import nn

from dlcli import evaluation
from dlcli.cli import cli
from dlcli.data.dataset import Split
from dlcli.evaluation import Objective, Scorer


def split(n: int = 50) -> Split:
    import numpy as np

    images, labels = learnable_patterns(n, np.random.default_rng(3))
    return Split(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long())


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))


def test_evaluate_is_the_hand_computed_loss_and_metrics() -> None:
    data, net = split(), model()
    objective = Objective(4, metrics=("accuracy", "top_k_accuracy"), top_k=2)
    logs = evaluation.evaluate(net, data, objective, batch_size=7)  # uneven batches
    logits = net(data.images.float() / 255).detach()
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(logits, data.labels)), rel=1e-6)
    accuracy = (logits.argmax(1) == data.labels).float().mean()
    top2 = (logits.topk(2, 1).indices == data.labels[:, None]).any(1).float().mean()
    assert logs["accuracy"] == pytest.approx(float(accuracy))
    assert logs["top_k_accuracy"] == pytest.approx(float(top2))


def test_mse_and_label_smoothing_losses() -> None:
    data, net = split(), model()
    logits = net(data.images.float() / 255).detach()
    mse = evaluation.evaluate(net, data, Objective(4, loss="mse"))["loss"]
    target = F.one_hot(data.labels, 4).float()
    assert mse == pytest.approx(float(F.mse_loss(logits, target)), rel=1e-6)
    smooth = evaluation.evaluate(net, data, Objective(4, label_smoothing=0.1))["loss"]
    expected = F.cross_entropy(logits, data.labels, label_smoothing=0.1)
    assert smooth == pytest.approx(float(expected), rel=1e-6)


def test_class_weighted_loss_is_torchs_and_zero_for_a_batch_of_weight_0_classes() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 1, 2, 3, 0, 1])
    weight = torch.tensor([0.0, 2.0, 1.0, 0.5])
    objective = Objective(4, label_smoothing=0.1)
    expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=0.1)
    loss = objective.loss_of(logits, labels, weight).detach()
    assert float(loss) == pytest.approx(float(expected.detach()))
    # Only class 0, which weighs 0: torch's weighted mean is 0/0 = NaN (training stopped as
    # if the loss had diverged); it is a loss of 0, with zero gradients.
    only_zero = labels.new_zeros(3)
    assert F.cross_entropy(logits[:3], only_zero, weight=weight).isnan()
    loss = objective.loss_of(logits[:3], only_zero, weight)
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_a_run_whose_batch_holds_only_weight_0_classes_trains(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    args = ["train", str(config), "--quiet", "--set", "training.class_weights=[0, 1, 1, 1]"]
    args += ["--set", "training.batch_size=1", "--set", "training.epochs=1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output  # was exit 3: "the loss became nan"


def test_outputs_are_batched_float_logits_on_the_cpu() -> None:
    data, net = split(), model()
    logits = evaluation.outputs(net, data.images, batch_size=8)
    assert logits.dtype == torch.float32 and logits.shape == (50, 4)
    torch.testing.assert_close(logits, net(data.images.float() / 255).detach())
    assert evaluation.outputs(net, data.images[:0]).shape == (0, 4)


def test_a_scorer_lays_out_convolutional_models_channels_last() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 4))
    scorer = Scorer.of(cnn, channels_last=None)
    assert scorer.channels_last.on
    assert cnn[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert evaluation.evaluate(scorer, split(), Objective(4))["loss"] > 0


def test_fp16_off_cuda_scores_in_fp32() -> None:
    """A model trained in fp16 on a GPU evaluates on a CPU."""
    scorer = Scorer.of(model(), device=torch.device("cpu"), precision="fp16")
    assert scorer.precision.dtype is None and scorer.precision.scaler is None


@pytest.fixture
def no_trainer_no_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a Trainer or any torch optimizer fails the test."""
    from dlcli import engine

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Trainer or an optimizer was built")

    monkeypatch.setattr(engine.Trainer, "__init__", refuse)
    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse)


def run(*args: str | Path) -> Any:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.usefixtures("no_trainer_no_optimizer")
def test_commands_that_run_a_model_build_no_trainer_and_no_optimizer(
    tiny_run: Path, tmp_path: Path
) -> None:
    run("evaluate", tiny_run, "--per-class", "--json")
    images = tiny_run.parent.parent / "test-images-idx3-ubyte.gz"
    run("predict", tiny_run, images, "--json")
    run("config", "validate", REPO_ROOT / "configs" / "fashion-mnist-cnn.yaml", "--no-data")
    pytest.importorskip("onnxruntime")
    run("export", tiny_run, "--out", tmp_path / "model.onnx", "--json")
    pytest.importorskip("matplotlib")
    run("plot", tiny_run, "--out", tmp_path / "plots", "--json")
