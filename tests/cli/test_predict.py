"""dlcli predict: IDX, .npy and image inputs, --top-k, --json, --csv, errors, and the real
t10k archive against `evaluate --split test`."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import REPO_DATA, learnable_patterns

from dlcli.cli import cli
from dlcli.data.idx import read_idx, write_idx

NAMES = ["row0", "row2", "row4", "row6"]  # tiny_run's class names
T10K_IMAGES = REPO_DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
T10K_LABELS = REPO_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def predict_json(*args: str | Path) -> dict[str, Any]:
    result = run("predict", *args, "--json")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def classes(doc: dict[str, Any]) -> list[int]:
    return [p["class"] for p in doc["predictions"]]


@pytest.fixture
def patterns(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """20 fresh 8×8 pattern images, their labels, and the same images as an IDX archive."""
    images, labels = learnable_patterns(20, np.random.default_rng(42))
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, images)
    return images, labels, path


# --- IDX and .npy ----------------------------------------------------------------------------


def test_idx_archive_predictions(tiny_run: Path, patterns: Any) -> None:
    _, labels, path = patterns
    doc = predict_json(tiny_run, path)
    assert doc["count"] == 20 and doc["class_names"] == NAMES
    assert classes(doc) == labels.tolist()  # the patterns are easy
    first = doc["predictions"][0]
    assert first["input"] == str(path) and first["item"] == 0
    assert first["class_name"] == NAMES[first["class"]]
    assert 0.25 < first["probability"] <= 1
    assert first["top_k"] == [
        {
            "class": first["class"],
            "class_name": first["class_name"],
            "probability": first["probability"],
        }
    ]
    assert [p["item"] for p in doc["predictions"]] == list(range(20))


def test_npy_layouts_and_dtypes_give_the_same_predictions(
    tiny_run: Path, patterns: Any, tmp_path: Path
) -> None:
    images, _, path = patterns
    reference = predict_json(tiny_run, path)["predictions"]
    layouts = {
        "nhw.npy": images,
        "nhwc.npy": images[..., None],
        "nchw.npy": images[:, None],
        "int64.npy": images.astype(np.int64),
        "float.npy": images.astype(np.float32) / 255,
        "float64.npy": images.astype(np.float64) / 255,
    }
    for name, array in layouts.items():
        np.save(tmp_path / name, array)
        got = predict_json(tiny_run, tmp_path / name)["predictions"]
        assert [p["class"] for p in got] == [p["class"] for p in reference], name
        for a, b in zip(got, reference, strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=2e-6), name
    np.save(tmp_path / "one.npy", images[3])  # H×W: a single image
    (single,) = predict_json(tiny_run, tmp_path / "one.npy")["predictions"]
    assert single["class"] == reference[3]["class"] and single["item"] == 0


def test_several_inputs_are_predicted_in_order(
    tiny_run: Path, patterns: Any, tmp_path: Path
) -> None:
    images, labels, path = patterns
    np.save(tmp_path / "a.npy", images[:5])
    doc = predict_json(tiny_run, tmp_path / "a.npy", path, "--batch-size", "3")
    assert doc["count"] == 25
    assert classes(doc) == [*labels[:5].tolist(), *labels.tolist()]
    assert [p["input"] for p in doc["predictions"][4:6]] == [str(tmp_path / "a.npy"), str(path)]


def test_top_k_ranks_the_classes(tiny_run: Path, patterns: Any) -> None:
    _, _, path = patterns
    doc = predict_json(tiny_run, path, "--top-k", "3")
    for p in doc["predictions"]:
        probabilities = [t["probability"] for t in p["top_k"]]
        assert len(p["top_k"]) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert p["top_k"][0]["class"] == p["class"]
        assert len({t["class"] for t in p["top_k"]}) == 3 and sum(probabilities) <= 1 + 1e-5
    doc = predict_json(tiny_run, path, "--top-k", "4")  # every class
    assert {len(p["top_k"]) for p in doc["predictions"]} == {4}
    assert sum(t["probability"] for t in doc["predictions"][0]["top_k"]) == pytest.approx(1, 1e-5)


def test_top_k_above_the_class_count_is_an_error(tiny_run: Path, patterns: Any) -> None:
    _, _, path = patterns
    result = run("predict", tiny_run, path, "--top-k", "5")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Error: --top-k 5: the model has 4 classes; expected at most 4" in result.stderr


# --- images ---------------------------------------------------------------------------------


def test_png_and_jpeg_images_are_converted_and_resized(
    tiny_run: Path, patterns: Any, tmp_path: Path
) -> None:
    from PIL import Image

    images, labels, _ = patterns
    files = []
    for i in range(4):
        gray = Image.fromarray(images[i])
        files.append(tmp_path / f"gray{i}.png")
        gray.save(files[-1])
        # A 32×32 RGB copy: converted to grayscale and resized back to 8×8.
        big = gray.resize((32, 32), Image.Resampling.NEAREST).convert("RGB")
        files.append(tmp_path / f"big{i}.png")
        big.save(files[-1])
        files.append(tmp_path / f"photo{i}.jpg")
        big.save(files[-1], quality=95)
    doc = predict_json(tiny_run, *files)
    expected = [int(labels[i]) for i in range(4) for _ in range(3)]
    assert classes(doc) == expected
    assert {p["item"] for p in doc["predictions"]} == {0}
    assert doc["predictions"][0]["input"] == str(files[0])


def test_a_recursive_pattern_lists_each_file_once_and_skips_link_loops(
    tiny_run: Path, patterns: Any, tmp_path: Path
) -> None:
    """``dir/**/*.png`` once followed ``ln -s .. dir/sub/loop``: 4 images, 164 predictions."""
    from PIL import Image

    images, labels, _ = patterns
    files = [tmp_path / "dir" / rel for rel in ("a.png", "b.png", "sub/c.png", "sub/d.png")]
    for i, file in enumerate(files):
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(file)
    (tmp_path / "dir" / "sub" / "loop").symlink_to("..")
    (tmp_path / "dir" / "same.png").symlink_to("a.png")  # one file, two names
    (tmp_path / "dir" / ".hidden.png").symlink_to("b.png")
    doc = predict_json(tiny_run, tmp_path / "dir" / "**" / "*.png")
    assert [p["input"] for p in doc["predictions"]] == list(map(str, files))
    assert classes(doc) == labels[:4].tolist()


def test_a_file_named_png_that_is_not_an_image(tiny_run: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    result = run("predict", tiny_run, fake)
    assert result.exit_code == 3
    assert f"Error: {fake}: not an image Pillow can read (PNG, JPEG, ...)" in result.stderr


def test_images_without_pillow_name_the_extra(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now raises ImportError
    result = run("predict", tiny_run, image, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["message"] == (
        f"{image}: reading images needs Pillow, the images extra: pip install 'dlcli[images]'"
    )


# --- output formats -------------------------------------------------------------------------


def test_csv_output(tiny_run: Path, patterns: Any) -> None:
    _, labels, path = patterns
    result = run("predict", tiny_run, path, "--csv", "--top-k", "2")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "input",
        "item",
        "class",
        "class_name",
        "probability",
        "class_2",
        "class_name_2",
        "probability_2",
    ]
    assert len(rows) == 21
    assert [int(r[2]) for r in rows[1:]] == labels.tolist()
    assert rows[1][0] == str(path) and rows[1][3] == NAMES[int(rows[1][2])]
    assert float(rows[1][4]) >= float(rows[1][7])
    assert "20 inputs predicted" in result.stderr


def test_csv_and_json_together_are_refused(tiny_run: Path, patterns: Any) -> None:
    result = run("predict", tiny_run, patterns[2], "--csv", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["message"] == (
        "--csv and --json both print the predictions: give one of them"
    )


def test_human_table(tiny_run: Path, patterns: Any, tmp_path: Path) -> None:
    images, labels, path = patterns
    result = run("predict", tiny_run, path, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert f"Predictions for {path}" in result.stdout
    assert NAMES[labels[0]] in result.stdout and "#2" in result.stdout
    assert "more:" not in result.stdout
    many = tmp_path / "many.npy"
    np.save(many, np.concatenate([images] * 3))
    result = run("predict", tiny_run, many, path)
    assert "... and 30 more: --csv or --json lists every prediction" in result.stdout
    assert "input" in result.stdout  # two files: an input column


def test_the_table_names_each_file_of_a_folder_or_pattern(
    tiny_run: Path, patterns: Any, tmp_path: Path
) -> None:
    # One INPUT naming many files was shown as "Predictions for DIR" with every row "item 0"
    # and no file name: no way to tell which image got which class.
    from PIL import Image

    images, _, _ = patterns
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"photo{i}.png")
    for given in (folder, folder / "*.png"):
        result = run("predict", tiny_run, given)
        assert result.exit_code == 0, result.output
        assert f"Predictions for {given}" not in result.stdout
        for i in range(3):
            assert f"photo{i}.png" in result.stdout, result.stdout
    single = run("predict", tiny_run, folder / "photo1.png")
    assert f"Predictions for {folder / 'photo1.png'}" in single.stdout


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.zeros((3, 7, 8), np.uint8),
            "an array of shape (3, 7, 8) does not fit the model's input 8×8×1 "
            "(height×width×channels); expected one of (N, 8, 8), (8, 8), (N, 8, 8, 1), "
            "(N, 1, 8, 8), (8, 8, 1)",
        ),
        (
            np.full((2, 8, 8), 2.0, np.float32),
            "a float array must hold values in [0, 1] (pixel / 255), found values from 2 to 2; "
            "divide by 255, or save it as uint8",
        ),
        (
            np.full((2, 8, 8), 256, np.int32),
            "an integer array must hold pixel values 0-255, found values from 256 to 256",
        ),
        (
            np.zeros((2, 8, 8), np.bool_),
            "expected pixel values as uint8 (0-255) or floats (0-1), found dtype bool",
        ),
    ],
)
def test_bad_arrays_exit_3(tiny_run: Path, tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    result = run("predict", tiny_run, path)
    assert result.exit_code == 3
    assert f"Error: {path}: {message}" in result.stderr


def test_unreadable_inputs_exit_3(tiny_run: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run("predict", tiny_run, text)
    assert result.exit_code == 3
    assert f"{text}: not a recognised input: expected an IDX archive" in result.stderr
    assert "found first bytes 68 65 6c 6c" in result.stderr
    result = run("predict", tiny_run, tmp_path / "missing.gz")
    assert result.exit_code == 3
    assert "missing.gz: input file not found" in result.stderr
    labels = tmp_path / "labels-idx1-ubyte.gz"
    write_idx(labels, np.arange(5, dtype=np.uint8))
    result = run("predict", tiny_run, labels)
    assert result.exit_code == 3 and "an array of shape (5,) does not fit" in result.stderr


def test_model_dir_is_verified(tiny_run: Path, tmp_path: Path, patterns: Any) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "model.safetensors").write_bytes(b"truncated")
    result = run("predict", copy, patterns[2])
    assert result.exit_code == 3
    assert "model.safetensors: altered or truncated" in result.stderr
    result = run("predict", tiny_run)
    assert result.exit_code == 2 and "Missing argument 'INPUT...'" in result.stderr


# --- the real Fashion-MNIST test set --------------------------------------------------------


def test_t10k_predictions_match_evaluate_exactly(fashion_run: Path) -> None:
    doc = predict_json(fashion_run, T10K_IMAGES)
    assert doc["count"] == 10_000
    assert doc["class_names"][:2] == ["T-shirt/top", "Trouser"]
    assert doc["class_names"][9] == "Ankle boot"
    labels = read_idx(T10K_LABELS)
    accuracy = float(np.mean(np.array(classes(doc)) == labels))
    evaluated = run("evaluate", fashion_run, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert accuracy == json.loads(evaluated.stdout)["metrics"]["test"]["accuracy"]
    assert accuracy > 0.6
    boots = [p for p, label in zip(doc["predictions"], labels, strict=True) if label == 9]
    assert {"Ankle boot"} == {p["class_name"] for p in boots if p["class"] == 9}


# --- reading inputs for other model shapes (no model needed) -------------------------------


def test_images_for_rgb_and_other_channel_counts(tmp_path: Path) -> None:
    from PIL import Image

    from dlcli.errors import DataError
    from dlcli.predict import read_inputs

    path = tmp_path / "gray.png"
    Image.fromarray(np.full((10, 6), 200, np.uint8)).save(path)
    rgb = read_inputs([path], (3, 4, 5)).images
    assert rgb.shape == (1, 3, 4, 5) and rgb.dtype.is_floating_point is False
    assert int(rgb.min()) == int(rgb.max()) == 200  # gray spread over R, G and B
    with pytest.raises(DataError, match="the model takes 2-channel input"):
        read_inputs([path], (2, 4, 5))


def test_array_layouts_for_an_rgb_model(tmp_path: Path) -> None:
    from dlcli.errors import DataError
    from dlcli.predict import read_inputs

    hwc = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    np.save(tmp_path / "nhwc.npy", hwc)
    np.save(tmp_path / "nchw.npy", hwc.transpose(0, 3, 1, 2))
    np.save(tmp_path / "hwc.npy", hwc[0])
    a = read_inputs([tmp_path / "nhwc.npy"], (3, 4, 5)).images
    b = read_inputs([tmp_path / "nchw.npy"], (3, 4, 5)).images
    assert a.shape == (2, 3, 4, 5) and bool((a == b).all())
    assert bool((read_inputs([tmp_path / "hwc.npy"], (3, 4, 5)).images[0] == a[0]).all())
    np.save(tmp_path / "nhw.npy", hwc[..., 0])  # no channel axis: only for 1-channel models
    with pytest.raises(DataError, match=r"expected one of \(N, 4, 5, 3\), \(N, 3, 4, 5\)"):
        read_inputs([tmp_path / "nhw.npy"], (3, 4, 5))


def test_an_empty_array_predicts_nothing(tiny_run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.uint8))
    doc = predict_json(tiny_run, tmp_path / "empty.npy")
    assert doc["count"] == 0 and doc["predictions"] == []


def test_device_option(tiny_run: Path, patterns: Any) -> None:
    import torch

    _, labels, path = patterns
    assert classes(predict_json(tiny_run, path, "--device", "cpu")) == labels.tolist()
    if not torch.cuda.is_available():
        result = run("predict", tiny_run, path, "--device", "cuda")
        assert result.exit_code == 2 and "CUDA is not available" in result.stderr


def test_float_tiff_images_predict_like_float_arrays(
    tiny_run: Path, patterns: Any, tmp_path: Path
) -> None:
    """A float32 (mode F) TIFF holds pixel / 255, as a float .npy does: it was clipped to
    black, so every float image got the all-zero image's probabilities."""
    from PIL import Image

    images, _, _ = patterns
    floats = images[:4].astype(np.float32) / 255
    np.save(tmp_path / "floats.npy", floats)
    tiffs = []
    for i in range(4):
        tiffs.append(tmp_path / f"f{i}.tif")
        Image.fromarray(floats[i], mode="F").save(tiffs[-1])
    from_arrays = predict_json(tiny_run, tmp_path / "floats.npy", "--top-k", "4")["predictions"]
    from_tiffs = predict_json(tiny_run, *tiffs, "--top-k", "4")["predictions"]
    for array, tiff in zip(from_arrays, from_tiffs, strict=True):
        assert [c["class"] for c in array["top_k"]] == [c["class"] for c in tiff["top_k"]]
        assert [c["probability"] for c in array["top_k"]] == pytest.approx(
            [c["probability"] for c in tiff["top_k"]], abs=1e-4
        )
    Image.fromarray(floats[0] * 2 + 0.1, mode="F").save(tmp_path / "bright.tif")
    result = run("predict", tiny_run, tmp_path / "bright.tif")
    assert result.exit_code == 3
    assert "bright.tif: a float image must hold values in [0, 1] (pixel / 255)" in result.stderr


def test_a_batch_size_beyond_64_bits_is_a_usage_error(tiny_run: Path, patterns: Any) -> None:
    """predict --batch-size 10**23 overflowed in torch's split: "internal error: ValueError:
    Overflow when unpacking long long" (exit 1). It is refused as every out-of-range option
    is (exit 2); evaluate and plot share the option."""
    huge = str(10**23)
    _, _, path = patterns
    for args in (["predict", tiny_run, path], ["evaluate", tiny_run]):
        result = run(*args, "--batch-size", huge)
        assert result.exit_code == 2, result.output
        assert f"'--batch-size': {huge} is not in the range 1<=x<=9223372036854775807" in (
            result.output
        )
