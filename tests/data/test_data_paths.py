"""Relative data paths in a config resolve against the config file's directory; the run
records absolute paths and SHA-256s; `config validate` reads the data as train does (13.8)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_process import dlcli, document
from conftest import write_tiny_config

from dlcli.config import load_config
from dlcli.data.idx import read_idx, write_idx


def _project(tmp_path: Path) -> Path:
    """proj/cfg/my.yaml naming its archives as data/… (i.e. proj/cfg/data/…), output runs/x."""
    source = write_tiny_config(tmp_path / "made")
    cfg_dir = tmp_path / "proj" / "cfg"
    (cfg_dir / "data").mkdir(parents=True)
    raw = yaml.safe_load(source.read_text())
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        name = Path(raw["data"][key]).name
        shutil.copy(raw["data"][key], cfg_dir / "data" / name)
        raw["data"][key] = f"data/{name}"
    raw["output"]["dir"] = "runs/x"
    raw["training"]["epochs"] = 1
    (cfg_dir / "my.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "proj"


def test_relative_paths_resolve_against_the_config_and_command_line_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proj = _project(tmp_path)
    monkeypatch.chdir(proj)  # restored after the test (os.chdir left the suite in tmp_path)
    cfg = load_config("cfg/my.yaml", ["data.test_labels=other.gz"])
    assert cfg.data.train_images == str(proj / "cfg" / "data" / "train-images-idx3-ubyte.gz")
    assert cfg.data.test_labels == str(proj / "other.gz")  # --set: the current directory
    assert cfg.output.dir == "runs/x"  # the output stays relative to where the command runs


def test_a_config_run_from_another_directory_trains_and_evaluates_anywhere(
    tmp_path: Path,
) -> None:
    proj = _project(tmp_path)
    validated = document(dlcli("config", "validate", "cfg/my.yaml", "--json", cwd=proj))
    assert validated["valid"] is True
    trained = document(dlcli("train", "cfg/my.yaml", "--json", "--quiet", cwd=proj))
    run_dir = proj / "runs" / "x"
    assert Path(trained["run_dir"]) == Path("runs/x")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    expected = proj / "cfg" / "data" / "train-images-idx3-ubyte.gz"
    assert saved["data"]["train_images"] == str(expected)
    files = json.loads((run_dir / "metrics.json").read_text())["dataset"]["files"]
    assert files["train_images"]["path"] == str(expected)
    assert len(files["train_images"]["sha256"]) == 64
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = document(dlcli("evaluate", str(run_dir), "--json", cwd=elsewhere))
    assert evaluated["metrics"]["test"]["accuracy"] == trained["test"]["accuracy"]
    # A missing file is named by its key and resolved path; a changed one is refused.
    moved = proj / "cfg" / "data" / "test-labels-idx1-ubyte.gz"
    moved.rename(moved.with_suffix(".bak"))
    error = document(dlcli("evaluate", str(run_dir), "--json", cwd=elsewhere), 3)["error"]
    assert error["message"].startswith(f"data.test_labels: file not found: {moved}")
    moved.with_suffix(".bak").rename(moved)
    labels = read_idx(moved)
    write_idx(moved, labels[::-1].copy())  # same shape, other content
    error = document(dlcli("evaluate", str(run_dir), "--json", cwd=elsewhere), 3)["error"]
    assert error["message"].startswith(f"{moved}: changed since the model was trained")


def test_config_validate_reads_the_data_as_train_does(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    shape = ("--set", "model.input_shape=[9, 8, 1]")
    message = document(dlcli("config", "validate", "cfg/my.yaml", *shape, "--json", cwd=proj), 2)
    assert "model.input_shape: the config says [9, 8, 1]" in message["error"]["message"]
    missing = proj / "cfg" / "data" / "train-images-idx3-ubyte.gz"
    missing.unlink()
    proc = dlcli("config", "validate", "cfg/my.yaml", "--json", cwd=proj)
    message = document(proc, 2)["error"]["message"]
    assert f"data.train_images: file not found: {missing}" in message
    assert "resolve against the config file's directory" in message
    assert dlcli("config", "validate", "cfg/my.yaml", "--no-data", cwd=proj).returncode == 0
