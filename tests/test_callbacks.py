"""Callbacks from YAML: learning-rate schedules (the maths at known steps), early stopping,
target tracking and stop_at_target, label smoothing; and their config validation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import learnable_patterns, write_tiny_config
from safetensors.torch import load_file

from dlcli.callbacks import (
    EarlyStopping,
    LRSchedule,
    TargetTracker,
    cosine_factor,
    improved,
    make_scheduler,
)
from dlcli.cli import cli
from dlcli.config import (
    CosineSchedule,
    EarlyStoppingConfig,
    OneCycleSchedule,
    ReduceOnPlateauSchedule,
    StepSchedule,
    TargetConfig,
    load_config,
    parse_config,
)
from dlcli.engine import Trainer
from dlcli.errors import ConfigError
from dlcli.hooks import Callback

pytestmark = pytest.mark.usefixtures("one_thread")


def lrs(spec: Any, *, base: float, epochs: int, steps_per_epoch: int) -> list[float]:
    """The learning rate used by each step of a run, stepping the scheduler as the loop does."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = make_scheduler(spec, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch)
    used = []
    for _ in range(epochs * steps_per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()  # type: ignore[call-arg]
    return used


def cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


# --- one_cycle ----------------------------------------------------------------------------


def test_one_cycle_learning_rates_at_known_steps() -> None:
    spec = OneCycleSchedule(max_lr=0.1, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    used = lrs(spec, base=0.001, epochs=4, steps_per_epoch=25)  # 100 steps
    start, peak, last = 0.1 / 25, 0.1, 0.1 / 25 / 1e4
    assert used[0] == pytest.approx(start)  # max_lr / div_factor
    assert used[29] == pytest.approx(peak)  # the warm-up ends at pct_start * steps - 1
    assert used[10] == pytest.approx(cos_anneal(start, peak, 10 / 29))
    assert used[64] == pytest.approx(cos_anneal(peak, last, 0.5))  # half-way down
    assert used[99] == pytest.approx(last)  # initial / final_div_factor at the last step
    assert max(used) == pytest.approx(peak)


def test_one_cycle_linear_and_default_peak() -> None:
    spec = OneCycleSchedule(anneal="linear", pct_start=0.5, div_factor=10, final_div_factor=10)
    used = lrs(spec, base=0.2, epochs=2, steps_per_epoch=11)  # peak: optimizer's lr
    assert used[0] == pytest.approx(0.02)
    assert used[5] == pytest.approx(0.02 + (0.2 - 0.02) * 5 / 10)
    assert used[10] == pytest.approx(0.2)
    assert used[21] == pytest.approx(0.002)


class _RecordLR(Callback):
    def __init__(self) -> None:
        self.used: list[float] = []

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.used.append(trainer.optimizer.param_groups[0]["lr"])


def _fit(tmp_path: Path, callbacks: list[Callback], **training: Any) -> Trainer:
    """Fit a small MLP on the tiny dataset with the given ``training`` keys (in process)."""
    from dlcli import pipeline
    from dlcli.config import load_config

    config = write_tiny_config(tmp_path)
    sets = [f"training.{k}={json.dumps(v)}" for k, v in training.items()]
    cfg = load_config(config, sets)
    prepared = pipeline.prepare(cfg)
    trainer = Trainer(
        prepared.model.module,
        cfg.training,
        num_classes=4,
        device=torch.device("cpu"),
        callbacks=callbacks,
    )
    trainer.fit(prepared.train, prepared.validation)
    return trainer


def test_the_loop_steps_one_cycle_every_step(tmp_path: Path) -> None:
    spec = OneCycleSchedule(max_lr=0.05)
    recorder = _RecordLR()  # before the schedule: sees the rate each step used
    trainer = _fit(tmp_path, [recorder, LRSchedule(spec)], epochs=2, optimizer={"name": "sgd"})
    steps = trainer.steps_per_epoch * 2
    assert steps == 30 and len(recorder.used) == steps
    assert recorder.used == pytest.approx(lrs(spec, base=0.001, epochs=2, steps_per_epoch=15))


# --- cosine, step, reduce_on_plateau -----------------------------------------------------------


def test_cosine_with_warmup_at_known_steps() -> None:
    spec = CosineSchedule(warmup_epochs=0.4, min_lr=0.001)
    used = lrs(spec, base=0.1, epochs=4, steps_per_epoch=25)  # 100 steps, 10 of warm-up
    assert used[0] == pytest.approx(0.01)
    assert used[4] == pytest.approx(0.05)
    assert used[9] == pytest.approx(0.1)
    assert used[10] == pytest.approx(0.1)  # the cosine starts at the base rate
    assert used[10 + 89 // 2] == pytest.approx(cos_anneal(0.1, 0.001, (89 // 2) / 89))
    assert used[99] == pytest.approx(0.001)  # min_lr at the last step


def test_cosine_without_warmup_and_warmup_steps() -> None:
    assert lrs(CosineSchedule(), base=0.1, epochs=1, steps_per_epoch=11)[::5] == pytest.approx(
        [0.1, 0.05, 0.0]
    )
    assert cosine_factor(0, 100, 4, 0.0) == 0.25
    used = lrs(CosineSchedule(warmup_steps=4), base=0.1, epochs=1, steps_per_epoch=10)
    assert used[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])


def test_step_schedule_decays_every_step_size_epochs(tmp_path: Path) -> None:
    trainer = _fit(
        tmp_path,
        [LRSchedule(StepSchedule(step_size=2, gamma=0.5))],
        epochs=5,
        optimizer={"name": "sgd", "learning_rate": 0.1},
    )
    assert [row["lr"] for row in trainer.history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_reduce_on_plateau_reduces_after_patience() -> None:
    spec = ReduceOnPlateauSchedule(factor=0.5, patience=1, min_delta=0.0, min_lr=0.02)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    fake: Any = SimpleNamespace(optimizer=optimizer, epochs=9, steps_per_epoch=1)
    schedule = LRSchedule(spec)
    schedule.on_fit_begin(fake)
    seen = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.96, 0.97, 0.97, 0.97, 0.97], start=1):
        schedule.on_epoch_end(fake, epoch, {"val_loss": val_loss})
        seen.append(optimizer.param_groups[0]["lr"])
    # Epochs 3 and 4 do not improve on 0.9: halve after the second; again two later; floor.
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02])
    assert json.loads(json.dumps(schedule.state_dict()))  # plain data: a checkpoint holds it


# --- early stopping -------------------------------------------------------------------------


def _fake_trainer() -> Any:
    model = torch.nn.Linear(2, 2)

    def averaged_state_dict() -> dict[str, torch.Tensor]:  # no EMA: the live weights, copied
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    return SimpleNamespace(
        model=model,
        stop_training=False,
        interrupted=None,
        averaged_state_dict=averaged_state_dict,
    )


def test_early_stopping_patience_and_restore_best() -> None:
    trainer = _fake_trainer()
    stopper = EarlyStopping(EarlyStoppingConfig(monitor="val_loss", patience=2))
    for epoch, value in enumerate([1.0, 0.5, 0.6, 0.7], start=1):
        with torch.no_grad():
            trainer.model.weight.fill_(epoch)  # the weights "of" each epoch
        stopper.on_epoch_end(trainer, epoch, {"val_loss": value})
        assert trainer.stop_training == (epoch == 4)
    stopper.on_fit_end(trainer)
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 4
    assert torch.all(trainer.model.weight == 2)  # restored
    assert stopper.report()["restored_best"] is True


def test_early_stopping_min_delta_and_max_mode() -> None:
    trainer = _fake_trainer()
    stopper = EarlyStopping(EarlyStoppingConfig(monitor="val_accuracy", patience=1, min_delta=0.1))
    stopper.on_epoch_end(trainer, 1, {"val_accuracy": 0.5})
    stopper.on_epoch_end(trainer, 2, {"val_accuracy": 0.55})  # better, but by less than 0.1
    assert trainer.stop_training and stopper.best == 0.5


def test_improved_ignores_nan() -> None:
    assert improved(1.0, None, "min") and not improved(float("nan"), 1.0, "min")
    assert improved(2.0, 1.0, "max") and not improved(2.0, 1.0, "min")


def test_early_stopping_end_to_end(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            *("train", str(config), "--json", "--quiet"),
            *("--set", "training.epochs=10"),
            # Nothing improves by 1000 after the first epoch: stop at the second.
            *("--set", "training.early_stopping={patience: 1, min_delta: 1000}"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["epochs"] == 2
    assert doc["early_stopping"] == {
        "monitor": "val_loss",
        "best": pytest.approx(doc["early_stopping"]["best"]),
        "best_epoch": 1,
        "stopped_epoch": 2,
        "restored_best": True,
    }


def test_restored_best_weights_report_their_own_epochs_training_metrics(tmp_path: Path) -> None:
    # The saved model is epoch 1's; its validation and test rows scored it, but the train row
    # was the last epoch's (a table mixing two models).
    doc = _train_json(
        write_tiny_config(tmp_path),
        "training.epochs=10",
        "training.early_stopping={patience: 1, min_delta: 1000}",
    )
    assert doc["early_stopping"]["restored_best"] and doc["early_stopping"]["best_epoch"] == 1
    first, last = _history(doc)[0], _history(doc)[-1]
    assert doc["train"] == {"loss": float(first["loss"]), "accuracy": float(first["accuracy"])}
    assert float(last["loss"]) != float(first["loss"])
    assert doc["validation"]["loss"] == pytest.approx(float(first["val_loss"]), rel=1e-6)


@pytest.mark.parametrize(
    "stopping",
    [
        ["training.early_stopping={patience: 1, min_delta: 1000}"],
        ["training.target={metric: val_accuracy, value: 0.5}", "training.stop_at_target=true"],
    ],
    ids=["early_stopping", "stop_at_target"],
)
def test_resuming_a_run_that_stopped_early_trains_no_further(
    tmp_path: Path, stopping: list[str]
) -> None:
    # --resume of a finished run changes nothing; one that had stopped early was trained on
    # from its last checkpoint (a third epoch, "not improved for 2 epochs" with patience 1).
    doc = _train_json(write_tiny_config(tmp_path), "training.epochs=10", *stopping)
    assert doc["epochs"] < 10
    run = Path(doc["run_dir"])
    weights, history = (run / "model.safetensors").read_bytes(), _history(doc)
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    assert resumed["epochs"] == doc["epochs"]
    assert _history(resumed) == history
    assert (run / "model.safetensors").read_bytes() == weights
    for key in ("early_stopping", "target", "validation", "test"):
        assert resumed.get(key) == doc.get(key)


class ScriptedMetric(Callback):
    """Replaces an epoch's ``key`` with the next of ``values`` (before the configured
    callbacks read it; history.csv records it too)."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, values

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
        logs[self.key] = self.values[epoch - 1]


def test_one_best_epoch_under_min_delta(tmp_path: Path) -> None:
    """val_loss improves at every epoch, but by less than min_delta after the first: early
    stopping restored epoch 1, while the summary said epoch 3 (the plain minimum) and
    checkpoints/best held epoch 3 too. One rule now: epoch 1 everywhere."""
    from dlcli import api, checkpoint
    from dlcli.runs import read_run

    result = api.train(
        write_tiny_config(tmp_path),
        {
            "training.epochs": 5,
            "training.early_stopping": {"patience": 2, "min_delta": 0.01},
        },
        callbacks=[ScriptedMetric("val_loss", [1.0, 0.995, 0.99, 0.985, 0.98])],
    )
    early, saved = result.metrics["early_stopping"], result.summary()
    assert early["stopped_epoch"] == 3 and early["best_epoch"] == 1 and early["restored_best"]
    assert saved["best_epoch"] == 1 and saved["best_value"] == 1.0
    assert saved["weights"]["epoch"] == 1
    assert result.metrics["checkpoints"]["best_epoch"] == 1
    assert read_run(result.run_dir).summary()["best_epoch"] == 1  # runs list, runs compare
    best = checkpoint.load_weights(result.run_dir, checkpoint.BEST)
    model = load_file(str(result.run_dir / "model.safetensors"))
    assert all(torch.equal(best[name], model[name]) for name in model)


def test_an_early_stop_restoring_the_average_reports_its_own_updates(tmp_path: Path) -> None:
    """With training.ema, early stopping restores the best epoch's average; metrics.json and
    train's closing line gave the last epoch's update count for it (45, not 15)."""
    from dlcli import api

    result = api.train(
        write_tiny_config(tmp_path),  # 15 steps an epoch
        {
            "training.epochs": 5,
            "training.ema": {"decay": 0.9},
            "training.early_stopping": {"patience": 2},
        },
        callbacks=[ScriptedMetric("val_loss", [1.0, 1.5, 1.5, 1.5, 1.5])],
    )
    assert result.metrics["early_stopping"]["restored_best"]
    assert result.summary()["weights"]["epoch"] == 1
    assert result.metrics["ema"]["updates"] == 15


def test_an_epochs_learning_rate_is_the_one_its_last_step_used(tmp_path: Path) -> None:
    """history.csv's lr was the optimizer's after the epoch, which a per-step schedule had
    moved on to the next step's: for one_cycle's last epoch a rate past its end (5.6e-05,
    after a last step at 4e-08), never used. It is the epoch's last step's now, in steps.csv
    too; also for a run resumed with its epoch's last step taken and its end still to come."""
    from in_process import StopAt

    from dlcli import api
    from dlcli.errors import Interrupted

    schedule = {"training.epochs": 2, "training.lr_schedule": "one_cycle"}
    whole = api.train(write_tiny_config(tmp_path / "a"), schedule)  # 15 steps an epoch
    with (whole.run_dir / "steps.csv").open() as f:
        used = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f)}
    assert [row["lr"] for row in whole.history] == [used[15], used[30]]
    config = write_tiny_config(tmp_path / "b")
    with pytest.raises(Interrupted):
        api.train(config, schedule, callbacks=[StopAt(15)])  # epoch 1's steps done, not its end
    resumed = api.train(config, schedule, resume=True)
    assert [row["lr"] for row in resumed.history] == [used[15], used[30]]


@pytest.mark.parametrize("schedule", ["one_cycle", "cosine"])
def test_resuming_longer_stretches_the_schedule_and_says_so(tmp_path: Path, schedule: str) -> None:
    """``train --resume RUN --set training.epochs=4`` after 2 epochs rebuilds a per-step
    schedule for 4: the rate jumped one step after the resume, and nothing said so. Now the
    first resumed step takes the stretched schedule's rate, and train says from what to
    what (and metrics.json records it)."""
    from dlcli.callbacks import schedule_rate

    config = write_tiny_config(tmp_path)  # 300 training images, batch 20: 15 steps an epoch
    doc = _train_json(config, "training.epochs=2", f"training.lr_schedule={schedule}")
    run = Path(doc["run_dir"])
    result = CliRunner().invoke(
        cli, ["train", "--resume", str(run), "--json", "--set", "training.epochs=4"]
    )
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    spec = load_config(config, [f"training.lr_schedule={schedule}"]).training.lr_schedule
    assert spec is not None

    def rate(epochs: int, step: int) -> float:  # the schedule's rate at a 0-based step
        return schedule_rate(spec, 0.01, epochs=epochs, steps_per_epoch=15, step=step)

    before, after = rate(2, 29), rate(4, 30)  # the 2-epoch run's last step; the next one
    with (run / "steps.csv").open() as f:
        rates = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(f)}
    assert rates[30] == pytest.approx(before)  # (steps.csv's steps count from 1)
    assert rates[31] == pytest.approx(after) and after != pytest.approx(before)
    assert resumed["resumed_from"]["lr_schedule"] == {
        "name": schedule,
        "epochs_before": 2,
        "epochs": 4,
        "step": 30,
        "lr_before": pytest.approx(before),
        "lr_after": pytest.approx(after),
    }
    assert (
        f"training.lr_schedule: {schedule} was built for 2 epochs and is stretched to 4: at "
        f"step 31 the learning rate goes from {before:.4g} to {after:.4g}"
    ) in " ".join(result.stderr.split())


# --- target ------------------------------------------------------------------------------------


def test_target_tracker_records_the_first_epoch_reached() -> None:
    trainer: Any = SimpleNamespace(stop_training=False)
    tracker = TargetTracker(TargetConfig(metric="val_accuracy", value=0.9))
    for epoch, acc in enumerate([0.5, 0.8, 0.95, 0.85], start=1):
        trainer.elapsed_fit_seconds = lambda epoch=epoch: epoch + 0.5  # the clock at its end
        tracker.on_epoch_end(trainer, epoch, {"val_accuracy": acc})
    assert tracker.report() == {
        "metric": "val_accuracy",
        "value": 0.9,
        "reached": True,
        "epoch": 3,
        "seconds": 3.5,
    }
    assert not trainer.stop_training


def test_a_target_changed_on_resume_is_reported_as_this_target_reached(tmp_path: Path) -> None:
    """--resume may change training.target; the epoch recorded for the old target was kept
    and reported as the new one's (reached: true at an epoch that did not reach it)."""
    from dlcli import api

    config = write_tiny_config(tmp_path)
    accuracy = ScriptedMetric("val_accuracy", [0.6, 0.7, 0.96, 0.97, 0.98])
    target = {"metric": "val_accuracy", "value": 0.5}
    first = api.train(
        config, {"training.epochs": 2, "training.target": target}, callbacks=[accuracy]
    )
    assert first.metrics["target"]["epoch"] == 1
    again = {"training.epochs": 4, "training.target": target | {"value": 0.95}}
    resumed = api.train(config, again, resume=True, callbacks=[accuracy])
    reached = resumed.metrics["target"]
    assert (reached["value"], reached["reached"], reached["epoch"]) == (0.95, True, 3)
    assert reached["seconds"] > 0  # measured: reached after the resume
    # A target the history already reached: that epoch, its time not measured then (one more
    # epoch to train: a finished run resumed with none left stays as it was saved).
    lower = {"training.epochs": 5, "training.target": target | {"value": 0.65}}
    saved = api.train(config, lower, resume=True, callbacks=[accuracy]).metrics["target"]
    assert (saved["reached"], saved["epoch"], saved["seconds"]) == (True, 2, None)


def test_target_on_a_loss_is_reached_going_down() -> None:
    trainer: Any = SimpleNamespace(stop_training=False, elapsed_fit_seconds=lambda: 1.0)
    tracker = TargetTracker(TargetConfig(metric="val_loss", value=0.2), stop=True)
    tracker.on_epoch_end(trainer, 1, {"val_loss": 0.3})
    assert tracker.epoch is None and not trainer.stop_training
    tracker.on_epoch_end(trainer, 2, {"val_loss": 0.1})
    assert tracker.epoch == 2 and trainer.stop_training


def _train_json(config: Path, *sets: str) -> dict[str, Any]:
    args = ["train", str(config), "--json", "--quiet"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _history(doc: dict[str, Any]) -> list[dict[str, str]]:
    return list(csv.DictReader((Path(doc["run_dir"]) / "history.csv").open()))


def test_target_in_metrics_json_matches_the_history(tmp_path: Path) -> None:
    # A slow learning rate, so the target is reached after a few epochs, not at once.
    doc = _train_json(
        write_tiny_config(tmp_path),
        "training.epochs=6",
        "training.optimizer.learning_rate=0.0005",
        "training.target={metric: val_accuracy, value: 0.9}",
    )
    first = next(int(r["epoch"]) for r in _history(doc) if float(r["val_accuracy"]) >= 0.9)
    assert first > 1
    target = doc["target"]
    assert target["reached"] and target["epoch"] == first
    assert 0 < target["seconds"] <= doc["fit_seconds"]
    assert doc["epochs"] == 6  # recorded, not stopped
    saved = json.loads((Path(doc["run_dir"]) / "metrics.json").read_text())
    assert saved["target"] == target


def test_target_never_reached_is_null(tmp_path: Path) -> None:
    doc = _train_json(
        write_tiny_config(tmp_path), "training.target={metric: val_loss, value: -1.0}"
    )
    assert doc["target"]["reached"] is False
    assert doc["target"]["epoch"] is None and doc["target"]["seconds"] is None


def test_stop_at_target_ends_training_there(tmp_path: Path) -> None:
    doc = _train_json(
        write_tiny_config(tmp_path),
        "training.epochs=6",
        "training.optimizer.learning_rate=0.0005",
        "training.target={metric: val_accuracy, value: 0.9}",
        "training.stop_at_target=true",
    )
    assert doc["epochs"] == doc["target"]["epoch"] < 6
    assert len(_history(doc)) == doc["epochs"]
    assert (Path(doc["run_dir"]) / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("key", "setting"),
    [
        ("training.early_stopping.monitor", "training.early_stopping={monitor: test.accuracy}"),
        (
            "training.lr_schedule.monitor",
            "training.lr_schedule={name: reduce_on_plateau, monitor: test_loss}",
        ),
        ("training.target.metric", "training.target={metric: test_accuracy, value: 0.5}"),
        ("training.checkpoint.monitor", "training.checkpoint={monitor: test_loss}"),
    ],
)
def test_a_test_metric_watched_without_test_data_is_refused(
    tmp_path: Path, key: str, setting: str
) -> None:
    # Without data.test the metric never exists: early stopping stopped after its patience
    # ("has not improved"), reduce_on_plateau failed with an internal KeyError (exit 1).
    config = write_tiny_config(tmp_path)
    images, labels = learnable_patterns(100, np.random.default_rng(0))
    np.savez(tmp_path / "train.npz", x=images, y=labels)
    data = f"data={{train: {tmp_path / 'train.npz'}, validation_split: 0.25}}"  # no data.test
    args = ["train", str(config), "--quiet", "--set", data, "--set", "training.epochs=4"]
    result = CliRunner().invoke(cli, [*args, "--set", setting])
    assert result.exit_code == 2, result.output
    assert key in result.output and "no test data (data.test)" in result.output
    assert not (tmp_path / "runs" / "tiny").exists()


# --- label smoothing ---------------------------------------------------------------------------


def test_label_smoothing_raises_the_loss_floor(tmp_path: Path) -> None:
    plain = _train_json(write_tiny_config(tmp_path / "a"), "training.epochs=5")
    smooth = _train_json(
        write_tiny_config(tmp_path / "b"), "training.epochs=5", "training.label_smoothing=0.2"
    )
    # With 4 classes and 0.2 smoothing the target distribution has entropy ~0.59: the loss
    # cannot go below it, while the plain loss goes towards 0.
    assert smooth["train"]["loss"] > 0.55 > plain["train"]["loss"]
    assert smooth["validation"]["accuracy"] > 0.9


# --- config ------------------------------------------------------------------------------------


def base(**training: Any) -> dict[str, Any]:
    return {
        "data": {"dataset": "mnist"},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
        "training": training,
    }


def config_problems(**training: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(base(**training))
    return info.value.details


def test_new_training_keys_have_defaults() -> None:
    training = parse_config(base()).training
    assert training.checkpoint.every == 1 and training.checkpoint.keep_best
    assert training.checkpoint.monitor == "val_loss" and training.checkpoint.mode == "auto"
    assert training.lr_schedule is None and training.early_stopping is None
    assert training.target is None and training.stop_at_target is False
    assert training.label_smoothing == 0.0


def test_schedules_parse_from_a_mapping_or_a_name() -> None:
    cfg = parse_config(base(lr_schedule={"name": "one_cycle", "max_lr": 0.01}))
    assert cfg.training.lr_schedule == OneCycleSchedule(max_lr=0.01)
    assert parse_config(base(lr_schedule="cosine")).training.lr_schedule == CosineSchedule()
    step = parse_config(base(lr_schedule={"name": "step", "step_size": 3})).training
    assert step.lr_schedule == StepSchedule(step_size=3, gamma=0.1)


@pytest.mark.parametrize(
    ("training", "fragment"),
    [
        (
            {"lr_schedule": {"name": "one_cylce"}},
            "training.lr_schedule.name: unknown schedule 'one_cylce' (did you mean 'one_cycle'?)",
        ),
        ({"lr_schedule": 3}, "training.lr_schedule: expected a schedule name or a mapping"),
        ({"lr_schedule": {"name": "step"}}, "training.lr_schedule.step_size: required key"),
        (
            {"lr_schedule": {"name": "cosine", "max_lr": 1}},
            "training.lr_schedule.max_lr: unknown key",
        ),
        (
            {"lr_schedule": {"name": "one_cycle", "pct_start": 1.5}},
            "training.lr_schedule.pct_start: expected a number between 0 and 1",
        ),
        (
            {"lr_schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_steps": 5}},
            "give warmup_epochs or warmup_steps, not both",
        ),
        (
            # A min_lr above the learning rate made the cosine "decay" rise to it (500x).
            {"lr_schedule": {"name": "cosine", "min_lr": 5.0}},
            "training.lr_schedule.min_lr: 5 is above training.optimizer.learning_rate 0.001",
        ),
        (
            {"early_stopping": {"monitor": "val_acuracy"}},
            "training.early_stopping.monitor: 'val_acuracy' is not a reported metric "
            "(did you mean 'val_accuracy'?)",
        ),
        (
            {"checkpoint": {"monitor": "val_top_k_accuracy"}},
            "training.checkpoint.monitor: 'val_top_k_accuracy' is not a reported metric",
        ),
        ({"checkpoint": {"every": -1}}, "training.checkpoint.every: expected a number >= 0"),
        ({"early_stopping": {"patience": "3"}}, "training.early_stopping.patience: expected an"),
        ({"target": {"metric": "val_accuracy"}}, "training.target.value: required key missing"),
        ({"stop_at_target": True}, "training.stop_at_target: true needs training.target"),
        ({"label_smoothing": 1.0}, "training.label_smoothing: expected a number >= 0 and < 1"),
        (
            {"label_smoothing": 0.1, "loss": "mse"},
            "training.label_smoothing: only applies to softmax_cross_entropy_with_logits",
        ),
    ],
)
def test_bad_callback_config(training: dict[str, Any], fragment: str) -> None:
    found = config_problems(**training)
    assert any(fragment in problem for problem in found), found
