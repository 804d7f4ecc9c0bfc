"""The per-step history (dlcli/steps.py): what it records, that it reads the device in one
batch (no host sync per step), its sampling of long runs and its checkpoint state."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dlcli.steps import StepRecorder


def fake_trainer(epochs: int, steps_per_epoch: int) -> Any:
    return SimpleNamespace(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        global_step=0,
        step_loss=None,
        step_lr=0.0,
    )


def run_steps(recorder: StepRecorder, trainer: Any, epochs: int, reads: list[str]) -> None:
    recorder.on_fit_begin(trainer)
    for epoch in range(1, epochs + 1):
        for step in range(1, trainer.steps_per_epoch + 1):
            trainer.global_step += 1
            trainer.step_loss = torch.tensor(float(trainer.global_step))
            trainer.step_lr = 0.1 / trainer.global_step
            recorder.on_step_end(trainer, step)
        reads.append(f"end of epoch {epoch}")
        recorder.on_epoch_end(trainer, epoch, {})


@pytest.fixture
def device_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of a tensor's value on the host (what waits for a GPU), in order."""
    reads: list[str] = []
    tolist, item = torch.Tensor.tolist, torch.Tensor.item

    def counted_tolist(self: torch.Tensor) -> Any:
        reads.append("tolist")
        return tolist(self)

    def counted_item(self: torch.Tensor) -> Any:
        reads.append("item")
        return item(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    return reads


def test_every_step_recorded_and_read_once_an_epoch(device_reads: list[str]) -> None:
    recorder, trainer = StepRecorder(), fake_trainer(epochs=2, steps_per_epoch=50)
    run_steps(recorder, trainer, 2, device_reads)
    # No read inside an epoch: one transfer at its end.
    assert device_reads == ["end of epoch 1", "tolist", "end of epoch 2", "tolist"]
    rows = recorder.rows
    assert [r[0] for r in rows] == list(range(1, 101))
    assert rows[49] == (50, 1.0, pytest.approx(0.1 / 50), 50.0)  # last step of epoch 1
    assert rows[0][1] == pytest.approx(0.02)  # epochs done: a fraction inside an epoch


def test_a_long_run_keeps_at_most_max_rows_of_step_means() -> None:
    recorder, trainer = StepRecorder(max_rows=30), fake_trainer(epochs=3, steps_per_epoch=25)
    run_steps(recorder, trainer, 3, [])
    assert recorder.every == 3  # 75 steps / 30 rows
    steps = [r[0] for r in recorder.rows]
    assert len(steps) <= 30 + 3  # plus each epoch's last step
    assert steps[:3] == [3, 6, 9] and 25 in steps and steps[-1] == 75
    first = recorder.rows[0]
    assert first[3] == pytest.approx((1 + 2 + 3) / 3)  # the mean loss of the steps it covers
    assert first[2] == pytest.approx(0.1 / 3)  # the learning rate of its last step


def test_state_round_trips_through_json_like_data() -> None:
    recorder, trainer = StepRecorder(), fake_trainer(epochs=1, steps_per_epoch=5)
    recorder.on_fit_begin(trainer)
    for step in range(1, 4):  # interrupted after step 3: the checkpoint reads what is pending
        trainer.global_step = step
        trainer.step_loss, trainer.step_lr = torch.tensor(0.5 * step), 0.01
        recorder.on_step_end(trainer, step)
    state = json.loads(json.dumps(recorder.state_dict()))
    assert isinstance(state["rows"], str)  # its form does not depend on how far the run got
    again = StepRecorder()
    again.load_state_dict(state)
    assert (
        again.rows
        == recorder.rows
        == [(1, 0.2, 0.01, 0.5), (2, 0.4, 0.01, 1.0), (3, 0.6, 0.01, 1.5)]
    )
    assert isinstance(again.rows[0][0], int)


@pytest.mark.parametrize(
    "rows", [["1,2,3,4"], "1,2,3", "1.5,0.1,0.1,0.1", "x,0.1,0.1,0.1", "0,1,1,1"]
)
def test_a_corrupt_checkpoint_state_is_refused(rows: Any) -> None:
    from dlcli.errors import ModelDirError

    with pytest.raises(ModelDirError, match="corrupt checkpoint: the per-step history"):
        StepRecorder().load_state_dict({"rows": rows})
