"""Many processes, one study: real `dlcli tune` subprocesses sharing a storage (SQLite, and a
PostgreSQL server these tests start), a worker killed with SIGKILL mid-trial, Ctrl-C and a
rerun that resumes, and --workers N.

The PostgreSQL tests need the server's binaries (Debian: postgresql-15, which .ci/run
installs). Missing, they fail under CI=true and are skipped, saying why, elsewhere.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_process import dlcli_signalled

optuna = pytest.importorskip("optuna")  # the tune extra; make setup installs it
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SPACE = {
    "training.optimizer.learning_rate": {"float": [1e-3, 5e-2], "log": True},
    "model.layers[1].units": {"int": [4, 32]},
}


def tune_config(tiny_config: Path, *, trials: int, epochs: int) -> Path:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["training"]["epochs"] = epochs
    raw["tune"] = {"trials": trials, "pruner": "none", "space": SPACE}
    tiny_config.write_text(yaml.safe_dump(raw))
    return tiny_config


def start(config: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dlcli", "tune", str(config), "--output", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def study_trials(storage: str, name: str) -> list[Any]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return []
    return list(study.get_trials(deepcopy=False))


def running(storage: str, name: str) -> int:
    return sum(t.state.name == "RUNNING" for t in study_trials(storage, name))


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def check_killed_worker_study(tiny_config: Path, tmp_path: Path, storage: str) -> None:
    """Two processes share a study; one is SIGKILLed mid-trial. The study still ends with N
    counted trials, exactly one failed, and its retry (same parameters) completed.

    The second worker starts once the first is inside a trial and has been killed there: had
    both started together, a busy machine could let one of them run every trial before the
    other began one (seen in CI), and there would be no moment with both mid-trial."""
    trials = 4
    # Trials of several seconds: the kill must land inside one, not between two.
    config = tune_config(tiny_config, trials=trials, epochs=150)
    args = ("--storage", storage, "--study", "shared", "--heartbeat", "1", "--quiet")
    first = start(config, tmp_path / "a", *args)
    try:
        wait_for("the first worker's trial", lambda: running(storage, "shared") >= 1)
    finally:
        first.send_signal(signal.SIGKILL)  # mid-trial: no checkpoint hook, no goodbye
    first.wait(timeout=30)
    assert running(storage, "shared") == 1  # left RUNNING: only its heartbeat stops
    second = start(config, tmp_path / "b", *args, "--json")
    code, stdout, stderr = finish(second)
    assert code == 0, stderr
    everything = study_trials(storage, "shared")
    states = sorted(t.state.name for t in everything)
    assert states == ["COMPLETE"] * trials + ["FAIL"], states
    (failed,) = [t for t in everything if t.state.name == "FAIL"]
    retries = [
        t
        for t in everything
        if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed.number
    ]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert failed.params.items() <= retries[0].params.items()  # killed mid-sampling: fewer
    document = json.loads(stdout)
    assert document["counts"] == {"complete": trials, "fail": 1}
    assert [t["retry_of"] for t in document["trials"]].count(failed.number) == 1


def test_a_worker_killed_mid_trial_is_retried_sqlite(tiny_config: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    check_killed_worker_study(tiny_config, tmp_path, storage)


def test_a_worker_killed_mid_trial_is_retried_postgresql(
    tiny_config: Path, tmp_path: Path, postgres_url: str
) -> None:
    check_killed_worker_study(tiny_config, tmp_path, postgres_url)


def test_ctrl_c_stops_after_a_checkpoint_and_a_rerun_resumes_the_trial(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = tune_config(tiny_config, trials=1, epochs=150)
    out = tmp_path / "study"
    process = start(config, out, "--heartbeat", "1")
    checkpoint = out / "trial-0000" / "checkpoints" / "last" / "manifest.json"
    wait_for("the trial's first checkpoint", checkpoint.exists)
    process.send_signal(signal.SIGINT)
    code, _, stderr = finish(process)
    assert code == 130, stderr
    assert "interrupted" in stderr and "queued again" in stderr
    # Not "Continue with: dlcli train --resume trial-0000", which finishes the trial outside
    # the study: the study is continued by the same command.
    assert "Continue with: the same dlcli tune command" in stderr
    assert "dlcli train --resume" not in stderr
    assert not (out / "trial-0000" / "manifest.json").exists()  # not a finished run yet

    code, stdout, stderr = finish(start(config, out, "--json", "--quiet"))
    assert code == 0, stderr
    trials = {t["number"]: t for t in json.loads(stdout)["trials"]}
    assert trials[0]["state"] == "fail" and trials[0]["interrupted"]
    assert trials[1]["state"] == "complete" and trials[1]["retry_of"] == 0
    assert trials[1]["run_dir"] == str(out / "trial-0000")  # resumed in place
    metrics = json.loads((out / "trial-0000" / "metrics.json").read_text())
    assert metrics["resumed_from"]["epoch"] >= 1 and metrics["epochs"] == 150


def test_a_signal_while_a_trial_is_prepared_stops_it_before_it_trains(
    tiny_config: Path, tmp_path: Path
) -> None:
    """SIGTERM while a trial was being prepared (its parameters drawn, its model built) was
    taken by the worker and forgotten by the trial's training, which ran to its end (hours, in
    a real sweep) before the study stopped. Now the trial stops before its first step, and is
    queued again like any interrupted trial."""
    config = tune_config(tiny_config, trials=2, epochs=2)
    out = tmp_path / "study"
    args = ("tune", str(config), "--output", str(out), "--heartbeat", "1")
    proc = dlcli_signalled("dlcli.pipeline:prepare", "SIGTERM", *args)
    assert proc.returncode == 130, proc.stderr
    assert "training interrupted (SIGTERM) in epoch 1, after step 0" in proc.stderr
    assert "Continue with: the same dlcli tune command" in proc.stderr
    trials = study_trials(f"sqlite:///{out / 'study.db'}", "tiny")
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "FAIL", 1: "WAITING", 2: "WAITING"}, states
    assert trials[0].user_attrs["interrupted"] is True
    assert not (out / "trial-0000" / "metrics.json").exists()  # it did not train


def test_a_signal_to_the_command_alone_stops_its_workers(tiny_config: Path, tmp_path: Path) -> None:
    """`kill PID` (SIGTERM to the dlcli tune process only, as a scheduler sends it) said
    'interrupted (SIGTERM): stopped', then waited while the --workers ran the whole study.
    Now the command passes the signal on: each worker stops after its trial's checkpoint, and
    the trials are queued again."""
    config = tune_config(tiny_config, trials=2, epochs=150)
    out = tmp_path / "study"
    process = start(config, out, "--workers", "2", "--heartbeat", "1")
    storage = f"sqlite:///{out / 'study.db'}"
    checkpoint = out / "trial-0000" / "checkpoints" / "last" / "manifest.json"
    wait_for("the first trial's checkpoint", checkpoint.exists)
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process)
    assert code == 130, stderr
    assert "interrupted (SIGTERM): every worker stopped after its trial's checkpoint" in stderr
    assert "Continue with: the same dlcli tune command" in stderr
    trials = study_trials(storage, "tiny")
    assert "COMPLETE" not in {t.state.name for t in trials}, [t.state.name for t in trials]
    assert any(t.user_attrs.get("interrupted") for t in trials)


def test_workers_share_the_study_in_one_command(tiny_config: Path, tmp_path: Path) -> None:
    config = tune_config(tiny_config, trials=4, epochs=2)
    out = tmp_path / "study"
    code, stdout, stderr = finish(start(config, out, "--workers", "2", "--json"))
    assert code == 0, stderr
    document = json.loads(stdout)
    assert sorted(t["number"] for t in document["trials"]) == [0, 1, 2, 3]
    assert document["counts"] == {"complete": 4}
    assert stderr.count(" complete: val_accuracy ") == 4  # each worker's lines, via the parent
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-000{i}" for i in range(4)]


# A process that claims trials as fast as it can from the given second on, and prints them.
CLAIMER = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from dlcli import tune
handle = tune.open_existing(Path("."), sys.argv[1], "race")
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.time() < start:
    pass
claimed = []
while (taken := tune.claim(handle)) is not None:
    claimed.append(taken[0].number)
print(json.dumps(claimed))
"""


def racing(script: str, storage: str, cwd: Path, processes: int) -> list[str]:
    """Run ``script`` in ``processes`` Python processes that start its work at one instant
    (its argv: the storage; it prints ``ready`` once it has imported dlcli and opened the
    study, then reads the start time from stdin); their outputs, once all exited 0."""
    running = [
        subprocess.Popen(
            [sys.executable, "-c", script, storage],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    deadline = time.monotonic() + 240
    for process in running:
        assert process.stdout is not None
        ready = select.select([process.stdout], [], [], max(0, deadline - time.monotonic()))[0]
        if not ready or process.stdout.readline() != "ready\n":
            for other in running:
                other.kill()
            raise AssertionError(f"a racer did not get ready: {process.communicate()[1]}")
    # Every process waits on its stdin with the study open: all start at one instant.
    start = f"{time.time() + 0.2}\n"
    for process in running:
        assert process.stdin is not None
        process.stdin.write(start)
        process.stdin.flush()
    outputs = []
    for process in running:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        outputs.append(stdout)
    return outputs


def check_racing_claims(storage: str, tmp_path: Path, processes: int = 4, trials: int = 40) -> None:
    """Processes that claim queued trials at the same instant each get different ones, and
    between them all of them."""
    backend: Any = storage
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        backend = optuna.storages.JournalStorage(JournalFileBackend(storage[len("journal:") :]))
    study = optuna.create_study(study_name="race", storage=backend)
    for _ in range(trials):
        study.enqueue_trial({})
    claimed = [n for out in racing(CLAIMER, storage, tmp_path, processes) for n in json.loads(out)]
    assert sorted(claimed) == list(range(trials))  # no trial twice, none left behind


def test_racing_processes_never_claim_one_trial_twice_sqlite(tmp_path: Path) -> None:
    # SQLite ignores SELECT ... FOR UPDATE: without dlcli's claim lock, four processes took
    # 65-75 claims of these 60 trials in every run.
    check_racing_claims(f"sqlite:///{tmp_path / 'race.db'}", tmp_path, trials=60)


def test_racing_processes_never_claim_one_trial_twice_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    check_racing_claims(postgres_url, tmp_path)


def test_racing_processes_never_claim_one_trial_twice_journal(tmp_path: Path) -> None:
    check_racing_claims(f"journal:{tmp_path / 'race.log'}", tmp_path)


TOPPER = """
import sys, time, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from dlcli import tune
handle = tune.open_existing(Path("."), sys.argv[1], "race")
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.time() < start:
    pass
print(tune.top_up(handle, 6))
"""


def test_processes_continuing_a_finished_study_together_queue_its_trials_once(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=storage)
    study.set_user_attr("dlcli.trials", 2)
    for value in (0.5, 0.7):  # the study as a finished run of 2 trials leaves it
        study.tell(study.ask(), value)
    queued = [int(out) for out in racing(TOPPER, storage, tmp_path, 3)]
    assert sorted(queued) == [0, 0, 4]
    states = [t.state.name for t in study.get_trials()]
    assert states.count("WAITING") == 4 and len(states) == 6


# --- a PostgreSQL server for the tests ---------------------------------------------------------


def postgres_binaries() -> Path | None:
    """The directory of initdb/pg_ctl: on the PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory on a free 127.0.0.1 port, stopped and
    removed afterwards. As root (CI), the server runs as the postgres user, as it must."""
    bindir = postgres_binaries()
    if bindir is None:
        message = "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql-15"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="dlcli-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        shutil.chown(root, user=user)
        prefix = ["runuser", "-u", user, "--"]
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run(  # noqa: E731
        [*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120
    )
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "dlcli", "--auth=trust", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = str(bindir / "pg_ctl")
        run(pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start")
        yield f"postgresql+psycopg2://dlcli@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as err:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {err.stderr}\n{log}")
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
