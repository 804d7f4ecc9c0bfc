"""A run trained on your own data records a fingerprint of each split's files, and
``evaluate`` refuses data changed since (exit 3) unless --accept-changed-data, as for IDX."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from image_trees import CLASSES, write_learnable_tree
from PIL import Image

from dlcli import store
from dlcli.cli import cli
from dlcli.data.local import LocalData, load_local


def run(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _train(folder: Path, test: Path) -> Path:
    """A one-epoch MLP trained on ``folder/train`` (class folders) with ``test`` as its test
    data; returns the run dir."""
    config = folder / "own.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"train": str(folder / "train"), "test": str(test)},
                "model": {
                    "input_shape": [8, 8, 1],
                    "layers": [{"type": "flatten"}, {"type": "dense", "units": 4}],
                },
                "training": {"epochs": 1, "batch_size": 16},
                "output": {"dir": str(folder / "run")},
            }
        )
    )
    result = run("train", config, "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    """A run trained on a train and a test folder of 8×8 PNGs."""
    write_learnable_tree(tmp_path / "train", 32)
    write_learnable_tree(tmp_path / "test", 12, seed=1)
    _train(tmp_path, tmp_path / "test")
    return tmp_path


def _key(part: str, path: Path) -> str:
    return f"{part}: {path.resolve()}"


def _repaint(path: Path, value: int) -> None:
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)


def test_a_run_records_each_split_and_evaluate_accepts_unchanged_data(folders: Path) -> None:
    metrics = json.loads((folders / "run" / "metrics.json").read_text())
    recorded = metrics["dataset"]["checksums"]
    assert set(recorded) == {_key("train", folders / "train"), _key("test", folders / "test")}
    assert all(len(sha) == 64 for sha in recorded.values())
    result = run("evaluate", folders / "run", "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data_changed"] == []
    assert "changed" not in result.stderr


def test_a_changed_image_is_refused_unless_accepted(folders: Path) -> None:
    image = sorted((folders / "test" / CLASSES[1]).glob("*.png"))[0]
    _repaint(image, 200)
    result = run("evaluate", folders / "run", "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{_key('test', folders / 'test')}: changed since the model was trained" in (
        result.stderr
    )
    assert f"changed: {CLASSES[1]}/{image.name};" in result.stderr
    assert "--accept-changed-data" in result.stderr
    assert "Traceback" not in result.output
    accepted = run(
        "evaluate", folders / "run", "--split", "test", "--accept-changed-data", "--json"
    )
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["data_changed"] == [_key("test", folders / "test")]
    assert "changed since the model was trained (--accept-changed-data)" in accepted.stderr


def test_an_added_or_removed_image_is_a_change(folders: Path) -> None:
    extra = folders / "train" / CLASSES[0] / "new.png"
    _repaint(extra, 3)
    result = run("evaluate", folders / "run", "--split", "validation")
    assert result.exit_code == 3, result.output
    assert f"{_key('train', folders / 'train')}: changed since" in result.stderr
    assert f"added: {CLASSES[0]}/new.png;" in result.stderr
    extra.unlink()
    assert run("evaluate", folders / "run", "--split", "validation").exit_code == 0
    gone = sorted((folders / "test" / CLASSES[2]).glob("*.png"))[-1]
    gone.unlink()
    result = run("evaluate", folders / "run", "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{_key('test', folders / 'test')}: changed since" in result.stderr
    assert f"removed: {CLASSES[2]}/{gone.name};" in result.stderr


def test_an_image_moved_to_another_class_is_a_change(folders: Path) -> None:
    image = sorted((folders / "test" / CLASSES[0]).glob("*.png"))[0]
    image.rename(folders / "test" / CLASSES[3] / "moved.png")
    result = run("evaluate", folders / "run", "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{_key('test', folders / 'test')}: changed since" in result.stderr
    assert f"added: {CLASSES[3]}/moved.png; removed: {CLASSES[0]}/{image.name};" in result.stderr


def test_a_deleted_data_folder_is_a_data_error(folders: Path) -> None:
    shutil.rmtree(folders / "test")
    result = run("evaluate", folders / "run", "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{folders / 'test'}: not found" in result.stderr
    assert "Traceback" not in result.output


def test_a_changed_csv_or_an_image_it_names_is_a_change(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "train", 32)
    write_learnable_tree(tmp_path / "pictures", 12, seed=1)
    files = sorted((tmp_path / "pictures").rglob("*.png"))
    labels = [CLASSES.index(f.parent.name) for f in files]
    table = tmp_path / "test.csv"
    rows = [f"{f.relative_to(tmp_path)},{f.parent.name}\n" for f in files]
    table.write_text("path,label\n" + "".join(rows))
    run_dir = _train(tmp_path, table)
    assert (
        _key("test", table)
        in json.loads((run_dir / "metrics.json").read_text())["dataset"]["checksums"]
    )
    assert run("evaluate", run_dir, "--split", "test").exit_code == 0
    relabelled = f"{files[0].relative_to(tmp_path)},{CLASSES[(int(labels[0]) + 1) % 4]}\n"
    table.write_text("path,label\n" + relabelled + "".join(rows[1:]))
    result = run("evaluate", run_dir, "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{_key('test', table)}: changed since" in result.stderr
    assert "changed: test.csv;" in result.stderr
    table.write_text("path,label\n" + "".join(rows))
    assert run("evaluate", run_dir, "--split", "test").exit_code == 0
    _repaint(files[-1], 99)  # the CSV is the same, an image it names is not
    result = run("evaluate", run_dir, "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{_key('test', table)}: changed since" in result.stderr
    assert f"changed: {files[-1].relative_to(tmp_path)};" in result.stderr


def test_a_changed_npz_is_a_change(tmp_path: Path) -> None:
    write_learnable_tree(tmp_path / "train", 32)
    rng = np.random.default_rng(0)
    arrays = tmp_path / "test.npz"
    np.savez(arrays, x=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y=np.arange(8) % 4)
    run_dir = _train(tmp_path, arrays)
    recorded = json.loads((run_dir / store.DATA_DIGESTS).read_text())
    assert recorded[_key("test", arrays)] == {
        "test.npz": hashlib.sha256(arrays.read_bytes()).hexdigest()
    }
    np.savez(arrays, x=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8), y=np.arange(8) % 4)
    result = run("evaluate", run_dir, "--split", "test")
    assert result.exit_code == 3, result.output
    assert f"{_key('test', arrays)}: changed since" in result.stderr
    assert "changed: test.npz;" in result.stderr


def test_a_run_without_own_data_checksums_still_evaluates(folders: Path) -> None:
    """A run from before fingerprints (``checksums`` empty) has nothing to compare."""
    metrics_path = folders / "run" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["dataset"]["checksums"] = {}
    metrics_path.write_text(json.dumps(metrics))
    manifest = json.loads((folders / "run" / store.MANIFEST).read_text())
    store.write_manifest(folders / "run", list(manifest["files"]))
    _repaint(sorted((folders / "test" / CLASSES[1]).glob("*.png"))[0], 200)
    result = run("evaluate", folders / "run", "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data_changed"] == []


def test_without_the_digests_file_the_split_is_named(folders: Path) -> None:
    """A run whose data-digests.json is gone still refuses changed data, naming the split and
    both fingerprints."""
    (folders / "run" / store.DATA_DIGESTS).unlink()
    manifest = json.loads((folders / "run" / store.MANIFEST).read_text())
    files = [name for name in manifest["files"] if name != store.DATA_DIGESTS]
    store.write_manifest(folders / "run", files)
    _repaint(sorted((folders / "test" / CLASSES[1]).glob("*.png"))[0], 200)
    result = run("evaluate", folders / "run", "--split", "test")
    assert result.exit_code == 3, result.output
    assert (
        f"{_key('test', folders / 'test')}: changed since the model was trained: its sha256 is"
        in result.stderr
    )


def test_the_fingerprint_is_the_same_from_the_cache_and_from_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cached pixels carry the files' digests: a cache hit gives the fingerprint decoding
    gives, and no image is decoded (nor read) for it."""
    write_learnable_tree(tmp_path / "t", 16)
    spec = LocalData(tmp_path / "t", input_shape=(8, 8, 1), cache_dir=str(tmp_path / "cache"))
    decoded = load_local(spec).checksums
    uncached = load_local(LocalData(tmp_path / "t", input_shape=(8, 8, 1), cache=False))

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr("dlcli.data.local.decode_files", no_decoding)
    cached = load_local(spec)
    assert cached.checksums == decoded == uncached.checksums
    assert list(decoded) == [_key("train", tmp_path / "t")]
    first = sorted((tmp_path / "t").rglob("*.png"))[0]
    assert (
        cached.digests[_key("train", tmp_path / "t")][str(first.relative_to(tmp_path / "t"))]
        == hashlib.blake2b(first.read_bytes(), digest_size=16).hexdigest()
    )
