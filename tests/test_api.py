"""The Python API (dlcli/api.py): dlcli.train, dlcli.load, Model.evaluate and Model.predict,
used directly as a notebook or a script would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from image_trees import write_resized_config

import dlcli
from dlcli.config import load_config
from dlcli.data.idx import read_idx, write_idx
from dlcli.errors import ConfigError, DataError, UsageError


def test_import_dlcli_does_not_import_torch() -> None:
    code = "import sys, dlcli; assert callable(dlcli.__getattr__); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_load_evaluate_predict(tiny_config: Path, tmp_path: Path) -> None:
    output = tmp_path / "runs" / "x #1"  # a value, never read as YAML: '#' is no comment
    run = dlcli.train(tiny_config, overrides={"training.epochs": 2}, output=output)
    assert run.run_dir == output and (output / "manifest.json").exists()
    assert run.metrics["epochs"] == 2 and len(run.history) == 2
    model = dlcli.load(output)
    assert isinstance(model, dlcli.Model)
    assert model.config.training.epochs == 2
    test = model.evaluate("test")
    assert test["accuracy"] == run.metrics["test"]["accuracy"]
    assert test["loss"] == pytest.approx(run.metrics["test"]["loss"], rel=1e-6)
    validation = model.evaluate("validation")
    assert validation["accuracy"] == run.metrics["validation"]["accuracy"]
    # predict: an array, and the archive it came from, agree with evaluate's argmax
    archive = tiny_config.parent / "test-images-idx3-ubyte.gz"
    images = read_idx(archive)
    from_array = model.predict(images)
    from_file = model.predict(archive, top_k=2)
    assert len(from_array) == len(images) == len(from_file)
    assert from_array.classes == from_file.classes
    labels = torch.from_numpy(read_idx(tiny_config.parent / "test-labels-idx1-ubyte.gz"))
    accuracy = float((torch.tensor(from_array.classes) == labels).float().mean())
    assert accuracy == pytest.approx(test["accuracy"])
    assert all(0 < p <= 1 for p in from_array.probabilities)
    assert from_file.to_dict()["predictions"][0]["top_k"][1]["class"] != from_file.classes[0]
    floats = model.predict(torch.from_numpy(images.astype(np.float32) / 255))
    assert floats.classes == from_array.classes
    assert model.class_names == ["0", "1", "2", "3"]


def test_a_model_evaluates_own_images_at_its_input_size(tmp_path: Path) -> None:
    """Model.evaluate read a run's class-folder images at their own size (8×8) for a model
    trained on them resized to 4×4: a RuntimeError from torch, where `dlcli evaluate` scored
    the run."""
    run = dlcli.train(write_resized_config(tmp_path))
    validation = dlcli.load(run.run_dir).evaluate("validation")
    assert validation["accuracy"] == run.metrics["validation"]["accuracy"]
    assert validation["loss"] == pytest.approx(run.metrics["validation"]["loss"], rel=1e-6)


def test_a_model_refuses_data_changed_since_training_as_evaluate_does(
    tiny_config: Path, tmp_path: Path
) -> None:
    """Model.evaluate scored a data file changed since training without a word, where
    `dlcli evaluate` refuses it (exit 3) unless --accept-changed-data."""
    run = dlcli.train(tiny_config, output=tmp_path / "run")
    labels = tiny_config.parent / "test-labels-idx1-ubyte.gz"
    write_idx(str(labels), (read_idx(labels) + 1) % 4)  # relabelled since
    model = dlcli.load(run.run_dir)
    with pytest.raises(DataError, match=r"test-labels-idx1-ubyte\.gz: changed since the model"):
        model.evaluate("test")
    changed = model.evaluate("test", accept_changed_data=True)
    assert changed["accuracy"] < run.metrics["test"]["accuracy"]


def test_train_takes_a_config_object_and_resumes(tiny_config: Path, tmp_path: Path) -> None:
    config = load_config(tiny_config)
    first = dlcli.train(config, {"training.epochs": 1}, output=tmp_path / "run")
    assert first.metrics["epochs"] == 1
    more = dlcli.train(config, {"training.epochs": 2}, output=tmp_path / "run", resume=True)
    resumed = more.metrics["resumed_from"]
    assert more.metrics["epochs"] == 2 and resumed["epochs_completed"] == 1
    assert resumed["epoch"] == 2 and resumed["step_in_epoch"] == 0  # continued at epoch 2


def test_errors_are_dlcli_errors(tiny_config: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        dlcli.train(tiny_config, {"training.epochs": "three"}, output=tmp_path / "bad")
    run = dlcli.train(tiny_config, {"training.epochs": 1}, output=tmp_path / "ok")
    with pytest.raises(UsageError, match="split: expected one of train, validation, test"):
        dlcli.load(run.run_dir).evaluate("tests")


def test_batch_size_and_top_k_below_1_are_usage_errors(tiny_run: Path) -> None:
    """The command line's --batch-size and --top-k take 1 or more; from Python, batch_size=0
    crashed (ValueError, RuntimeError), a negative one scored no batch and reported loss and
    accuracy 0.0, and top_k=0 or -1 crashed in torch or in to_dict()."""
    model = dlcli.load(tiny_run, device="cpu")
    images = np.zeros((3, 8, 8), np.uint8)
    for size in (0, -1, 2.5, True, 2**64):
        with pytest.raises(UsageError, match=r"batch_size: expected a whole number from 1 to"):
            model.evaluate("validation", batch_size=size)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match=r"batch_size: expected a whole number from 1 to"):
            model.predict(images, batch_size=size)  # type: ignore[arg-type]
    for k in (0, -1):
        with pytest.raises(UsageError, match=r"top_k: expected a whole number of at least 1"):
            model.predict(images, top_k=k)
    assert model.evaluate("validation", batch_size=1) == pytest.approx(model.evaluate("validation"))


def test_a_split_given_from_python_is_checked(tiny_run: Path) -> None:
    """Model.evaluate(Split): images of another layout (N×H×W×C) were scored as if they fitted,
    float images as pixel values, an empty split reported loss 0.0, and out-of-range or int32
    labels crashed in torch: each is a DataError naming what was expected."""
    from dlcli.data.dataset import Split
    from dlcli.errors import DataError

    model = dlcli.load(tiny_run, device="cpu")
    labels = torch.tensor([0, 1, 2, 3, 0])
    good = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    assert set(model.evaluate(Split(good, labels))) == {"loss", "accuracy"}
    cases = [
        (Split(good.reshape(5, 8, 8, 1), labels), r"expected uint8 images of shape \(N, 1, 8, 8\)"),
        (Split(good.float() / 255, labels), r"found float32 \(5, 1, 8, 8\)"),
        (Split(good[:0], labels[:0]), "an empty split has no metrics"),
        (
            Split(good, labels + 1),
            r"labels must be 0 to 3 \(the model has 4 classes\), found 1 to 4",
        ),
        (Split(good, labels - 1), "found -1 to 2"),
        (Split(good, labels.int()), r"expected int64 labels of shape \(N,\), found int32"),
    ]
    for split, message in cases:
        with pytest.raises(DataError, match=message):
            model.evaluate(split)


def test_predict_reads_files_as_dlcli_predict_does(tiny_config: Path, tmp_path: Path) -> None:
    """Model.predict(files) converts images with the run's data.resize and data.background,
    and takes folders, as ``dlcli predict`` does: it stretched every image whatever the run
    was trained with (another probability than the command line's for the same file), and
    refused a folder ("is a directory")."""
    from PIL import Image

    from dlcli.predict import predict as predict_files

    run = dlcli.train(
        tiny_config,
        {"training.epochs": 1, "data.resize": "pad", "data.background": 255},
        output=tmp_path / "run",
    )
    folder = tmp_path / "pics"
    folder.mkdir()
    tall = np.zeros((16, 8), np.uint8)
    tall[2:6] = 250
    Image.fromarray(tall).save(folder / "tall.png")  # padded and stretched differ
    model = dlcli.load(run.run_dir, device="cpu")
    expected = predict_files(run.run_dir, [folder / "tall.png"], device="cpu").to_dict()
    assert model.predict(folder / "tall.png").to_dict()["predictions"] == expected["predictions"]
    from_folder = model.predict(folder).to_dict()["predictions"]
    assert [p["probability"] for p in from_folder] == [expected["predictions"][0]["probability"]]


def test_an_override_key_is_a_key_path_as_set_takes_it(tiny_config: Path, tmp_path: Path) -> None:
    """overrides={"training..epochs": 1} trained with training.epochs=1 (the malformed path
    --set refuses was read past), and a key that is no string crashed (AttributeError): both
    are config errors, with a file or a Config, and nothing is trained."""
    config = load_config(tiny_config)
    for source in (tiny_config, config):
        for key in ("training..epochs", "training.epochs[", "", 3):
            with pytest.raises(ConfigError, match="overrides: malformed key path"):
                dlcli.train(source, {key: 1}, output=tmp_path / "run")  # type: ignore[dict-item]
    assert not (tmp_path / "run").exists()


def test_errors_name_the_parameters_given_not_the_command_line_options(
    tiny_config: Path, tiny_run: Path, tmp_path: Path
) -> None:
    """From Python, messages named options the caller never gave ("--device: ...", "--set
    model.layers[9].units: ...", "pass --overwrite", "--top-k 5: ..."): they name the
    parameter; the command line keeps naming its options (tests/cli, tests/test_device.py)."""
    with pytest.raises(ConfigError) as bad_device:
        dlcli.load(tiny_run, device="tpu")
    assert bad_device.value.message.startswith("device: expected auto, cpu, cuda")
    with pytest.raises(ConfigError) as bad_key:
        dlcli.train(tiny_config, {"model.layers[9].units": 3}, output=tmp_path / "run")
    assert "overrides model.layers[9].units: no item [9]" in str(bad_key.value)
    with pytest.raises(UsageError) as taken:
        dlcli.train(tiny_config, output=tiny_run)
    assert "pass overwrite=True to replace the run in it, resume=True to continue it" in (
        taken.value.message
    )
    with pytest.raises(UsageError) as too_many:
        dlcli.load(tiny_run, device="cpu").predict(np.zeros((1, 8, 8), np.uint8), top_k=5)
    assert too_many.value.message.startswith("top_k 5: the model has 4 classes")
    for err in (bad_device, bad_key, taken, too_many):
        assert "--" not in str(err.value)


def test_evaluate_refuses_data_changed_since_training(tiny_config: Path, tmp_path: Path) -> None:
    """dlcli evaluate refuses a data file that changed since training (exit 3); from Python
    the run's dataset was read without the check (nor the run's recorded classes and input
    shape), and scored: the same rule now, with accept_changed_data=True to score it anyway."""
    from dlcli.data.idx import write_idx
    from dlcli.errors import DataError

    run = dlcli.train(tiny_config, {"training.epochs": 1}, output=tmp_path / "run")
    archive = tiny_config.parent / "test-images-idx3-ubyte.gz"
    write_idx(str(archive), 255 - read_idx(archive))  # the same shape, other pixels
    model = dlcli.load(run.run_dir, device="cpu")
    with pytest.raises(DataError) as changed:
        model.evaluate("test")
    assert f"{archive}: changed since the model was trained" in changed.value.message
    assert "pass accept_changed_data=True to use it anyway" in changed.value.message
    assert model.evaluate("test", accept_changed_data=True)["loss"] != run.metrics["test"]["loss"]
