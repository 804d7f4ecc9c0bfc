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
