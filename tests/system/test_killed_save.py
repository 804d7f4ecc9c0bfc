"""A run dir's save SIGKILLed between any two of its renames (dlcli.atomic.swap_entries) never
loses the run: the next command that opens the run dir finishes the save, says so in one
line, and leaves nothing behind. Each kill is real: a forked child of this process (torch
already imported: no start-up cost) saves over a copy of a trained run and sends itself
SIGKILL before its N-th ``os.rename``."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from cli_process import dlcli
from click.testing import CliRunner

from dlcli import store
from dlcli.cli import cli
from dlcli.manifest import take_recovered

NEW = {"marker": "the new run"}


def _overwrite_save(run_dir: Path, saved: store.Run, kill_at: int, first: bool = False) -> int:
    """In a forked child: ``train --overwrite``'s save over ``run_dir`` (its checkpoints and
    event files in .dlcli-pending, as training leaves them), killed before rename ``kill_at``
    (0: never). The child's wait status; not killed, it exits with its count of renames.
    ``first``: the save of a first run instead (its checkpoints in place, no run before)."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    code = 200
    try:
        output = store.open_output(run_dir, overwrite=not first, resume=first)
        for folder in ("checkpoints/last", "tensorboard"):
            (output.work_dir / folder).mkdir(parents=True, exist_ok=True)
            (output.work_dir / folder / "new.txt").write_text("the new run's")
        renames, rename = [0], os.rename

        def killing_rename(*args: Any, **kwargs: Any) -> None:
            renames[0] += 1
            if renames[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            rename(*args, **kwargs)

        os.rename = killing_rename  # type: ignore[assignment]
        store.save_run(
            output,
            config=saved.config,
            state_dict=saved.state_dict,
            metrics={**saved.metrics, **NEW},
            history=[{"epoch": 1, "loss": 0.5}],
        )
        output.release()
        code = renames[0]
    finally:
        os._exit(code)


def _marker(run_dir: Path) -> Any:
    return json.loads((run_dir / store.METRICS).read_text()).get("marker")


def _leftovers(run_dir: Path) -> list[str]:
    """What a save leaves while under way (a lock file left by a killed process is harmless:
    its lock died with it)."""
    return sorted(
        p.name for p in run_dir.iterdir() if p.name.startswith(".dlcli-") and p.name != store.LOCK
    )


def _tree(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name != store.LOCK)


@pytest.fixture(scope="module")
def renames(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> int:
    """How many renames an uninterrupted save makes."""
    run_dir = tmp_path_factory.mktemp("count") / "run"
    shutil.copytree(tiny_run, run_dir)
    status = _overwrite_save(run_dir, store.load_run(tiny_run), 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) != 200, status
    assert _marker(run_dir) == NEW["marker"] and _leftovers(run_dir) == []
    return os.WEXITSTATUS(status)


def test_a_save_killed_at_every_rename_leaves_one_complete_run(
    tiny_run: Path, tmp_path: Path, renames: int
) -> None:
    saved = store.load_run(tiny_run)
    assert renames >= 10  # the checkpoints and event files moved in, then the run's entries
    for kill_at in range(1, renames + 1):
        run_dir = tmp_path / f"killed-{kill_at}"
        shutil.copytree(tiny_run, run_dir)
        status = _overwrite_save(run_dir, saved, kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_at
        take_recovered()
        # runs list reads it as a complete run (after finishing the save)
        listed = CliRunner().invoke(cli, ["runs", "list", str(run_dir), "--json"])
        assert listed.exit_code == 0, (kill_at, listed.output)
        document = json.loads(listed.stdout)
        assert len(document["runs"]) == 1 and not document["skipped"], (kill_at, document)
        run = store.load_run(run_dir)  # every file as its manifest says
        assert _leftovers(run_dir) == [], (kill_at, _leftovers(run_dir))
        # The plan was written before the first rename: the save had begun, and is finished.
        assert run.metrics.get("marker") == NEW["marker"], kill_at
        assert "finished a save that was interrupted" in listed.stderr, kill_at
        assert (run_dir / "checkpoints" / "last" / "new.txt").read_text() == "the new run's"
        assert (run_dir / "tensorboard" / "new.txt").is_file()


def test_a_first_run_killed_at_every_rename_of_its_save_is_saved_whole(
    tiny_run: Path, tmp_path: Path
) -> None:
    saved = store.load_run(tiny_run)
    for kill_at in range(1, 8):  # four files and the manifest in (no steps, no digests)
        run_dir = tmp_path / f"killed-{kill_at}"
        run_dir.mkdir()
        shutil.copytree(tiny_run / "checkpoints", run_dir / "checkpoints")  # what training left
        status = _overwrite_save(run_dir, saved, kill_at, first=True)
        if os.WIFEXITED(status):  # fewer renames than that: saved
            assert os.WEXITSTATUS(status) < kill_at, status
            break
        take_recovered()
        assert store.load_run(run_dir).metrics["marker"] == NEW["marker"], kill_at
        assert take_recovered() == [
            f"{run_dir}: finished a save that was interrupted while moving its files into place"
        ]
        assert _leftovers(run_dir) == [] and (run_dir / "tensorboard" / "new.txt").is_file()
    else:
        pytest.fail("the save made more renames than a first run's files")


def test_evaluate_and_retrain_after_a_kill_mid_swap(
    tiny_run: Path, tmp_path: Path, renames: int
) -> None:
    """Killed between the previous run's files moved aside and the new ones moved in: the
    state that lost both runs to the next `train --overwrite`."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    status = _overwrite_save(run_dir, store.load_run(tiny_run), renames // 2 + 2)
    assert os.WIFSIGNALED(status)
    assert not (run_dir / store.MANIFEST).exists()  # mid-swap indeed
    take_recovered()
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "interrupted" in line]
    assert lines == [
        f"{run_dir}: finished a save that was interrupted while moving its files into place"
    ]
    assert _marker(run_dir) == NEW["marker"] and _leftovers(run_dir) == []


def test_the_next_train_finishes_a_killed_save_then_replaces_it(
    tiny_run: Path, tmp_path: Path, renames: int
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    status = _overwrite_save(run_dir, store.load_run(tiny_run), renames // 2 + 2)
    assert os.WIFSIGNALED(status)
    config = shutil.copy(tiny_run / store.CONFIG, tmp_path / "config.yaml")
    proc = dlcli(
        *("train", str(config), "--output", str(run_dir), "--overwrite"),
        *("--set", "training.epochs=1"),
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{run_dir}: finished a save that was interrupted" in proc.stderr, proc.stderr
    assert _marker(run_dir) is None and _leftovers(run_dir) == []  # retrained, saved whole
    store.verify_run(run_dir)


def test_a_save_that_cannot_be_finished_is_one_clear_error_and_deletes_nothing(
    tiny_run: Path, tmp_path: Path, renames: int
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    status = _overwrite_save(run_dir, store.load_run(tiny_run), renames // 2 + 2)
    assert os.WIFSIGNALED(status)
    [staging] = run_dir.glob(".dlcli-save-*")
    (staging / ".dlcli-plan.json").write_text("{not json")  # the disk returned garbage
    before = _tree(run_dir)
    config = shutil.copy(tiny_run / store.CONFIG, tmp_path / "config.yaml")
    result = CliRunner().invoke(
        cli, ["train", str(config), "--output", str(run_dir), "--overwrite", "--quiet"]
    )
    assert result.exit_code == 3, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {run_dir}: cannot finish a save that was killed mid-way: ")
    assert f"{staging / '.dlcli-plan.json'}: unreadable save plan" in line
    assert line.endswith(
        "nothing was deleted (the previous run is in its .dlcli-old-* folder, "
        "the new one in its .dlcli-save-* folder)"
    )
    assert _tree(run_dir) == before
    # a reader reads the run dir as it is (not a complete run), and changes nothing either
    listed = CliRunner().invoke(cli, ["runs", "list", str(run_dir), "--json"])
    assert _tree(run_dir) == before
    assert listed.exit_code in (0, 3)


def test_a_run_read_while_a_retrain_saves_it_is_read_again_never_mixed(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate beside `train --overwrite`: the save replaced the run between the manifest
    check and the reads, and the old config was read with the new weights and metrics."""
    import dataclasses

    import torch

    from dlcli import runs

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    saved = store.load_run(tiny_run)
    training = dataclasses.replace(saved.config.training, seed=saved.config.training.seed + 1)
    retrained = dataclasses.replace(saved.config, training=training)

    def retrain() -> None:  # what another process's save does, all at once
        store.save_run(
            run_dir,
            config=retrained,
            state_dict={k: torch.zeros_like(v) for k, v in saved.state_dict.items()},
            metrics={**saved.metrics, "seed": training.seed},
            history=[{"epoch": 1, "loss": 0.5}],
        )

    real_load_file, real_read_history = store.load_file, runs.read_history
    calls: list[int] = []

    def load_file_beside_a_save(path: str) -> Any:  # the save lands after the verification
        if not calls:
            calls.append(1)
            retrain()
        return real_load_file(path)

    monkeypatch.setattr(store, "load_file", load_file_beside_a_save)
    run = store.load_run(run_dir)
    assert run.config.training.seed == run.metrics["seed"] == training.seed
    assert all(not t.any() for t in run.state_dict.values())  # the retrained weights

    def history_beside_a_save(path: Path) -> Any:
        if len(calls) == 1:
            calls.append(2)
            retrain()
        return real_read_history(path)

    monkeypatch.setattr(runs, "read_history", history_beside_a_save)
    training = dataclasses.replace(training, seed=training.seed + 1)
    retrained = dataclasses.replace(saved.config, training=training)
    info = runs.read_run(run_dir)
    assert info.config["training"]["seed"] == info.metrics["seed"] == training.seed
    assert info.history == [{"epoch": 1, "loss": 0.5}]


def test_a_save_failing_mid_swap_is_finished_by_the_next_command(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename refused mid-swap (an I/O error): the save's error handler deleted its staging
    folder, the half of the new run not yet moved in, and the next command took the previous
    run's manifest back over the new files (reported as altered), deleting the rest of it."""
    import errno

    from dlcli.errors import ModelDirError

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    saved = store.load_run(tiny_run)
    entries = (store.MANIFEST, store.CONFIG, store.WEIGHTS, store.METRICS, store.HISTORY)
    fail_at = sum((run_dir / name).exists() for name in entries) + 2  # the 2nd one moved in
    real_rename, renames = os.rename, [0]

    def failing_rename(*args: Any) -> None:
        renames[0] += 1
        if renames[0] == fail_at:
            raise OSError(errno.EIO, "Input/output error")
        real_rename(*args)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(ModelDirError, match="cannot save the model: Input/output error"):
        store.save_run(
            run_dir,
            config=saved.config,
            state_dict=saved.state_dict,
            metrics={**saved.metrics, **NEW},
            history=[{"epoch": 1, "loss": 0.5}],
        )
    monkeypatch.setattr(os, "rename", real_rename)
    take_recovered()
    assert store.load_run(run_dir).metrics["marker"] == NEW["marker"]
    assert take_recovered() == [
        f"{run_dir}: finished a save that was interrupted while moving its files into place"
    ]
    assert _leftovers(run_dir) == []
