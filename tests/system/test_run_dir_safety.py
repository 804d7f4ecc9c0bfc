"""The run directory is never lost and nothing a user owns is touched (issue 13.1-13.3),
through real `dlcli` subprocesses: --overwrite on user files, files added to a run surviving a
retrain, two trainings at once, a lock left by a killed process, `--output .`, and an
--overwrite run interrupted before its save leaving the previous run whole."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_process import dlcli, document, start
from conftest import write_tiny_config

from dlcli import store

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _config(folder: Path, **training: Any) -> Path:
    config = write_tiny_config(folder)
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(training)
    config.write_text(yaml.safe_dump(raw))
    return config


def _train(*args: str, cwd: Path | None = None, code: int = 0) -> Any:
    kwargs = {"cwd": cwd} if cwd else {}
    return document(dlcli("train", *args, "--json", "--quiet", env=ONE_THREAD, **kwargs), code)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_overwrite_refuses_a_folder_of_user_files_and_changes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "src" / "main.py").write_text("print('hi')")
    before = _tree(mine)
    error = _train(str(config), "--output", str(mine), "--overwrite", code=2)["error"]
    assert "--overwrite replaces only a dlcli run" in error["message"]
    assert "notes.txt, src/" in error["message"]
    assert _tree(mine) == before and sorted(p.name for p in mine.iterdir()) == ["notes.txt", "src"]


def test_files_added_to_a_run_survive_a_retrain(tmp_path: Path) -> None:
    """What `make train` does twice, with an export and plots made in between."""
    config = _config(tmp_path, epochs=1)
    first = _train(str(config))
    run_dir = Path(first["run_dir"])
    (run_dir / "model.onnx").write_bytes(b"an export")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "loss.png").write_bytes(b"a plot")
    old_weights = (run_dir / "model.safetensors").read_bytes()
    proc = dlcli("train", str(config), "--overwrite", "--set", "training.seed=1", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    kept = [line for line in proc.stderr.splitlines() if "kept as they are" in line]
    # steps.csv is training's own (replaced by the retrain), never listed as the user's
    assert len(kept) == 1 and kept[0].endswith(
        "kept as they are (not written by training): model.onnx, plots"
    ), proc.stderr
    assert (run_dir / "model.onnx").read_bytes() == b"an export"
    assert (run_dir / "plots" / "loss.png").read_bytes() == b"a plot"
    assert (run_dir / "model.safetensors").read_bytes() != old_weights
    store.verify_run(run_dir)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_two_trainings_at_once_one_trains_the_other_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=30)
    procs = [start("train", str(config), "--json", "--quiet", env=ONE_THREAD) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(out for code, out, _ in results if code == 2)
    winner = next(p for p, (code, _, _) in zip(procs, results, strict=True) if code == 0)
    message = json.loads(refused)["error"]["message"]
    assert f"in use by another dlcli process (PID {winner.pid})" in message
    run_dir = tmp_path / "runs" / "tiny"
    store.verify_run(run_dir)  # the one run is complete
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 30
    assert not (run_dir / store.LOCK).exists()


def _wait_for_checkpoint(folder: Path, proc: Any) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if list(folder.rglob("checkpoints/last/manifest.json")):
                return
        except FileNotFoundError:  # a checkpoint's temporary folder renamed mid-scan (seen)
            pass
        time.sleep(0.01)
    pytest.fail("no checkpoint appeared")


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=100000)
    proc = start("train", str(config), "--quiet", env=ONE_THREAD)
    run_dir = tmp_path / "runs" / "tiny"
    _wait_for_checkpoint(run_dir, proc)
    busy = dlcli("train", str(config), "--resume", "--quiet", env=ONE_THREAD)
    assert busy.returncode == 2 and f"(PID {proc.pid})" in busy.stderr
    proc.kill()
    proc.wait()
    assert (run_dir / store.LOCK).exists()  # left behind, but its lock died with the process
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["state"]
    needed = state["epoch"] + (1 if state["step_in_epoch"] else 0)  # finish where it stopped
    resumed = _train(str(config), "--resume", "--set", f"training.epochs={needed}")
    assert resumed["resumed_from"]["epoch"] >= 1  # resumed where the killed run was
    store.verify_run(run_dir)


def test_output_dot_overwrite_trains_in_place(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=1)
    here = tmp_path / "here"
    here.mkdir()
    _train(str(config), "--output", ".", cwd=here)
    store.verify_run(here)
    second = _train(str(config), "--output", ".", "--overwrite", cwd=here)
    assert second["run_dir"] == "."
    store.verify_run(here)
    assert sorted(p.name for p in here.iterdir()) == sorted(
        [
            "checkpoints",
            "config.yaml",
            "history.csv",
            "manifest.json",
            "metrics.json",
            "model.safetensors",
            "steps.csv",
        ]
    )


def test_an_interrupted_overwrite_leaves_the_previous_run_whole(tmp_path: Path) -> None:
    config = _config(tmp_path, epochs=1)
    first = _train(str(config))
    run_dir = Path(first["run_dir"])
    before = {p: (run_dir / p).read_bytes() for p in ("model.safetensors", "metrics.json")}
    old_best = (run_dir / "checkpoints" / "best" / "model.safetensors").read_bytes()
    proc = start(
        "train",
        str(config),
        "--overwrite",
        "--set",
        "training.epochs=100000",
        "--set",
        "training.seed=5",
        env=ONE_THREAD,
    )
    _wait_for_checkpoint(run_dir / store.PENDING, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    # The previous run is untouched: files, checkpoints, and it still evaluates.
    assert {p: (run_dir / p).read_bytes() for p in before} == before
    assert (run_dir / "checkpoints" / "best" / "model.safetensors").read_bytes() == old_best
    evaluated = document(dlcli("evaluate", str(run_dir), "--json"))
    assert evaluated["metrics"]["test"]["accuracy"] == first["test"]["accuracy"]
    # --resume continues the new run, and its save replaces the old one.
    resumed = _train(
        str(config), "--resume", "--set", "training.epochs=2", "--set", "training.seed=5"
    )
    assert resumed["epochs"] == 2 and resumed["seed"] == 5
    assert not (run_dir / store.PENDING).exists()
    assert json.loads((run_dir / "metrics.json").read_text())["seed"] == 5
