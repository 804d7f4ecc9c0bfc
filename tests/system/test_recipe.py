"""The accuracy tools end to end: a run with augmentation and EMA resumes to the same bytes,
saves the average as its model and says so; evaluation and predict never augment unless TTA
is asked; class weights and the config checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from in_process import train_in_process, write_run_config
from safetensors.torch import load_file

from dlcli import pipeline
from dlcli.cli import cli
from dlcli.config import load_config
from dlcli.engine import Callback, Trainer
from dlcli.errors import ConfigError, Interrupted
from dlcli.evaluation import score
from dlcli.predict import predict

AUGMENT = {"translate": 1, "flip": True, "erase": 0.25, "mixup": 0.4, "cutmix": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")


# 8 steps an epoch: stopped inside epoch 2, and on the last step of epoch 1 (all its steps done,
# its end not yet: validation, schedule and checkpoint still to come).
@pytest.mark.parametrize(("stop_at", "step_in_epoch"), [(11, 3), (8, 8)])
def test_resume_with_augmentation_and_ema_is_byte_identical(
    tmp_path: Path, stop_at: int, step_in_epoch: int
) -> None:
    settings = {"augment": AUGMENT, "ema": {"decay": 0.9, "warmup": 3}}
    reference = write_run_config(tmp_path / "a", **settings)
    train_in_process(reference)
    resumed = write_run_config(tmp_path / "b", **settings)
    with pytest.raises(Interrupted):
        train_in_process(resumed, stop_at=stop_at)
    state = json.loads((tmp_path / "b/runs/run/checkpoints/last/state.json").read_text())
    assert state["state"]["step_in_epoch"] == step_in_epoch
    assert {"augment", "ema"} <= set(state["state"])
    train_in_process(resumed, resume=True)
    a, b = tmp_path / "a/runs/run", tmp_path / "b/runs/run"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ma, mb = (json.loads((run / "metrics.json").read_text()) for run in (a, b))
    for key in ("train", "validation", "test", "ema"):
        assert ma[key] == mb[key]


def test_augmentation_changes_training_and_its_seed_decides(tmp_path: Path) -> None:
    runs = {}
    for name, settings in {
        "plain": {},
        "aug": {"augment": AUGMENT},
        "aug-again": {"augment": AUGMENT},
    }.items():
        config = write_run_config(tmp_path / name, **settings)
        train_in_process(config)
        runs[name] = (tmp_path / name / "runs/run/model.safetensors").read_bytes()
    assert runs["aug"] == runs["aug-again"]
    assert runs["aug"] != runs["plain"]


def test_ema_is_the_saved_model_and_the_run_says_so(tmp_path: Path) -> None:
    config = write_run_config(tmp_path, ema={"decay": 0.8})
    prepared = pipeline.prepare(load_config(config))
    seen: dict[str, Any] = {}

    class Keep(Callback):
        def on_fit_end(self, trainer: Trainer) -> None:
            assert trainer.ema is not None
            seen["average"] = [t.clone() for t in trainer.ema.average]
            seen["names"] = list(trainer.model.state_dict())

    result = pipeline.train(prepared, callbacks=[Keep()])
    assert result.metrics["ema"] == {
        "decay": 0.8,
        "warmup": 0,
        "updates": 24,
        "saved_model": "average",
    }
    saved = load_file(str(prepared.run_dir / "model.safetensors"))
    params = dict(prepared.model.module.named_parameters())
    buffers = dict(prepared.model.module.named_buffers())
    order = [*params, *buffers]  # WeightAverage's order: parameters, then buffers
    for name, average in zip(order, seen["average"], strict=True):
        assert torch.equal(saved[name], average), name
    result_cli = CliRunner().invoke(
        cli, ["train", str(config), "--overwrite", "--set", "training.epochs=1"]
    )
    assert result_cli.exit_code == 0, result_cli.output
    assert "EMA of the weights (decay 0.8: the saved model)" in result_cli.stderr
    assert "saved model: the weight average (EMA, decay 0.8, 8 updates)" in result_cli.stderr


def test_weights_best_and_last_with_ema_are_the_averages_validation_scored(
    tmp_path: Path,
) -> None:
    config = write_run_config(tmp_path, ema={"decay": 0.8}, epochs=3)
    train_in_process(config)
    run = tmp_path / "runs/run"
    history = json.loads((run / "metrics.json").read_text())
    state = json.loads((run / "checkpoints/last/state.json").read_text())["state"]
    rows = state["history"]
    last = pipeline.evaluate(run, splits=("validation",), weights="last")["validation"]
    assert last["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-6)
    best_row = min(rows, key=lambda row: row["val_loss"])
    best = pipeline.evaluate(run, splits=("validation",), weights="best")["validation"]
    assert best["loss"] == pytest.approx(best_row["val_loss"], rel=1e-6)
    saved = pipeline.evaluate(run, splits=("validation",))["validation"]
    assert saved == pytest.approx(history["validation"] | saved, rel=1e-6)


def test_trainer_evaluate_scores_the_average_while_training(tmp_path: Path) -> None:
    config = write_run_config(tmp_path, ema={"decay": 0.8}, epochs=2)
    prepared = pipeline.prepare(load_config(config))
    seen: dict[str, Any] = {}

    class Score(Callback):
        def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Any) -> None:
            assert trainer.ema is not None
            seen.setdefault("scored", []).append(trainer.evaluate(prepared.validation))
            split = prepared.validation
            with trainer.ema.swapped_in():  # the average, scored without the trainer's swap
                running = score(trainer.scorer, split.images, split.labels, trainer.objective)
                seen.setdefault("average", []).append(running.logs())
            seen.setdefault("logs", []).append(logs["val_loss"])
            live = score(trainer.scorer, split.images, split.labels, trainer.objective).logs()
            seen.setdefault("live", []).append(live)

    pipeline.train(prepared, callbacks=[Score()])
    for scored, average, logged in zip(seen["scored"], seen["average"], seen["logs"], strict=True):
        assert scored["loss"] == pytest.approx(average["loss"], rel=1e-6)
        assert scored["loss"] == pytest.approx(logged, rel=1e-6)
    assert [s["loss"] for s in seen["scored"]] != [s["loss"] for s in seen["live"]]


def test_evaluate_and_predict_never_augment_unless_tta_is_asked(tmp_path: Path) -> None:
    config = write_run_config(tmp_path, augment=AUGMENT)
    train_in_process(config)
    run = tmp_path / "runs" / "run"
    first = pipeline.evaluate(run, splits=("test",))["test"]
    second = pipeline.evaluate(run, splits=("test",))["test"]
    assert first["loss"] == second["loss"] and first["accuracy"] == second["accuracy"]
    saved = json.loads((run / "metrics.json").read_text())
    assert first["loss"] == pytest.approx(saved["test"]["loss"], rel=1e-6)
    # The plain forward of the saved model, by hand: what evaluate and predict must give.
    loaded = pipeline.load_model(run, "cpu")
    images = pipeline.open_run(run).split("test").images
    model = loaded.built.module.eval()
    with torch.no_grad():
        plain = model(images.float() / 255)
        flipped = (plain + model(images.flip(3).float() / 255)) / 2
    test_images = tmp_path / "test-images.gz"
    for tta, want in (("none", plain), ("flip", flipped)):
        result = predict(run, [test_images], tta=tta)
        got = [p.top[0][0] for p in result.predictions]
        assert got == want.argmax(dim=1).tolist()
    flip_metrics = pipeline.evaluate(run, splits=("test",), tta="flip")["test"]
    labels = pipeline.open_run(run).split("test").labels
    want_loss = torch.nn.functional.cross_entropy(flipped, labels).item()
    assert flip_metrics["loss"] == pytest.approx(want_loss, rel=1e-5)


def test_tta_in_the_config_is_the_default_of_evaluate(tmp_path: Path) -> None:
    config = write_run_config(tmp_path, tta="flip", epochs=1)
    train_in_process(config)
    run = tmp_path / "runs" / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["tta"] == "flip"
    # One validation number per epoch: the epoch's (what the summary, early stopping and the
    # best checkpoint read) is scored with the same TTA as the final one.
    last = (run / "history.csv").read_text().splitlines()
    epoch = dict(zip(last[0].split(","), last[-1].split(","), strict=True))
    assert float(epoch["val_loss"]) == pytest.approx(saved["validation"]["loss"], rel=1e-6)
    default = pipeline.evaluate(run, splits=("test",))["test"]
    assert default["loss"] == pytest.approx(saved["test"]["loss"], rel=1e-6)
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--split", "test", "--tta", "none"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--tta", "sideways"])
    assert result.exit_code == 2 and "'sideways' is not one of 'none', 'flip'" in result.output


def test_class_weights_train_and_a_wrong_length_is_a_config_error(tmp_path: Path) -> None:
    config = write_run_config(tmp_path, class_weights="balanced", epochs=1)
    train_in_process(config)
    bad = write_run_config(tmp_path / "bad", class_weights=[1.0, 2.0], epochs=1)
    result = CliRunner().invoke(cli, ["train", str(bad), "--quiet"])
    assert result.exit_code == 2
    assert "training.class_weights: expected 4 weights (one per class), found 2" in result.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("training.class_weights=[1, -1]", "expected balanced or a list of numbers >= 0"),
        ("training.class_weights=heavy", "training.class_weights: expected"),
        ("training.augment.mixup=-1", "training.augment.mixup: expected a number >= 0"),
        ("training.augment.mix_prob=2", "training.augment.mix_prob: expected a number between"),
        ("training.augment.translate=1.5", "training.augment.translate: expected an integer"),
        ("training.ema.decay=1", "training.ema.decay: expected a number between 0 and 1"),
        ("training.tta=mirror", "training.tta: expected one of none, flip"),
    ],
)
def test_config_checks(tmp_path: Path, setting: str, message: str) -> None:
    config = write_run_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(config, [setting])
    assert message in str(info.value) + " ".join(info.value.details)


def test_a_corrupt_augmentation_or_ema_state_is_refused_on_resume(tmp_path: Path) -> None:
    from dlcli import checkpoint, store

    config = write_run_config(tmp_path, augment=AUGMENT, ema={"decay": 0.9}, epochs=1)
    train_in_process(config)
    last = tmp_path / "runs/run/checkpoints/last"
    document = json.loads((last / "state.json").read_text())
    document["state"]["ema"]["updates"] = -5
    (last / "state.json").write_text(json.dumps(document))
    store.write_manifest(last, checkpoint.FILES)
    result = CliRunner().invoke(
        cli, ["train", str(config), "--resume", "--set", "training.epochs=2", "--quiet"]
    )
    assert result.exit_code == 3, result.output
    assert "corrupt checkpoint: ema/updates is -5, expected an integer" in result.output


@pytest.mark.parametrize("name", ["fashion-mnist-speedrun", "fashion-mnist-best"])
def test_the_shipped_fashion_recipes_train_end_to_end(
    tmp_path: Path, tiny_archives: Any, name: str
) -> None:
    """One epoch of each shipped recipe, model and training as shipped, on a tiny 28x28
    dataset through the CLI: every tool they name works together (their accuracy is measured
    by benchmarks/time_to_accuracy.py, not here)."""
    root = Path(__file__).resolve().parents[2]
    data = [
        "data.dataset=null",
        f"data.train_images={tiny_archives.train_images}",
        f"data.train_labels={tiny_archives.train_labels}",
        f"data.test_images={tiny_archives.test_images}",
        f"data.test_labels={tiny_archives.test_labels}",
        "data.num_classes=10",
        "data.validation_split=0.25",
        "training.epochs=1",
        "training.batch_size=8",
    ]
    args = ["train", str(root / "configs" / f"{name}.yaml"), "--output", str(tmp_path / name)]
    for item in data:
        args += ["--set", item]
    result = CliRunner().invoke(cli, [*args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["tta"] == "flip" and doc["epochs"] == 1
    assert ("ema" in doc) == (name == "fashion-mnist-best")
