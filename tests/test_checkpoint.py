"""Checkpoints, --resume, interruption and run-dir integrity (issue 5).

The resume tests start real `dlcli train` subprocesses on a small generated dataset, stop them
mid-run (SIGKILL, SIGINT, SIGTERM) once a checkpoint exists, resume them, and compare the
result with an uninterrupted run of the same config: weights byte for byte, metrics exactly.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from in_process import (
    EPOCHS,
    SMALL,
    StopAt,
    train_in_process,
    write_config,
    write_run_config,
)

from dlcli import accel, checkpoint, pipeline, store
from dlcli.cli import cli
from dlcli.config import load_config
from dlcli.engine import Trainer
from dlcli.errors import Interrupted, ModelDirError, TrainingError
from dlcli.hooks import Callback

ROOT = Path(__file__).resolve().parent.parent
# Tiny models train far faster on one thread, and do not stall when other processes keep the
# cores busy (OpenMP workers waiting for each other); every run here, reference included, uses
# the same setting, so results stay comparable.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def run_dir_of(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["output"]["dir"])


def dlcli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dlcli", *args],
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", **ONE_THREAD},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen[str], min_epoch: int = 1) -> None:
    """Poll until checkpoints/last holds epoch >= min_epoch (the process still running)."""
    state = run_dir / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be stopped:\n{proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            if json.loads(state.read_text())["state"]["epoch"] >= min_epoch:
                return
        except (OSError, ValueError, KeyError):
            pass  # not written yet, or being renamed into place
        time.sleep(0.005)
    pytest.fail("no checkpoint appeared")


def cli_run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def train_ok(config: Path, *extra: str) -> dict[str, Any]:
    result = cli_run("train", str(config), "--quiet", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


RESULT_KEYS = ("epochs", "train", "validation", "test")


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Same weights (bytes), same final metrics, same per-epoch history (timings aside)."""
    assert (resumed / "model.safetensors").read_bytes() == (
        reference / "model.safetensors"
    ).read_bytes()
    a = json.loads((resumed / "metrics.json").read_text())
    b = json.loads((reference / "metrics.json").read_text())
    assert {k: a[k] for k in RESULT_KEYS} == {k: b[k] for k in RESULT_KEYS}

    def rows(run: Path) -> list[dict[str, str]]:
        with (run / "history.csv").open() as f:
            timings = ("seconds", "samples_per_second")
            return [{k: v for k, v in r.items() if k not in timings} for r in csv.DictReader(f)]

    assert rows(resumed) == rows(reference)
    # The per-step history too: the steps before the interruption come from the checkpoint.
    steps = (resumed / "steps.csv").read_text()
    assert steps == (reference / "steps.csv").read_text() and steps.count("\n") > 10


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the config the resume tests interrupt."""
    config = write_config(tmp_path_factory.mktemp("reference"))
    code, _, err = finish(dlcli("train", str(config), "--quiet"))
    assert code == 0, err
    return run_dir_of(config)


# --- what a checkpoint holds ---------------------------------------------------------------


def test_checkpoints_are_written_each_epoch_with_manifest(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=2)
    doc = train_ok(config)
    root = Path(doc["run_dir"]) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]  # no temporary leftovers
    for name in ("last", "best"):
        manifest = store.verify_manifest(root / name, checkpoint.FILES)
        assert set(manifest["files"]) == set(checkpoint.FILES)
    state = json.loads((root / "last" / "state.json").read_text())["state"]
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0
    assert state["global_step"] == 2 * 30
    assert [row["epoch"] for row in state["history"]] == [1.0, 2.0]
    assert "scheduler" in state["callbacks"]["LRSchedule"]
    # The torch RNG state is a uint8 tensor in state.safetensors, referenced from the JSON.
    assert state["rng"]["torch"] == {"__tensor__": "/rng/torch"}
    from safetensors.torch import load_file

    tensors = load_file(str(root / "last" / "state.safetensors"))
    assert tensors["/rng/torch"].dtype == torch.uint8
    assert doc["checkpoints"]["best_epoch"] in (1, 2)


def test_checkpoint_every_zero_writes_none(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1, checkpoint={"every": 0})
    doc = train_ok(config)
    assert not (Path(doc["run_dir"]) / "checkpoints").exists()


def test_checkpoint_every_n_and_at_the_end(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, images=SMALL, epochs=3, checkpoint={"every": 2, "keep_best": False}
    )
    doc = train_ok(config)
    root = Path(doc["run_dir"]) / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["last"]
    assert json.loads((root / "last" / "state.json").read_text())["state"]["epoch"] == 3


# --- resume: identical to an uninterrupted run ------------------------------------------------


def test_killed_run_resumes_to_the_same_weights_and_metrics(
    tmp_path: Path, reference: Path
) -> None:
    config = write_config(tmp_path)
    run_dir = run_dir_of(config)
    proc = dlcli("train", str(config), "--quiet")
    wait_for_checkpoint(run_dir, proc)
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.wait()
    assert not (run_dir / "model.safetensors").exists()
    code, out, err = finish(dlcli("train", str(config), "--resume", "--json", "--quiet"))
    assert code == 0, err
    resumed_from = json.loads(out)["resumed_from"]
    assert 1 <= resumed_from["epoch"] < EPOCHS
    assert_same_run(run_dir, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_then_resume_is_identical(
    tmp_path: Path, reference: Path, sig: signal.Signals
) -> None:
    config = write_config(tmp_path)
    run_dir = run_dir_of(config)
    proc = dlcli("train", str(config))
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == 130, err
    assert f"training interrupted ({sig.name})" in err
    assert f"Continue with: dlcli train --resume {run_dir}" in err
    assert "Traceback" not in err
    assert not (run_dir / "model.safetensors").exists()
    store.verify_manifest(run_dir / "checkpoints" / "last", checkpoint.FILES)
    # Resume with the run dir given explicitly this time.
    code, _, err = finish(dlcli("train", str(config), "--resume", str(run_dir), "--quiet"))
    assert code == 0, err
    assert_same_run(run_dir, reference)


def test_second_signal_stops_at_once_and_corrupts_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_dir = run_dir_of(config)
    proc = dlcli("train", str(config), "--quiet")
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "Traceback" not in err
    root = run_dir / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    store.verify_manifest(root / "last", checkpoint.FILES)  # whichever checkpoint: complete


def test_resume_may_extend_the_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=2)
    train_ok(config)
    doc = train_ok(config, "--resume", "--set", "training.epochs=3")
    assert doc["epochs"] == 3
    assert doc["resumed_from"]["epochs_completed"] == 2
    assert doc["resumed_from"]["epoch"] == 3 and doc["resumed_from"]["step_in_epoch"] == 0
    history = list(csv.DictReader((Path(doc["run_dir"]) / "history.csv").open()))
    assert [r["epoch"] for r in history] == ["1", "2", "3"]


def _files(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(run_dir)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def test_resume_of_a_finished_run_rewrites_nothing(tiny_config: Path) -> None:
    run_dir = Path(train_ok(tiny_config, "--set", "training.epochs=2")["run_dir"])
    before = _files(run_dir)
    result = cli_run("train", str(tiny_config), "--resume", "--set", "training.epochs=2")
    assert result.exit_code == 0, result.output
    note = f"{run_dir}: already trained 2 of 2 epochs; nothing to do (the saved run is unchanged)"
    assert note in result.stderr.splitlines()
    assert _files(run_dir) == before  # not one byte, not one modification time
    document = train_ok(tiny_config, "--resume", "--set", "training.epochs=2")
    assert document["epochs"] == 2 and "resumed_from" not in document  # the saved run's
    assert _files(run_dir) == before
    # Finished but not saved (killed between its last checkpoint and its save): saved now.
    (run_dir / store.MANIFEST).unlink()
    assert train_ok(tiny_config, "--resume", "--set", "training.epochs=2")["resumed_from"]
    store.verify_run(run_dir)


def test_a_save_that_failed_says_how_to_save_what_was_trained(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at the save said only "cannot save the model": the trained run, kept in its
    last checkpoint, looked lost (and was trained again)."""
    real_write_files = store._write_files

    def disk_full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_files", disk_full)
    result = cli_run("train", str(tiny_config), "--quiet")
    assert result.exit_code == 3
    run_dir = tiny_config.parent / "runs" / "tiny"
    assert result.stderr.splitlines() == [
        f"Error: {run_dir}: cannot save the model: no space left on the device; the trained run "
        f"is kept in its checkpoint ({run_dir}/checkpoints/last, after epoch 3): once that is "
        f"solved, save it (without training again) with: dlcli train --resume {run_dir}"
    ]
    monkeypatch.setattr(store, "_write_files", real_write_files)
    document = train_ok(tiny_config, "--resume")
    assert document["epochs"] == 3 and document["resumed_from"]["epochs_completed"] == 3
    store.verify_run(run_dir)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    train_ok(config)
    result = cli_run("train", str(config), "--resume", "--set", "training.batch_size=20")
    assert result.exit_code == 3
    assert "model dir from a different config" in result.stderr
    assert "training.batch_size is 10 in the checkpoint, 20 now" in result.stderr


def test_resume_keeps_the_monitor_that_chose_the_best_checkpoint(tiny_config: Path) -> None:
    """A monitor changed on --resume was compared with the old one's best value (accuracies
    against a val_loss), and the epoch the old one chose was reported under the new name."""
    train_ok(tiny_config, "--set", "training.epochs=1")
    resume = ("train", str(tiny_config), "--resume", "--set", "training.epochs=2", "--set")
    for key, value, was in (("monitor", "val_accuracy", "'val_loss'"), ("mode", "max", "'auto'")):
        result = cli_run(*resume, f"training.checkpoint.{key}={value}")
        assert result.exit_code == 3
        assert (
            f"model dir from a different config: training.checkpoint.{key} is {was} in the "
            f"checkpoint, '{value}' now"
        ) in " ".join(result.stderr.split())
    doc = train_ok(tiny_config, *resume[2:], "training.checkpoint={every: 2, keep_best: false}")
    assert doc["epochs"] == 2 and doc["checkpoints"]["every"] == 2


def test_resume_without_a_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    result = cli_run("train", str(config), "--resume")
    assert result.exit_code == 3
    assert "no checkpoint to resume from" in result.stderr


def test_resume_refuses_an_altered_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    doc = train_ok(config)
    weights = Path(doc["run_dir"]) / "checkpoints" / "last" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = cli_run("train", str(config), "--resume")
    assert result.exit_code == 3
    assert "checkpoints/last/model.safetensors: altered or truncated" in result.stderr


def test_resume_and_overwrite_conflict(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    result = cli_run("train", str(config), "--resume", "--overwrite")
    assert result.exit_code == 2
    assert "give one" in result.stderr


def test_overwrite_drops_stale_checkpoints(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=2)
    train_ok(config)
    doc = train_ok(config, "--overwrite", "--set", "training.epochs=1")
    state = json.loads((Path(doc["run_dir"]) / "checkpoints/last/state.json").read_text())
    assert state["state"]["epoch"] == 1


def test_interrupted_run_dir_says_how_to_resume(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    doc = train_ok(config)
    run_dir = Path(doc["run_dir"])
    for name in ("manifest.json", "model.safetensors"):
        (run_dir / name).unlink()  # as if killed before the final save
    result = cli_run("evaluate", str(run_dir))
    assert result.exit_code == 3
    assert f"dlcli train --resume {run_dir}" in result.stderr


# --- nothing a user loads is unpickled ----------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"model": _Payload(marker)}, path)  # a real pickle-based .pt file


def _rehash(folder: Path) -> None:
    """Rewrite the manifest so the planted file passes the integrity check: the loader
    itself must refuse it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    store.write_manifest(folder, list(manifest["files"]))


@pytest.mark.parametrize("where", ["checkpoint-weights", "checkpoint-pt", "run-weights"])
def test_a_planted_pickle_is_refused_and_never_executed(tmp_path: Path, where: str) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    run_dir = Path(train_ok(config)["run_dir"])
    marker = tmp_path / "pwned"
    last = run_dir / "checkpoints" / "last"
    if where == "checkpoint-weights":  # a pickle where the checkpoint's safetensors should be
        _plant(last / "model.safetensors", marker)
        _rehash(last)
    elif where == "checkpoint-pt":  # a PyTorch-style checkpoint.pt instead of ours
        for path in last.iterdir():
            path.unlink()
        _plant(last / "checkpoint.pt", marker)
    else:
        _plant(run_dir / "model.safetensors", marker)
        _rehash(run_dir)
    if where != "run-weights":
        result = cli_run("train", str(config), "--resume")
        assert result.exit_code == 3, result.output
        assert "unreadable checkpoint tensors" in result.stderr or "incomplete" in result.stderr
    else:
        result = cli_run("evaluate", str(run_dir))
        assert result.exit_code == 3, result.output
        assert "unreadable weights" in result.stderr
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_the_planted_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """The control for the test above: the payload is real."""
    marker = tmp_path / "pwned"
    _plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what dlcli never does
    assert marker.exists()


def test_no_pickle_loading_in_the_package() -> None:
    for path in (ROOT / "dlcli").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


# --- failures keep the last good state -------------------------------------------------------


class _PoisonAt(Callback):
    """Sets a weight to NaN when epoch ``epoch`` begins: the loss becomes NaN at its step 1."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.epoch:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_non_finite_loss_names_epoch_and_step_and_keeps_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    cfg = load_config(write_config(tmp_path, images=SMALL, epochs=3))
    prepared = pipeline.prepare(cfg)
    with pytest.raises(TrainingError) as info:
        pipeline.train(prepared, callbacks=[_PoisonAt(2)])
    message = str(info.value)
    assert "the loss became nan at epoch 2, step 1" in message
    assert "the last good checkpoint is kept" in message and "after epoch 1" in message
    last = prepared.run_dir / "checkpoints" / "last"
    store.verify_manifest(last, checkpoint.FILES)
    assert json.loads((last / "state.json").read_text())["state"]["epoch"] == 1
    assert not (prepared.run_dir / "model.safetensors").exists()


def test_non_finite_loss_through_the_cli_exits_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, epochs=1)
    result = cli_run(
        "train",
        str(config),
        # Steps as steep as the config allows (learning rate 10, weight decay 1) diverge.
        *(
            "--set",
            "training.optimizer={name: sgd, learning_rate: 10, momentum: 0.99, weight_decay: 1}",
        ),
        *("--set", "training.loss=mse", "--set", "training.lr_schedule=null"),
    )
    assert result.exit_code == 3
    assert "the loss became" in result.stderr and "at epoch 1, step" in result.stderr
    assert "Traceback" not in result.output


def _fail_with(code: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    return fail


def _leftovers(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name]


def test_disk_full_while_checkpointing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=2)
    monkeypatch.setattr("dlcli.checkpoint.save_file", _fail_with(errno.ENOSPC))
    result = cli_run("train", str(config))
    assert result.exit_code == 3
    assert "cannot write a checkpoint: no space left on the device" in result.stderr
    run_dir = run_dir_of(config)
    assert not (run_dir / "model.safetensors").exists()
    assert _leftovers(tmp_path) == []
    assert not run_dir.exists()  # the folders the failed write created are gone too


def test_disk_full_while_saving_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    monkeypatch.setattr("dlcli.store.save_file", _fail_with(errno.ENOSPC))
    result = cli_run("train", str(config))
    assert result.exit_code == 3
    assert "cannot save the model: no space left on the device" in result.stderr
    run_dir = run_dir_of(config)
    assert not (run_dir / "model.safetensors").exists()
    assert _leftovers(tmp_path) == [] and not list(tmp_path.rglob(".run.tmp-*"))
    store.verify_manifest(run_dir / "checkpoints" / "last", checkpoint.FILES)  # still resumable


def test_output_dir_that_cannot_be_created(tmp_path: Path) -> None:
    """As root, permission bits do not stop writes; a path under a regular file fails for
    everyone (ENOTDIR), before any training. It is the mistake of -o AFILE, with its exit
    code: usage (2), not data (3) as it was."""
    config = write_config(tmp_path, images=SMALL, epochs=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli_run("train", str(config), "--output", str(blocker / "run"))
    assert result.exit_code == 2
    assert f"{blocker} is a file, not a directory" in result.stderr
    assert cli_run("train", str(config), "--output", str(blocker)).exit_code == 2
    assert blocker.read_text() == "x"


def test_read_only_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    real_write_bytes = Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:
        if self.name.startswith(".dlcli-write-test-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    result = cli_run("train", str(config))
    assert result.exit_code == 3
    assert "the output directory is not writable" in result.stderr
    assert not run_dir_of(config).exists()


def test_checkpoint_load_verifies_before_reading(tmp_path: Path) -> None:
    config = write_config(tmp_path, images=SMALL, epochs=1)
    doc = train_ok(config)
    last = Path(doc["run_dir"]) / "checkpoints" / "last"
    (last / "state.json").write_text("{}")
    with pytest.raises(ModelDirError, match=r"state\.json: altered or truncated"):
        checkpoint.load(last, load_config(config))


def test_auto_precision_resumes_in_what_the_run_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with precision auto started on a CPU with bf16 instructions, stopped, and continued
    (from its config file, which still says auto) on one without: it keeps computing in bf16,
    to the same bytes as the uninterrupted run; config.yaml records bf16, metrics.json both."""
    settings: dict[str, Any] = {"precision": "auto", "epochs": 2, "device": "cpu"}
    native = lambda cpuinfo=None: True  # noqa: E731
    monkeypatch.setattr(accel, "cpu_native_bf16", native)
    reference = write_run_config(tmp_path / "a", **settings)
    train_in_process(reference)
    resumed = write_run_config(tmp_path / "b", **settings)
    with pytest.raises(Interrupted):
        train_in_process(resumed, stop_at=5)
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda cpuinfo=None: False)  # another CPU
    train_in_process(resumed, resume=True)
    a, b = tmp_path / "a/runs/run", tmp_path / "b/runs/run"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    for run in (a, b):
        metrics = json.loads((run / "metrics.json").read_text())
        assert (metrics["precision"], metrics["precision_asked"]) == ("bf16", "auto")
        assert yaml.safe_load((run / "config.yaml").read_text())["training"]["precision"] == "bf16"
    fresh = write_run_config(tmp_path / "c", **settings)  # a new run on this CPU: fp32
    train_in_process(fresh)
    assert json.loads((tmp_path / "c/runs/run/metrics.json").read_text())["precision"] == "fp32"


def test_an_interrupt_with_checkpoints_off_does_not_call_an_older_checkpoint_saved(
    tmp_path: Path,
) -> None:
    """Resumed with training.checkpoint.every: 0 and stopped again, the run saves nothing;
    the message said 'checkpoint saved' of the older one, whose resume repeats the steps since."""
    config = write_run_config(tmp_path, epochs=3)  # 8 steps an epoch
    with pytest.raises(Interrupted):
        train_in_process(config, stop_at=5)
    cfg = load_config(config)
    cfg.training.checkpoint.every = 0
    with pytest.raises(Interrupted) as stopped:
        pipeline.train(pipeline.prepare(cfg, resume=True), callbacks=[StopAt(12)])
    message = stopped.value.message
    assert "checkpoint saved" not in message
    assert "no checkpoint was written (training.checkpoint.every is 0): the newest is older" in (
        message
    )
    assert "epoch 1, step 5), what was trained since is lost. Continue from it with:" in message


def test_a_checkpoint_copied_in_from_another_run_is_not_resumed(
    tiny_config: Path, tmp_path: Path
) -> None:
    """train --resume RUN takes the config of RUN's newest checkpoint: one copied in from
    another run would train that run's model and save it, and its config, over RUN's."""
    import shutil

    own, other = tmp_path / "own", tmp_path / "other"
    train_ok(tiny_config, "--output", str(own), "--set", "training.epochs=2")
    train_ok(
        tiny_config,
        "--output",
        str(other),
        "--set",
        "training.epochs=2",
        "--set",
        "training.optimizer.learning_rate=0.05",
    )
    before = (own / "model.safetensors").read_bytes()
    kept = tmp_path / "kept-last"
    shutil.move(own / "checkpoints" / "last", kept)
    shutil.copytree(other / "checkpoints" / "last", own / "checkpoints" / "last")
    result = cli_run("train", "--resume", str(own), "--quiet", "--set", "training.epochs=3")
    assert result.exit_code == 3, result.output
    assert "a checkpoint of another run: training.optimizer.learning_rate is 0.01" in " ".join(
        result.output.split()
    )
    assert (own / "model.safetensors").read_bytes() == before
    shutil.rmtree(own / "checkpoints" / "last")
    shutil.move(kept, own / "checkpoints" / "last")  # its own checkpoint resumes as ever
    resumed = cli_run("train", "--resume", str(own), "--quiet", "--set", "training.epochs=3")
    assert resumed.exit_code == 0, resumed.output


def test_a_missing_checkpoint_is_explained_by_the_runs_own_settings(
    tiny_config: Path, tmp_path: Path
) -> None:
    """evaluate --weights best of a run trained with keep_best: false said 'keep_best found no
    epoch to keep'; it was off."""
    run = tmp_path / "run"
    train_ok(
        tiny_config,
        "--output",
        str(run),
        "--set",
        "training.epochs=1",
        "--set",
        "training.checkpoint={every: 0, keep_best: false}",
    )
    best = cli_run("evaluate", str(run), "--weights", "best")
    assert best.exit_code == 3
    assert "here off: training.checkpoint.keep_best was false" in " ".join(best.output.split())
    last = cli_run("evaluate", str(run), "--weights", "last")
    assert last.exit_code == 3
    assert "here off: training.checkpoint.every was 0" in " ".join(last.output.split())
