"""dlcli export --format onnx: the file runs in onnxruntime and matches dlcli's own logits,
for batch sizes other than the export's, on the real Fashion-MNIST test images."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from conftest import REPO_DATA, learnable_patterns, write_tiny_config

from dlcli.cli import cli
from dlcli.data.idx import read_idx
from dlcli.pipeline import load_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

T10K_IMAGES = REPO_DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
ATOL = 1e-4


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def export_json(model_dir: Path, *args: str | Path) -> dict[str, Any]:
    result = run("export", model_dir, "--format", "onnx", "--json", *args)
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def dlcli_logits(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """dlcli's own logits for uint8 N×C×H×W images."""
    loaded = load_model(model_dir, "cpu")
    return loaded.outputs(torch.from_numpy(images)).numpy()


def onnx_logits(path: Path, images: np.ndarray, batch: int) -> np.ndarray:
    """The ONNX file's logits, fed ``batch`` images at a time (pixel values / 255)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) / 255
    parts = [
        session.run(["logits"], {"images": x[i : i + batch]})[0] for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts)


def test_export_matches_dlcli_on_t10k_images(fashion_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fashion.onnx"
    doc = export_json(fashion_run, "--out", out)
    assert doc["path"] == str(out) and out.is_file() and doc["size"] == out.stat().st_size
    assert doc["input"] == {"name": "images", "shape": ["batch", 1, 28, 28], "dtype": "float32"}
    assert doc["output"] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32"}
    assert doc["max_abs_diff"] <= ATOL and doc["opset"] >= 17
    images = read_idx(T10K_IMAGES)[:, None]  # N×1×28×28 uint8
    expected = dlcli_logits(fashion_run, images)
    for batch in (1000, 1, 37):  # the export traced a batch of 2
        count = 1000 if batch == 1000 else 111
        got = onnx_logits(out, images[:count], batch)
        np.testing.assert_allclose(got, expected[:count], atol=ATOL, rtol=0)
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(metadata["dlcli.class_names"])[9] == "Ankle boot"
    assert metadata["dlcli.input"] == "float32 N×C×H×W, pixel values / 255"


def test_default_out_is_in_the_model_dir_which_still_verifies(
    tiny_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    result = run("export", run_dir)  # --format onnx is the default
    assert result.exit_code == 0, result.output
    assert f"wrote {run_dir / 'model.onnx'}" in result.stdout
    assert "onnxruntime matches PyTorch within" in result.stdout
    assert (run_dir / "model.onnx").stat().st_mode & 0o777 != 0o600  # not mkstemp's mode
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temp files
    assert run("evaluate", run_dir, "--quiet").exit_code == 0


def test_cnn_layers_export(tmp_path: Path) -> None:
    """Convolution with same padding, pooling, batch norm and dropout survive the export."""
    config = write_tiny_config(tmp_path)
    layers = (
        "[{type: conv2d, filters: 4, kernel_size: 3, padding: same, activation: relu},"
        " {type: batch_norm}, {type: max_pool2d, pool_size: 3, strides: 2, padding: same},"
        " {type: avg_pool2d, pool_size: 2}, {type: dropout, rate: 0.5}, {type: flatten},"
        " {type: dense, units: 4, activation: softmax}]"
    )
    result = run("train", config, "--quiet", "--set", f"model.layers={layers}")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    out = tmp_path / "cnn.onnx"
    export_json(run_dir, "--out", out)
    images, _ = learnable_patterns(9, np.random.default_rng(1))
    images = images[:, None]
    np.testing.assert_allclose(
        onnx_logits(out, images, 4), dlcli_logits(run_dir, images), atol=ATOL, rtol=0
    )


def test_missing_extra_names_the_install_command(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    result = run("export", tiny_run, "--out", tmp_path / "x.onnx", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"] == {
        "code": 2,
        "kind": "usage",
        "message": "ONNX export needs the onnx extra (missing: onnxscript): "
        "pip install 'dlcli[onnx]'",
    }
    assert not (tmp_path / "x.onnx").exists()


def test_export_never_overwrites_a_file_it_did_not_write(tiny_run: Path, tmp_path: Path) -> None:
    user_file = tmp_path / "notes.onnx"
    user_file.write_text("my notes")
    result = run("export", tiny_run, "--out", user_file)
    assert result.exit_code == 2 and "a file dlcli did not write" in result.stderr
    assert user_file.read_text() == "my notes"
    ours = tmp_path / "model.onnx"
    assert run("export", tiny_run, "--out", ours).exit_code == 0
    assert run("export", tiny_run, "--out", ours).exit_code == 0  # its own export: replaced


def test_a_device_at_out_is_named_a_device(tiny_run: Path) -> None:
    """--out /dev/null said "a file dlcli did not write is there": it is a character device
    (refused before anything is exported, as a file of the user's is)."""
    result = run("export", tiny_run, "--out", "/dev/null")
    assert result.exit_code == 2
    assert "Error: --out /dev/null: a character device dlcli did not write is there" in (
        result.stderr
    )


def test_a_large_file_in_the_way_is_refused_without_being_parsed(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deciding whether a file is dlcli's own export parsed it whole with onnx.load: 3.4 GB of
    # memory to refuse a 3 GB file it never overwrites. Only a file holding dlcli's metadata
    # key (and within protobuf's 2 GiB) is parsed now.
    parsed: list[str] = []
    real_load = onnx.load

    def load(path: str, *args: Any, **kwargs: Any) -> Any:
        parsed.append(Path(path).name)
        if Path(path).name in ("video.onnx", "data.onnx"):  # a parse, without the memory
            raise ValueError("not an ONNX file")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load", load)
    for name, size in (("video.onnx", 3 * 2**30), ("data.onnx", 2**20)):  # sparse: no disk
        big = tmp_path / name
        with open(big, "wb") as f:
            f.truncate(size)
        result = run("export", tiny_run, "--out", big)
        assert result.exit_code == 2 and "a file dlcli did not write" in result.stderr
        assert big.stat().st_size == size
    assert "video.onnx" not in parsed and "data.onnx" not in parsed
    ours = tmp_path / "model.onnx"
    assert run("export", tiny_run, "--out", ours).exit_code == 0
    assert run("export", tiny_run, "--out", ours).exit_code == 0  # its own: parsed, replaced
    assert "model.onnx" in parsed


def test_export_errors(tiny_run: Path, tmp_path: Path) -> None:
    result = run("export", tiny_run, "--out", tmp_path)
    assert result.exit_code == 2  # click: --out must be a file
    result = run("export", tmp_path / "nope", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 3 and "model directory not found" in result.stderr
    result = run("export", tiny_run, "--format", "tflite")
    assert result.exit_code == 2 and "'tflite' is not 'onnx'" in result.stderr


def test_the_default_path_is_named_without_an_option_not_given(
    tiny_run: Path, tmp_path: Path
) -> None:
    # Without --out, the errors read "--out RUN/model.onnx: ...": an option never given.
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "model.onnx").write_text("my notes")
    result = run("export", run_dir)
    assert result.exit_code == 2
    assert f"Error: {run_dir / 'model.onnx'}: a file dlcli did not write" in result.stderr
    assert "--out " + str(run_dir) not in result.stderr
    assert (run_dir / "model.onnx").read_text() == "my notes"
    (run_dir / "model-best.onnx").mkdir()
    result = run("export", run_dir, "--weights", "best")
    assert result.exit_code == 2
    assert f"Error: {run_dir / 'model-best.onnx'}: is a directory" in result.stderr
    given = tmp_path / "notes.onnx"
    given.write_text("my notes")
    result = run("export", run_dir, "--out", given)
    assert f"Error: --out {given}: a file dlcli did not write" in result.stderr


def test_an_out_under_a_file_is_a_usage_error(tiny_run: Path, tmp_path: Path) -> None:
    # It was exit 3 (an output problem) while train -o AFILE/sub is exit 2: the same mistake.
    blocker = tmp_path / "afile"
    blocker.write_text("my notes")
    result = run("export", tiny_run, "--out", blocker / "model.onnx")
    assert result.exit_code == 2, result.output
    message = f"--out {blocker / 'model.onnx'}: cannot write the ONNX file there: {blocker} is a"
    assert message in " ".join(result.stderr.split())
    assert blocker.read_text() == "my notes"


def test_a_temporary_file_a_killed_export_left_is_removed_once_an_hour_old(
    tmp_path: Path,
) -> None:
    """An export killed while it wrote left ``.NAME.xxxxxxxx.tmp`` beside its target for
    ever: the next export to that target removes it once an hour old, and keeps a fresher one
    (another export may be writing it) and any file of another name."""
    import os
    import time

    from dlcli import export

    target = tmp_path / "model.onnx"

    def made(name: str, age_s: float) -> Path:
        path = tmp_path / name
        path.write_bytes(b"half a model")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    abandoned = made(".model.onnx.k1ll3d_0.tmp", 3700)
    fresh = made(".model.onnx.wr1t1ng0.tmp", 60)
    others = [made(".other.onnx.k1ll3d_0.tmp", 7200), made(".model.onnx.my-notes.tmp", 7200)]
    with export._staging(target, str(target)) as staging:
        assert staging.exists()
    assert not abandoned.exists()
    assert fresh.exists() and all(path.exists() for path in others)
    assert sorted(tmp_path.iterdir()) == sorted([fresh, *others])  # its own staging file too
