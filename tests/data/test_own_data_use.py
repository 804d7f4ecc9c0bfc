"""A model trained on your own images, used: predict on folders and globs, evaluate --data,
init --from; and the whole path through real `dlcli` subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from image_trees import CLASSES, write_learnable_tree
from PIL import Image

from dlcli.cli import cli


def run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class MLP trained on RGB PNG class folders (8×8 greyscale patterns saved as RGB,
    so the run converts them back to 1 channel), with a test folder."""
    folder = tmp_path_factory.mktemp("own-run")
    write_learnable_tree(folder / "train", 200, mode="RGB")
    write_learnable_tree(folder / "test", 40, seed=1, mode="RGB")
    config = folder / "own.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(folder / "train"), "test": str(folder / "test")},
                "model": {
                    "input_shape": [8, 8, 1],
                    "layers": [
                        {"type": "flatten"},
                        {"type": "dense", "units": 16, "activation": "relu"},
                        {"type": "dense", "units": 4},
                    ],
                },
                "training": {"epochs": 3, "batch_size": 20, "optimizer": {"learning_rate": 0.01}},
                "output": {"dir": str(folder / "run")},
            }
        )
    )
    result = run("train", config, "--quiet")
    assert result.exit_code == 0, result.output
    return folder


def test_predict_on_the_training_pngs_reproduces_evaluate(own_run: Path) -> None:
    run_dir = own_run / "run"
    result = run("predict", run_dir, own_run / "test", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 40
    truth = [Path(r["input"]).parent.name for r in rows]
    accuracy = float(np.mean([r["class_name"] == t for r, t in zip(rows, truth, strict=True)]))
    evaluated = run("evaluate", run_dir, "--split", "test", "--json")
    assert accuracy == json.loads(evaluated.stdout)["metrics"]["test"]["accuracy"]
    assert {r["class_name"] for r in rows} <= set(CLASSES)
    assert rows[0]["input"] == str(sorted((own_run / "test").rglob("*.png"))[0])


def test_predict_expands_globs_and_names_empty_ones(own_run: Path) -> None:
    pattern = own_run / "test" / "row2" / "*.png"
    result = run("predict", own_run / "run", pattern, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["count"] == len(list((own_run / "test" / "row2").glob("*.png")))
    deep = run("predict", own_run / "run", own_run / "test" / "**" / "*.png", "--json")
    assert json.loads(deep.stdout)["count"] == 40
    none = run("predict", own_run / "run", own_run / "nothing" / "*.png")
    assert none.exit_code == 3 and "no file matches the pattern" in none.stderr


def test_evaluate_data_scores_a_folder_csv_and_npz(own_run: Path, tmp_path: Path) -> None:
    run_dir = own_run / "run"
    folder = run("evaluate", run_dir, "--data", own_run / "test", "--json")
    assert folder.exit_code == 0, folder.output
    test = run("evaluate", run_dir, "--split", "test", "--json")
    scored = json.loads(folder.stdout)["metrics"]["data"]
    assert scored["accuracy"] == json.loads(test.stdout)["metrics"]["test"]["accuracy"]
    assert scored["samples"] == 40
    # A subset of the classes, as a CSV: labelled by the run's class names, not re-sorted.
    files = sorted((own_run / "test" / "row4").glob("*.png"))
    rows = "".join(f"{f},row4\n" for f in files)
    (tmp_path / "row4.csv").write_text("path,label\n" + rows)
    subset = run("evaluate", run_dir, "--data", tmp_path / "row4.csv", "--per-class", "--json")
    assert subset.exit_code == 0, subset.output
    doc = json.loads(subset.stdout)
    support = {c["name"]: c["support"] for c in doc["per_class"]["data"]["classes"]}
    assert support["row4"] == len(files) and support["row0"] == 0
    # An .npz of the same pictures as 8×8 greyscale arrays.
    pixels = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    np.savez(tmp_path / "row4.npz", x=pixels, y=np.full(len(files), 2))
    arrays = run("evaluate", run_dir, "--data", tmp_path / "row4.npz", "--json")
    assert (
        json.loads(arrays.stdout)["metrics"]["data"]["accuracy"]
        == doc["metrics"]["data"]["accuracy"]
    )
    (tmp_path / "odd" / "cats").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "odd" / "cats" / "x.png")
    unknown = run("evaluate", run_dir, "--data", tmp_path / "odd")
    assert unknown.exit_code == 3
    assert "class 'cats' is not one of the 4 classes the model was trained on" in unknown.stderr
    both = run("evaluate", run_dir, "--data", own_run / "test", "--split", "test")
    assert both.exit_code == 2 and "--split applies only to the run's own data" in both.stderr


@pytest.mark.parametrize("option", [["--data-dir", "elsewhere"], ["--accept-changed-data"]])
def test_evaluate_data_refuses_the_options_of_the_runs_own_data(
    own_run: Path, option: list[str]
) -> None:
    result = run("evaluate", own_run / "run", "--data", own_run / "test", *option)
    assert result.exit_code == 2
    assert f"{option[0]} applies only to the run's own data" in result.stderr


def test_evaluate_data_scores_the_weights_asked_for(own_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(own_run / "run", copy)
    (copy / "checkpoints" / "best" / "manifest.json").unlink()
    saved = run("evaluate", copy, "--data", own_run / "test", "--json")
    assert saved.exit_code == 0, saved.output
    assert json.loads(saved.stdout)["weights"] == "saved"
    best = run("evaluate", copy, "--data", own_run / "test", "--weights", "best")
    assert best.exit_code == 3 and "no best checkpoint" in best.stderr
    last = run("evaluate", copy, "--data", own_run / "test", "--weights", "last", "--json")
    assert last.exit_code == 0, last.output
    assert json.loads(last.stdout)["metrics"]["data"]["samples"] == 40


def test_init_from_a_colour_tree_writes_a_cnn_that_validates(tmp_path: Path) -> None:
    for cls in ("cat", "dog", "eel"):
        (tmp_path / "pets" / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (120, 90), (i * 40, 10, 200)).save(
                tmp_path / "pets" / "train" / cls / f"{i}.jpg"
            )
    config = tmp_path / "pets.yaml"
    result = run("init", config, "--from", tmp_path / "pets")
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(config.read_text())
    assert cfg["model"]["input_shape"] == [48, 64, 3]  # 90×120 shrunk to a 64 long side
    assert cfg["model"]["layers"][0]["type"] == "conv2d"
    assert cfg["model"]["layers"][-1] == {"type": "dense", "units": 3}
    assert cfg["data"]["train"] == "pets/train"  # beside the config: relative, movable
    assert "3 classes (cat, dog, eel)" in config.read_text()
    validated = run("config", "validate", config)
    assert validated.exit_code == 0, validated.output
    again = run("init", config, "--from", tmp_path / "pets")
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_init_from_writes_data_paths_that_move_with_the_config(tmp_path: Path) -> None:
    """Data inside the config's folder is written relative to it, so the pair can be moved
    (or committed and cloned elsewhere); data outside it stays absolute."""
    project = tmp_path / "project"
    for root in (project / "pics", tmp_path / "elsewhere"):
        for cls in ("cat", "dog"):
            (root / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (8, 8), i * 90).save(root / cls / f"{i}.png")
    assert run("init", project / "a.yaml", "--from", project / "pics").exit_code == 0
    assert yaml.safe_load((project / "a.yaml").read_text())["data"]["train"] == "pics"
    nested = project / "configs" / "b.yaml"
    nested.parent.mkdir()
    assert run("init", nested, "--from", tmp_path / "elsewhere").exit_code == 0
    outside = yaml.safe_load(nested.read_text())["data"]["train"]
    assert outside == str((tmp_path / "elsewhere").resolve())
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    validated = run("config", "validate", moved / "a.yaml")
    assert validated.exit_code == 0, validated.output


def test_init_from_class_folders_named_with_line_breaks(tmp_path: Path) -> None:
    # A class folder named "new\nline" ended the comment listing the classes, and the rest of
    # the name broke the YAML init writes: 'internal error: ParserError', exit 1.
    for cls in ("new\nline", "para\u2029graph", "plain"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), i * 90).save(tmp_path / "data" / cls / f"{i}.png")
    config = tmp_path / "odd.yaml"
    result = run("init", config, "--from", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "3 classes (new\\nline, para\\u2029graph, plain)" in config.read_text()
    validated = run("config", "validate", config)
    assert validated.exit_code == 0, validated.output


@pytest.mark.e2e
def test_folder_to_trained_model_through_the_real_cli(tmp_path: Path) -> None:
    """The README's "Your own data" steps as a user types them: init --from, data check,
    train, evaluate --data, predict on the folder; real processes, a real cache folder."""
    write_learnable_tree(tmp_path / "shapes" / "train", 240)
    write_learnable_tree(tmp_path / "shapes" / "test", 60, seed=1)
    env = {**os.environ, "NO_COLOR": "1", "DLCLI_CACHE_DIR": str(tmp_path / "cache")}

    def dlcli(*args: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dlcli", *map(str, args)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert dlcli("init", "shapes.yaml", "--from", "shapes").returncode == 0
    checked = dlcli("data", "check", "shapes.yaml", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["splits"]["test"]["images"] == 60
    trained = dlcli("train", "shapes.yaml", "--set", "training.epochs=4", "--json")
    assert trained.returncode == 0, trained.stderr
    doc = json.loads(trained.stdout)
    assert doc["test"]["accuracy"] > 0.9 and doc["dataset"]["class_names"] == list(CLASSES)
    assert len(list((tmp_path / "cache" / "images").glob("*.safetensors"))) == 2
    evaluated = dlcli("evaluate", "runs/shapes", "--data", "shapes/test", "--json")
    assert json.loads(evaluated.stdout)["metrics"]["data"]["accuracy"] == doc["test"]["accuracy"]
    predicted = dlcli("predict", "runs/shapes", "shapes/test", "--csv")
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    right = sum(Path(r["input"]).parent.name == r["class_name"] for r in rows)
    assert len(rows) == 60 and right / 60 == doc["test"]["accuracy"]


def test_summary_and_validate_infer_the_input_shape(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "t", 12)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(tmp_path / "t")},
                "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 4}]},
            }
        )
    )
    summary = run("summary", config, "--json")
    assert summary.exit_code == 0, summary.output
    assert json.loads(summary.stdout)["layers"][0]["output_shape_hwc"] == [64]
    validated = run("config", "validate", config, "--json")
    assert validated.exit_code == 0 and json.loads(validated.stdout)["num_classes"] == 4
