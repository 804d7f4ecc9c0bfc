"""training.threads / --threads and the OpenMP wait policy (dlcli/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlcli import limits, threads
from dlcli.cli import cli
from dlcli.config import load_config
from dlcli.errors import ConfigError
from dlcli.schema import config_schema

ROOT = Path(__file__).resolve().parent.parent


def test_a_number_is_used_as_is() -> None:
    assert threads.choose(3) == threads.ThreadChoice(3, "training.threads")


def test_auto_honours_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose("auto") == threads.ThreadChoice(2, "OMP_NUM_THREADS")


@pytest.mark.parametrize(
    ("cores", "others", "expected"), [(2, 0, 2), (2, 1, 1), (2, 5, 1), (8, 3, 5)]
)
def test_auto_takes_the_free_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, others: int, expected: int
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "other_runnable", lambda: others)
    choice = threads.choose("auto")
    assert choice.count == expected
    assert choice.reason == f"free cores ({cores} usable, {others} other runnable tasks)"


def test_auto_without_proc_loadavg_uses_every_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "other_runnable", lambda: None)
    assert threads.choose("auto").count == 4


def test_other_runnable_reads_the_fourth_field(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.50 0.90 0.40 3/812 40125\n")
    assert threads.other_runnable(loadavg) == 2  # three runnable, one of them this reader
    loadavg.write_text("garbage")
    assert threads.other_runnable(loadavg) is None
    assert threads.other_runnable(tmp_path / "missing") is None


def test_wait_policy_is_passive_after_a_short_spin_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    threads.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["GOMP_SPINCOUNT"] == threads.SHORT_SPIN
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept whole
    monkeypatch.delenv("GOMP_SPINCOUNT")
    threads.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "100")
    threads.set_wait_policy()
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["GOMP_SPINCOUNT"] == "100"


def test_threads_config_checks(tiny_config: Path) -> None:
    bounds = f"training.threads: expected a number from 1 to {limits.THREADS_MAX}"
    for value, message in (("0", bounds), ("1025", bounds), ("lots", "training.threads")):
        with pytest.raises(ConfigError) as info:
            load_config(tiny_config, [f"training.threads={value}"])
        assert message in str(info.value.details)
    assert load_config(tiny_config, ["training.threads=2"]).training.threads == 2
    assert load_config(tiny_config, ["training.threads=1024"]).training.threads == 1024


@pytest.mark.parametrize("value", ["0", "1025", "-3", "lots"])
def test_the_threads_option_is_bounded(tiny_config: Path, value: str) -> None:
    result = CliRunner().invoke(cli, ["train", str(tiny_config), "--threads", value])
    assert result.exit_code == 2
    assert f"expected auto or a number from 1 to {limits.THREADS_MAX}" in result.output


def test_the_schema_bounds_threads() -> None:
    threads_schema = config_schema()["$defs"]["TrainingConfig"]["properties"]["threads"]
    numbers = [o for o in threads_schema["anyOf"] if o.get("type") == "integer"]
    assert numbers == [{"type": "integer", "minimum": 1, "maximum": limits.THREADS_MAX}]


def test_the_cli_records_threads_and_wait_policy(tiny_config: Path) -> None:
    openmp = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in openmp}
    command = [sys.executable, "-m", "dlcli", "train", str(tiny_config), "--json", "--quiet"]
    done = subprocess.run(
        [*command, "--threads", "1", "--set", "training.epochs=1"],
        cwd=ROOT,
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    recorded = json.loads(done.stdout)["threads"]
    assert recorded == {
        "count": 1,
        "chosen_by": "training.threads",
        "omp_wait_policy": "PASSIVE",
        "gomp_spincount": threads.SHORT_SPIN,
    }
    done = subprocess.run(
        [*command, "--overwrite", "--set", "training.epochs=1"],
        cwd=ROOT,
        env={**env, "NO_COLOR": "1", "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    recorded = json.loads(done.stdout)["threads"]
    assert recorded["chosen_by"].startswith("free cores (")
    assert 1 <= recorded["count"] <= threads.usable_cores()
    assert recorded["omp_wait_policy"] == "ACTIVE" and recorded["gomp_spincount"] == "default"


def test_unicode_digits_are_no_thread_count(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "²" passes str.isdigit() but int() refuses it: a usage error, and an ignored variable."""
    result = CliRunner().invoke(cli, ["train", str(tiny_config), "--threads", "²"])
    assert result.exit_code == 2, result.output
    assert "expected auto or a number" in result.output
    monkeypatch.setenv("OMP_NUM_THREADS", "²")
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    monkeypatch.setattr(threads, "other_runnable", lambda: 0)
    assert threads.choose("auto").count == 3


def test_others_beside_us_leaves_out_this_process_threads(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.10 2.90 2.00 5/812 40125\n")
    tasks = tmp_path / "task"
    for tid, state in (("11", "R"), ("12", "R"), ("13", "S")):
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "stat").write_text(f"{tid} (pt_main) thread) {state} 1 2 3\n")
    assert threads.others_beside_us(loadavg, tasks) == 3  # five runnable, two of them ours
    (tasks / "12" / "stat").write_text("12 (x) S 1\n")
    assert threads.others_beside_us(loadavg, tasks) == 4
    (tasks / "11" / "stat").write_text("11 (x) S 1\n")  # the reader counts as ours regardless
    assert threads.others_beside_us(loadavg, tasks) == 4
    assert threads.others_beside_us(tmp_path / "missing", tasks) is None
    assert threads.others_beside_us(loadavg, tmp_path / "no-tasks") is None


class FakeLoad:
    """A clock the test advances, and the other-task counts the follower will read."""

    def __init__(self, counts: list[int | None]) -> None:
        self.now = 0.0
        self.counts = counts
        self.reads = 0

    def clock(self) -> float:
        return self.now

    def others(self) -> int | None:
        self.reads += 1
        return self.counts.pop(0)


def test_the_follower_sets_the_free_cores_from_the_median_of_its_window() -> None:
    load = FakeLoad([1, 1, 0, 1, 0, 0, 0, 0, 5, 5, 5, 5])
    applied: list[int] = []
    choice = threads.ThreadChoice(2, "free cores (2 usable, 0 other runnable tasks)", 2)
    follower = threads.LoadFollower(
        choice, applied.append, others=load.others, clock=load.clock, period=1.0, window=4
    )
    follower.poll(1, 1)  # not due yet: no read
    assert load.reads == 0
    for step in range(2, 6):  # four reads, median 1: one core left free
        load.now += 1.0
        follower.poll(1, step)
        follower.poll(1, step)  # polled again within the period: nothing read
    assert load.reads == 4 and applied == [1] and follower.count == 1
    for step in range(6, 10):  # quiet again: back to both cores
        load.now += 1.0
        follower.poll(2, step)
    assert applied == [1, 2]
    for step in range(10, 14):  # five others: still at least one thread
        load.now += 1.0
        follower.poll(3, step)
    assert applied == [1, 2, 1]
    assert follower.describe() == {
        "followed_load": True,
        "changes": 3,
        "changed_at": [
            {"epoch": 1, "step": 5, "count": 1},
            {"epoch": 2, "step": 9, "count": 2},
            {"epoch": 3, "step": 13, "count": 1},
        ],
        "count_at_end": 1,
    }


def test_the_follower_ignores_unreadable_counts_and_keeps_a_steady_count() -> None:
    load = FakeLoad([None, 0, None, 0, 0, 0])
    applied: list[int] = []
    choice = threads.ThreadChoice(2, "free cores", 2)
    follower = threads.LoadFollower(
        choice, applied.append, others=load.others, clock=load.clock, period=1.0, window=4
    )
    for step in range(6):
        load.now += 1.0
        follower.poll(1, step)
    assert applied == [] and follower.changes == 0


@pytest.mark.parametrize(
    ("choice", "follows"),
    [
        (threads.ThreadChoice(2, "training.threads"), False),
        (threads.ThreadChoice(2, "OMP_NUM_THREADS"), False),
        (threads.ThreadChoice(1, "free cores (1 usable, 0 other runnable tasks)", 1), False),
        (threads.ThreadChoice(1, "free cores (2 usable, 3 other runnable tasks)", 2), True),
    ],
)
def test_only_auto_from_the_free_cores_follows_the_load(
    choice: threads.ThreadChoice, follows: bool
) -> None:
    assert choice.follows_load is follows


def test_auto_gives_the_usable_cores_to_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "other_runnable", lambda: 1)
    assert threads.choose("auto").cores == 4 and threads.choose("auto").follows_load
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert not threads.choose("auto").follows_load


def test_training_follows_a_machine_that_gets_busy(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """A run started on two free cores drops to one when another task keeps one busy, and
    metrics.json says when; torch computes on the count the follower set."""
    import functools

    import torch

    from dlcli import callbacks

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "other_runnable", lambda: 0)
    busy = functools.partial(threads.LoadFollower, others=lambda: 1, period=0.0, window=2)
    monkeypatch.setattr(callbacks, "LoadFollower", busy)
    result = CliRunner().invoke(
        cli, ["train", str(tiny_config), "--json", "--quiet", "--set", "training.epochs=1"]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.stdout)["threads"]
    assert recorded["count"] == 2 and recorded["chosen_by"].startswith("free cores (2 usable")
    assert recorded["followed_load"] is True and recorded["changes"] == 1
    assert recorded["changed_at"] == [{"epoch": 1, "step": 2, "count": 1}]
    assert recorded["count_at_end"] == 1 and torch.get_num_threads() == 1
    shown = CliRunner().invoke(
        cli, ["train", str(tiny_config), "--overwrite", "--set", "training.epochs=1"]
    )
    assert shown.exit_code == 0, shown.output
    assert "threads followed the free cores: 2 at the start, 1 change, 1 at the end" in " ".join(
        shown.stderr.split()
    )
    pinned = CliRunner().invoke(
        cli,
        ["train", str(tiny_config), "--json", "--quiet", "--overwrite", "--threads", "2"],
    )
    assert pinned.exit_code == 0, pinned.output
    assert "followed_load" not in json.loads(pinned.stdout)["threads"]
