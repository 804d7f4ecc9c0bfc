"""Data-parallel training (dlcli/distributed.py): the sharding and loss-weighting maths and the
launcher's plumbing in-process; then real 2-worker gloo jobs on 127.0.0.1 (`dlcli train
--nproc-per-node 2` and `torchrun -m dlcli train`) that must match a single process, stop
together and resume, and end cleanly when a worker dies or hangs (the DLCLI_TEST_*_RANK
hooks in worker_hooks/sitecustomize.py)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from dlcli import distributed
from dlcli.cli import cli
from dlcli.distributed import SINGLE, Launch, World, failure_error, worker_args
from dlcli.errors import UsageError
from dlcli.evaluation import Objective
from dlcli.report import Reporter

ROOT = Path(__file__).resolve().parents[2]
HOOKS = str(Path(__file__).resolve().parents[1] / "worker_hooks")  # DLCLI_TEST_*: sitecustomize.py
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")

# Two workers and one process see the same samples per step; only the order of float sums
# differs (each worker's gradient, then the all-reduce, vs one batch gradient), which after
# a few dozen Adam steps moves the metrics by ~1e-6. The bounds leave room for that, and are
# far tighter than what a wrong shard or gradient weighting would give (percent-level).
LOSS_REL = 1e-3
ACCURACY_ABS = 0.011  # one sample in 100


# --- the maths, in one process ---------------------------------------------------------------


def test_a_single_process_is_the_identity() -> None:
    index = torch.arange(7)
    loss = torch.tensor(2.0)
    assert not SINGLE.distributed and SINGLE.is_main
    assert SINGLE.shard(index) is index
    assert SINGLE.scale_loss(loss, 7, 7) is loss
    assert SINGLE.block(7) == range(7)
    model = nn.Linear(2, 2)
    assert SINGLE.wrap(model, torch.device("cpu")) is model
    assert SINGLE.describe() == {}


@pytest.mark.parametrize(("n", "size"), [(10, 2), (7, 3), (1, 2), (100, 4)])
def test_shards_and_blocks_use_every_sample_once(n: int, size: int) -> None:
    index = torch.randperm(n)
    worlds = [World(rank=r, size=size) for r in range(size)]
    shards = torch.cat([w.shard(index) for w in worlds])
    assert sorted(shards.tolist()) == list(range(n))
    blocks = [i for w in worlds for i in w.block(n)]
    assert blocks == list(range(n))


@pytest.mark.parametrize("batch", [8, 7, 3])  # even shards, uneven, one empty (4 workers)
def test_weighted_worker_gradients_average_to_the_global_batch_gradient(batch: int) -> None:
    """What DDP computes (the mean over workers of each worker's gradient) equals the
    gradient of the whole batch's mean loss, whatever the shard sizes."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(batch, 5), torch.randint(0, 3, (batch,))
    loss_fn = nn.functional.cross_entropy
    expected = torch.autograd.grad(loss_fn(model(x), y), model.weight)[0]
    size = 4
    grads = []
    for rank in range(size):
        world = World(rank=rank, size=size)
        index = world.shard(torch.arange(batch))
        logits = model(x[index])
        loss = loss_fn(logits, y[index]) if len(index) else logits.sum() * 0.0
        scaled = world.scale_loss(loss, len(index), batch)
        grads.append(torch.autograd.grad(scaled, model.weight)[0])
    assert torch.allclose(torch.stack(grads).mean(0), expected, atol=1e-6)


@pytest.mark.parametrize("batch", [8, 7, 3])
def test_class_weighted_worker_gradients_average_to_the_global_batch_gradient(batch: int) -> None:
    """With training.class_weights a worker's weighted loss is a mean over the global batch's
    summed weights over the workers (the engine's ``over``): its own weighted mean, scaled by
    its share of the samples, averaged to another update than one process's. Class 0 weighs
    0, so some shards weigh nothing (their label-smoothing terms still count, as torch's)."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(batch, 5), torch.tensor([0, 1, 2, 0, 0, 2, 1, 0][:batch])
    weight = torch.tensor([0.0, 5.0, 1.0])
    objective = Objective(3, label_smoothing=0.1)
    expected = torch.autograd.grad(objective.loss_of(model(x), y, weight), model.weight)[0]
    size = 4
    grads = []
    for rank in range(size):
        world = World(rank=rank, size=size)
        index = world.shard(torch.arange(batch))
        over = torch.as_tensor(objective.mean_over(y, weight)) / size
        loss = objective.loss_of(model(x[index]), y[index], weight, over)
        grads.append(torch.autograd.grad(loss, model.weight)[0])
    assert torch.allclose(torch.stack(grads).mean(0), expected, atol=1e-6)


def test_launch_options_are_removed_from_the_workers_command() -> None:
    argv = ["train", "c.yaml", "--nproc-per-node", "2", "--set", "a=1", "--nnodes=1"]
    argv += ["--rdzv-endpoint", "h:1", "--json", "--dist-timeout", "9"]
    kept = ["train", "c.yaml", "--set", "a=1", "--json", "--dist-timeout", "9"]
    assert worker_args(argv) == kept


def test_torchrun_arguments() -> None:
    single = Launch(2).torchrun_args(["train", "c.yaml"])
    assert single[:4] == ["--nproc-per-node", "2", "--nnodes", "1"]
    assert "127.0.0.1:0" in single  # a free port: parallel runs never collide
    assert single[-4:] == ["--module", "dlcli", "train", "c.yaml"]
    multi = Launch(4, nnodes="2", node_rank=1, rdzv_endpoint="node0:29400").torchrun_args([])
    assert multi[multi.index("--rdzv-endpoint") + 1] == "node0:29400"
    assert multi[multi.index("--rdzv-backend") + 1] == "c10d"
    static = Launch(1, nnodes="2", node_rank=1, master_addr="10.0.0.1").torchrun_args([])
    assert static[static.index("--master-addr") + 1] == "10.0.0.1"
    with pytest.raises(UsageError, match="multi-node run needs --rdzv-endpoint"):
        Launch(2, nnodes="2").torchrun_args([])


def test_launch_options_need_nproc_per_node(tiny_config: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tiny_config), "--nnodes", "2"])
    assert result.exit_code == 2
    assert "--nnodes: only with --nproc-per-node N" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--nproc-per-node", "100000000000000000000000"], "--nproc-per-node"),
        (["--nproc-per-node", "2", "--node-rank", "3"], "--node-rank 3: expected below --nnodes 1"),
        (
            ["--nproc-per-node", "2", "--nnodes", "1:2", "--node-rank", "2"],
            "--node-rank 2: expected below --nnodes 1:2",
        ),
    ],
)
def test_launch_options_out_of_bounds_are_refused_before_launching(
    tiny_config: Path, args: list[str], expected: str
) -> None:
    """--nproc-per-node 10**23 said "launching ... workers" and hung; a node rank beyond the
    nodes trained as if it were node 0's."""
    result = CliRunner().invoke(cli, ["train", str(tiny_config), *args])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "launching" not in result.output


def test_env_world(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_world() is SINGLE
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.env_world() == World(rank=3, size=4, local_rank=1, local_size=2)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match=r"\$RANK: expected an integer"):
        distributed.env_world()


class _Failure:
    """torch's ProcessFailure as far as dlcli reads it (timestamp: whole seconds)."""

    def __init__(self, exitcode: int, pid: int = 1, timestamp: int | None = None) -> None:
        self.exitcode, self.pid, self.timestamp = exitcode, pid, timestamp


def test_the_failure_message_names_the_worker_that_caused_it() -> None:
    # rank 1 was killed (e.g. out of memory); rank 0 then lost contact (exit 3).
    err = failure_error({0: _Failure(3), 1: _Failure(-9)})
    assert err.message.startswith("distributed training failed: worker rank 1 was killed by ")
    assert "SIGKILL" in err.message and "then rank 0 exited with code 3" in err.message
    assert err.exit_code == 3 and err.kind == "training"
    # rank 0 reports a hang (exit 3); the launcher stopped rank 1.
    err = failure_error({0: _Failure(3), 1: _Failure(-15)})
    assert "worker rank 0 exited with code 3 (its error is printed above)" in err.message
    assert "rank 1 was stopped (SIGTERM)" in err.message
    # A gate that failed on every worker: exit 4, with rank 0's document and message.
    rank0 = {"validation": {"accuracy": 0.5}, "error": {"message": "quality gate failed: x"}}
    err = failure_error({0: _Failure(4), 1: _Failure(4)}, rank0)
    assert (err.exit_code, err.kind) == (4, "gate")
    assert err.document == {"validation": {"accuracy": 0.5}}
    assert err.message.endswith("(rank 0: quality gate failed: x)")
    # Ctrl-C: every worker stopped with 130.
    err = failure_error({0: _Failure(130), 1: _Failure(130)})
    assert (err.exit_code, err.kind) == (130, "interrupted")
    assert err.message.startswith("interrupted: every worker stopped")
    # Ctrl-C, and the launcher stopped a worker already on its way out (after the barrier
    # that waits for rank 0's checkpoint): still an interruption.
    err = failure_error({0: _Failure(-15), 1: _Failure(130)})
    assert (err.exit_code, err.kind) == (130, "interrupted")


def test_a_stopped_worker_is_blamed_for_the_hang_not_for_being_out_of_memory() -> None:
    """The failures torch.distributed.run reported (captured from a real run with
    DLCLI_TEST_STOP_RANK=1 and --dist-timeout 3): rank 1 froze (SIGSTOP), rank 0 waited 3 s and
    exited 3; the launcher's SIGTERM could not reach the frozen rank 1, so 30 s later it sent
    SIGKILL. That SIGKILL is the launcher's cleanup, not an out-of-memory kill. (The real run
    takes ~50 s for the launcher's 30 s grace period, too long for the suite.)"""
    captured = {0: _Failure(3, timestamp=1796170153), 1: _Failure(-9, timestamp=1796170183)}
    err = failure_error(captured)
    assert err.message == (
        "distributed training failed: worker rank 0 exited with code 3 (its error is printed "
        "above); then rank 1 did not stop within the launcher's grace period and was killed by "
        "it (SIGKILL): it hung or was stopped (e.g. SIGSTOP); the launcher stopped every worker"
    )
    assert "out of memory" not in err.message
    assert (err.exit_code, err.kind) == (3, "training")
    # Killed from outside first (out of memory), rank 0 lost contact a second later: the kill
    # is still the cause; recorded in the same second, too.
    for later in (1, 0):
        oom = {0: _Failure(3, timestamp=1000 + later), 1: _Failure(-9, timestamp=1000)}
        err = failure_error(oom)
        assert err.message.startswith("distributed training failed: worker rank 1 was killed by")
        assert "e.g. out of memory" in err.message


def test_the_signal_vote_is_read_one_step_late(tmp_path: Path) -> None:
    """In a one-process gloo group: each step returns the previous step's vote."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        vote = distributed.SignalVote(World(rank=0, size=2))
        assert [vote.step(flag) for flag in (False, True, False)] == [False, False, True]
        assert vote.settle() is False and vote.settle() is False
    finally:
        dist.destroy_process_group()


def test_workers_other_than_rank_0_print_only_their_own_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reporter = Reporter(json_mode=True)
    reporter.silence()
    reporter.note("progress")
    reporter.result_line("result")
    reporter.emit_json({"a": 1})
    reporter.error("interrupted", code=130, kind="interrupted")  # rank 0 says it
    reporter.error("rank 1: no data", code=3, kind="data")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == "Error: rank 1: no data"


# --- real workers: gloo on 127.0.0.1 ----------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    if any(key.startswith("DLCLI_TEST_") for key in extra):  # the hooks: worker_hooks/
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HOOKS, env.get("PYTHONPATH")]))
    return {**env, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", **extra}


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    # The timeout bounds a hang: a job that does not end fails the test.
    return subprocess.run(
        args, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=240
    )


def dlcli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "dlcli", *args], **env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_document(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    document = json.loads(proc.stdout)  # exactly one JSON document, whatever the workers did
    assert isinstance(document, dict)
    return document


def single_process(config: Path, output: Path, *args: str) -> dict[str, Any]:
    argv = ["train", str(config), "--output", str(output), "--json", "--quiet", *args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def assert_close(distributed_doc: dict[str, Any], single_doc: dict[str, Any]) -> None:
    for split in ("train", "validation", "test"):
        got, want = distributed_doc[split], single_doc[split]
        assert got["loss"] == pytest.approx(want["loss"], rel=LOSS_REL), split
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=ACCURACY_ABS), split


def test_two_workers_stop_together_resume_under_torchrun_and_match_one_process(
    tiny_config: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "ddp"
    # 1. `dlcli train --nproc-per-node 2` (batch 20: 10 a worker, 15 steps an epoch); rank 1
    #    alone gets a SIGINT after global step 20. The workers vote after each step and all
    #    stop after step 21 (epoch 2, step 6); rank 0 writes the checkpoint.
    proc = dlcli(
        *("train", str(tiny_config), "--nproc-per-node", "2", "--output", str(run_dir)),
        "--json",
        DLCLI_TEST_SIGINT_RANK="1",
        DLCLI_TEST_AT_STEP="20",
    )
    assert proc.returncode == 130, proc.stderr
    error = one_document(proc)["error"]
    assert error["kind"] == "interrupted"
    assert "in epoch 2, after step 6 of 15; checkpoint saved" in error["message"]
    assert proc.stderr.count("Error: training interrupted") == 1  # rank 0 alone says it
    assert proc.stderr.count("Model summary") == 1
    assert "distributed: 2 workers (gloo, timeout 300s); global batch 20, 10 per worker" in (
        proc.stderr
    )
    # 2. The rest, resumed from rank 0's checkpoint by torchrun itself (on a free port).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    train = ["train", str(tiny_config), "--resume", str(run_dir), "--json", "-q"]
    proc = _run([*torchrun, *rendezvous, "-m", "dlcli", *train])
    assert proc.returncode == 0, proc.stderr
    doc = one_document(proc)
    assert doc["resumed_from"]["step_in_epoch"] == 6 and doc["epochs"] == 3
    assert doc["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert_close(doc, single_process(tiny_config, tmp_path / "one"))
    # Epoch 2's train metrics count every worker's first 6 steps (saved with the checkpoint)
    # as well as the 9 after the resume.
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    single = list(csv.DictReader((tmp_path / "one" / "history.csv").open()))
    got, want = history[1], single[1]
    assert float(got["loss"]) == pytest.approx(float(want["loss"]), rel=LOSS_REL)
    assert float(got["accuracy"]) == pytest.approx(float(want["accuracy"]), abs=ACCURACY_ABS)
    # The saved weights are the plain module's, and `dlcli evaluate` scores what rank 0 said.
    assert not [k for k in load_file(str(run_dir / "model.safetensors")) if "module." in k]
    evaluated = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    for split, logs in json.loads(evaluated.stdout)["metrics"].items():
        assert logs["accuracy"] == doc[split]["accuracy"]
        assert logs["loss"] == pytest.approx(doc[split]["loss"], rel=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_two_workers_with_class_weights_match_one_process(
    tiny_config: Path, tmp_path: Path
) -> None:
    # Each worker's weighted mean loss was scaled by its share of the samples, not of the
    # weights: two workers trained another model (train loss 0.0729 against 0.0893).
    weights = ("--set", "training.class_weights=[1, 20, 1, 1]", "--set", "training.epochs=2")
    proc = dlcli(
        *("train", str(tiny_config), "--nproc-per-node", "2", "--output", str(tmp_path / "ddp")),
        *("--json", "--quiet", *weights),
    )
    assert proc.returncode == 0, proc.stderr
    assert_close(one_document(proc), single_process(tiny_config, tmp_path / "one", *weights))


def test_two_workers_with_dropout_resume_to_the_uninterrupted_runs_bytes(
    tiny_config: Path, tmp_path: Path
) -> None:
    # Each worker's dropout stream was seeded once, at the step the fit started from: a run
    # resumed after step 20 drew other masks than the uninterrupted one (other weights).
    layers = (
        "[{type: flatten}, {type: dense, units: 16, activation: relu},"
        " {type: dropout, rate: 0.3}, {type: dense, units: 4}]"
    )
    common = ("--nproc-per-node", "2", "--quiet", "--set", f"model.layers={layers}")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    proc = dlcli("train", str(tiny_config), "--output", str(whole), *common)
    assert proc.returncode == 0, proc.stderr
    proc = dlcli(
        *("train", str(tiny_config), "--output", str(stopped), *common),
        DLCLI_TEST_SIGINT_RANK="1",
        DLCLI_TEST_AT_STEP="20",
    )
    assert proc.returncode == 130, proc.stderr
    proc = dlcli("train", "--resume", str(stopped), "--nproc-per-node", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    weights = [(run / "model.safetensors").read_bytes() for run in (whole, stopped)]
    assert weights[0] == weights[1]


def test_lr_find_under_torchrun_is_refused_before_any_worker_runs_it(
    tiny_config: Path, tmp_path: Path
) -> None:
    """Each worker ran the whole range test: both printed a suggestion and wrote the PNG."""
    png = tmp_path / "figures" / "lr.png"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    lr_find = ["lr-find", str(tiny_config), "--plot", str(png), "--steps", "20"]
    proc = _run([*torchrun, *rendezvous, "-m", "dlcli", *lr_find])
    assert proc.returncode != 0
    for rank in (0, 1):
        assert (
            f"Error: dlcli lr-find runs in one process, but this one was started as worker "
            f"rank {rank} of 2 ($WORLD_SIZE=2, set by torchrun)"
        ) in " ".join(proc.stderr.split())
    assert "suggested" not in proc.stdout + proc.stderr
    assert not png.parent.exists()
    # The exit code each worker gives the launcher: a usage error.
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    result = CliRunner().invoke(cli, ["lr-find", str(tiny_config), "--plot", str(png)], env=env)
    assert result.exit_code == 2 and "worker rank 1 of 2" in result.stderr
    assert "with it unset: `env -u WORLD_SIZE dlcli ...`" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{run}"],
        ["predict", "{run}", "{images}"],
        ["export", "{run}", "--out", "{tmp}/model.onnx"],
        ["plot", "{run}", "--out", "{tmp}/plots"],
        ["runs", "list", "{tmp}"],
        ["config", "validate", "{config}"],
        ["tune", "{config}"],
    ],
    ids=lambda command: " ".join(word for word in command if "{" not in word),
)
def test_commands_other_than_train_refuse_to_run_in_every_worker(
    tiny_run: Path, tiny_config: Path, tmp_path: Path, command: list[str]
) -> None:
    """Under torchrun each worker ran the whole command (printing and writing the same files);
    train alone runs data-parallel."""
    images = tiny_config.parent / "test-images-idx3-ubyte.gz"
    out = tmp_path / "out"  # nothing is written here, or anywhere
    out.mkdir()
    values = {"run": str(tiny_run), "config": str(tiny_config), "tmp": str(out)}
    args = [word.format(images=images, **values) for word in command]
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    name = " ".join(word for word in command if "{" not in word and not word.startswith("-"))
    assert (
        f"dlcli {name} runs in one process, but this one was started as worker rank 1 of 2"
    ) in " ".join(result.stderr.split())
    assert list(out.iterdir()) == []


def test_a_worker_that_dies_ends_the_job(tiny_config: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "dead"
    proc = dlcli(
        *("train", str(tiny_config), "--nproc-per-node", "2", "--output", str(run_dir)),
        "--json",
        DLCLI_TEST_FAIL_RANK="1",  # rank 1 SIGKILLs itself after step 2
    )
    assert proc.returncode == 3
    message = one_document(proc)["error"]["message"]
    assert message.startswith("distributed training failed: worker rank 1 was killed by SIGKILL")
    # Rank 0 either sees the broken connection first or gets the launcher's SIGTERM first (a
    # race a busy machine decides); either way it says which, in one line.
    lost = "worker rank 0 of 2 lost contact with the other workers" in proc.stderr
    stopped = "rank 0: interrupted (SIGTERM): stopped; nothing was left half-written" in proc.stderr
    assert lost or stopped, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "manifest.json").exists()


def test_a_worker_that_hangs_ends_the_job(tiny_config: Path, tmp_path: Path) -> None:
    proc = dlcli(
        *("train", str(tiny_config), "--nproc-per-node", "2", "--dist-timeout", "3"),
        *("--output", str(tmp_path / "hung"), "--quiet"),
        DLCLI_TEST_HANG_RANK="1",  # rank 1 waits forever after step 2
    )
    assert proc.returncode == 3
    assert "worker rank 0 of 2 waited longer than --dist-timeout" in proc.stderr
    assert (
        "distributed training failed: worker rank 0 exited with code 3 (its error is printed "
        "above); then rank 1 did not stop within its grace period" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_seed_model_on_fashion_mnist_two_workers_match_one(tmp_path: Path) -> None:
    """The seed MLP, one epoch on 6,000 real Fashion-MNIST images (global batch 100)."""
    config = ROOT / "configs" / "fashion-mnist-mlp.yaml"
    subset = ("--set", "data.validation_split=0.9", "--set", "training.epochs=1")
    subset += ("--set", f"data.data_dir={ROOT / 'data'}")
    proc = dlcli(
        *("train", str(config), *subset, "--output", str(tmp_path / "two")),
        *("--nproc-per-node", "2", "--json"),
    )
    assert proc.returncode == 0, proc.stderr
    two = one_document(proc)
    one = single_process(config, tmp_path / "one", *subset)
    assert two["dataset"]["train_size"] == one["dataset"]["train_size"] == 6000
    assert_close(two, one)
    assert two["validation"]["accuracy"] > 0.7
