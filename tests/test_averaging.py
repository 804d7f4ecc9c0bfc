"""training.ema against a hand computation, flip TTA, and class weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlcli.averaging import WeightAverage, flip_averaged, tta_forward
from dlcli.config import EmaConfig
from dlcli.engine import class_weights
from dlcli.errors import ConfigError


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))
        self.register_buffer("steps", torch.tensor(0))


def test_ema_matches_a_hand_computation_with_warmup() -> None:
    model = Scalar()
    ema = WeightAverage(model, EmaConfig(decay=0.5, warmup=2))
    values = [3.0, 5.0, 9.0, 1.0]
    average = 1.0  # the initial weight
    for t, value in enumerate(values, start=1):
        with torch.no_grad():
            model.w.fill_(value)
            model.steps.fill_(t)
        ema.update()
        decay = 0.5 * min(1.0, (t - 1) / 2)  # 0, 0.25, 0.5, 0.5
        average = decay * average + (1 - decay) * value
        assert ema.average[0].item() == pytest.approx(average)
        assert ema.average[1].item() == t  # integer buffers are copied
    # 3 → 0.25*3 + 0.75*5 = 4.5 → 0.5*4.5 + 0.5*9 = 6.75 → 0.5*6.75 + 0.5*1 = 3.875
    assert average == pytest.approx(3.875)


def test_ema_without_warmup_starts_from_the_initial_weights() -> None:
    model = Scalar()
    ema = WeightAverage(model, EmaConfig(decay=0.9))
    with torch.no_grad():
        model.w.fill_(11.0)
    ema.update()
    assert ema.average[0].item() == pytest.approx(0.9 * 1.0 + 0.1 * 11.0)


def test_swapped_in_scores_the_average_then_restores_the_live_weights() -> None:
    model = Scalar()
    ema = WeightAverage(model, EmaConfig(decay=0.5))
    with torch.no_grad():
        model.w.fill_(3.0)
    ema.update()  # average 2.0
    with ema.swapped_in():
        assert model.w.item() == pytest.approx(2.0)
    assert model.w.item() == 3.0
    ema.copy_to_model()
    assert model.w.item() == pytest.approx(2.0)


def test_ema_state_round_trip_and_refusal_of_another_model() -> None:
    model = Scalar()
    ema = WeightAverage(model, EmaConfig(decay=0.5))
    with torch.no_grad():
        model.w.fill_(5.0)
    ema.update()
    other = WeightAverage(Scalar(), EmaConfig(decay=0.5))
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.average[0].item() == pytest.approx(3.0)
    wrong = WeightAverage(nn.Linear(2, 2), EmaConfig())
    with pytest.raises(ValueError, match="does not fit"):
        wrong.load_state_dict(ema.state_dict())


def test_flip_tta_averages_the_mirrored_logits() -> None:
    x = torch.rand(3, 1, 4, 4)
    weights = torch.rand(16, 2)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1) @ weights

    want = (forward(x) + forward(x.flip(3))) / 2
    assert torch.allclose(flip_averaged(forward, x), want)
    assert tta_forward(forward, "none") is forward
    assert torch.allclose(tta_forward(forward, "flip")(x), want)
    flat = torch.rand(3, 16)
    assert torch.equal(flip_averaged(forward, flat), forward(flat))  # no image: nothing to flip


def test_balanced_class_weights() -> None:
    labels = torch.tensor([0, 0, 0, 1])  # 3 of class 0, 1 of class 1, none of class 2
    weights = class_weights("balanced", labels, 3)
    assert weights is not None
    assert weights.tolist() == pytest.approx([4 / (3 * 3), 4 / (3 * 1), 0.0])
    assert class_weights(None, labels, 3) is None
    listed = class_weights([1.0, 2.0, 0.5], labels, 3)
    assert listed is not None and listed.tolist() == [1.0, 2.0, 0.5]
    with pytest.raises(ConfigError, match="expected 3 weights"):
        class_weights([1.0, 2.0], labels, 3)
