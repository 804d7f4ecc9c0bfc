"""output.tensorboard: true, read back with TensorBoard's own event reader."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_tiny_config

from dlcli.cli import cli

# An optional extra (dlcli[tensorboard], in the dev extra): skipped where it is not installed.
accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def train(config: Path, *extra: str) -> dict[str, Any]:
    result = run(
        "train", str(config), "--json", "--quiet", "--set", "output.tensorboard=true", *extra
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def read_events(log_dir: Path) -> Any:
    events = accumulator.EventAccumulator(str(log_dir))
    events.Reload()
    return events


def hparams_of(events: Any) -> dict[str, Any]:
    content = events.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = data.session_start_info.hparams
    return {key: getattr(v, v.WhichOneof("kind")) for key, v in values.items()}


def test_scalars_and_hparams_read_back(tmp_path: Path) -> None:
    doc = train(write_tiny_config(tmp_path))
    run_dir = Path(doc["run_dir"])
    events = read_events(run_dir / "tensorboard")
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    keys = [k for k in history[0] if k != "epoch"]
    assert set(events.Tags()["scalars"]) == set(keys)  # every history key, nothing else
    for key in keys:
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([float(r[key]) for r in history])
    hparams = hparams_of(events)
    assert hparams["training.optimizer.learning_rate"] == pytest.approx(0.01)
    assert hparams["training.batch_size"] == 20
    assert hparams["training.optimizer.name"] == "adam"
    assert hparams["model.layers"] == "flatten > dense(16, relu) > dense(4)"
    assert "output.dir" not in hparams
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = [m.name.tag for m in experiment.experiment.metric_infos]
    assert metrics == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert "_hparams_/session_end_info" in content  # the run finished
    # the event files are kept next to the saved model; the manifest still verifies
    assert run("evaluate", str(run_dir), "--quiet").exit_code == 0


def test_overwrite_starts_a_fresh_log(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    doc = train(config)
    train(config, "--overwrite", "--set", "training.epochs=2")
    events = read_events(Path(doc["run_dir"]) / "tensorboard")
    assert [s.step for s in events.Scalars("loss")] == [1, 2]  # not 1, 2, 3, 1, 2


def test_resume_continues_the_log(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    doc = train(config, "--set", "training.epochs=2")
    train(config, "--resume", doc["run_dir"], "--set", "training.epochs=4")
    events = read_events(Path(doc["run_dir"]) / "tensorboard")
    assert [s.step for s in events.Scalars("val_loss")] == [1, 2, 3, 4]
    history = list(csv.DictReader((Path(doc["run_dir"]) / "history.csv").open()))
    values = [s.value for s in events.Scalars("val_loss")]
    assert values == pytest.approx([float(row["val_loss"]) for row in history])


def test_off_by_default(tmp_path: Path) -> None:
    result = run("train", str(write_tiny_config(tmp_path)), "--quiet", "--set", "training.epochs=1")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs" / "tiny" / "tensorboard").exists()


def test_missing_tensorboard_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = write_tiny_config(tmp_path)
    result = run("train", str(config), "--quiet", "--set", "output.tensorboard=true")
    assert result.exit_code == 2
    assert "output.tensorboard: true needs the tensorboard package" in result.stderr
    assert "pip install 'dlcli[tensorboard]'" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "model.safetensors").exists()
