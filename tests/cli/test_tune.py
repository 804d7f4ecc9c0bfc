"""dlcli tune in one process (CliRunner): trials as run dirs, results, best.yaml, plots, gates,
pruning, reruns, and the messages for what cannot work."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cli_process import dlcli
from click.testing import CliRunner, Result
from image_trees import write_resized_config

from dlcli.cli import cli

optuna = pytest.importorskip("optuna")  # the tune extra; make setup installs it

SPACE = {
    "training.optimizer.learning_rate": {"float": [1e-3, 5e-2], "log": True},
    "model.layers[1].units": {"int": [4, 32]},
    "training.optimizer.name": {"choice": ["adam", "sgd"]},
}


SPACE_LR = SPACE["training.optimizer.learning_rate"]


def tune_config(tiny_config: Path, **tune: Any) -> Path:
    raw = yaml.safe_load(tiny_config.read_text())
    raw["training"]["epochs"] = 2
    raw["tune"] = {"trials": 3, "startup_trials": 1, "space": SPACE, **tune}
    tiny_config.write_text(yaml.safe_dump(raw))
    return tiny_config


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["tune", *args])


def doc(result: Result) -> dict[str, Any]:
    assert result.stdout, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_a_study_runs_its_trials_as_run_dirs_and_reports_the_best(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = tune_config(tiny_config)
    out = tmp_path / "study"
    result = invoke(str(config), "--output", str(out), "--json", "--heartbeat", "1")
    assert result.exit_code == 0, result.output
    document = doc(result)
    assert document["metric"] == "val_accuracy" and document["direction"] == "maximize"
    trials = document["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2]
    assert {t["state"] for t in trials} <= {"complete", "pruned"}
    values = [t["value"] for t in trials if t["state"] == "complete"]
    assert values == sorted(values, reverse=True)  # best first
    best = document["best"]
    assert best == trials[0] and best["run_dir"] == str(out / f"trial-{best['number']:04d}")
    for trial in trials:  # each an ordinary, verified run dir
        run_dir = Path(trial["run_dir"])
        assert (run_dir / "manifest.json").is_file()
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["tune"] is None
        assert saved["model"]["layers"][1]["units"] == trial["params"]["model.layers[1].units"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert trial["epochs"] == metrics["epochs"]
    assert {Path(p).name for p in document["plots"]} >= {"history.png", "slice.png"}
    assert all(Path(p).stat().st_size > 1000 for p in document["plots"])
    evaluated = CliRunner().invoke(cli, ["evaluate", best["run_dir"], "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output

    # best.yaml: the best trial's config, no tune section, and it retrains as is.
    best_yaml = Path(document["best_config"])
    assert best_yaml == out / "best.yaml"
    raw = yaml.safe_load(best_yaml.read_text())
    assert "tune" not in raw and raw["output"]["dir"] == str(out / "best")
    lr = best["params"]["training.optimizer.learning_rate"]
    assert raw["training"]["optimizer"]["learning_rate"] == lr
    retrained = CliRunner().invoke(cli, ["train", str(best_yaml), "--json", "--quiet"])
    assert retrained.exit_code == 0, retrained.output
    again = json.loads(retrained.stdout)["validation"]["accuracy"]
    assert again == pytest.approx(best["value"])  # the same seed, the same run

    # --show reads the study back; a rerun with more trials continues it.
    shown = invoke(str(out), "--show", "--json")
    assert shown.exit_code == 0, shown.output
    assert doc(shown)["trials"] == trials
    more = invoke(str(config), "--output", str(out), "--trials", "5", "--json")
    assert more.exit_code == 0, more.output
    assert sorted(t["number"] for t in doc(more)["trials"]) == [0, 1, 2, 3, 4]
    table = invoke(str(out), "--show")
    assert "Study tiny (maximize val_accuracy)" in table.stdout
    assert "best trial" in table.stdout and "dlcli train" in table.stdout


def test_the_pruner_stops_a_trial_which_is_recorded_with_its_last_epoch(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tune_config(tiny_config, trials=2, space={"training.seed": {"int": [0, 9]}})
    monkeypatch.setattr(
        optuna.pruners.MedianPruner, "prune", lambda self, study, trial: trial.number == 1
    )
    out = tmp_path / "study"
    result = invoke(str(config), "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    trials = {t["number"]: t for t in doc(result)["trials"]}
    assert trials[0]["state"] == "complete" and trials[0]["epochs"] == 2
    assert trials[1]["state"] == "pruned" and trials[1]["epochs"] == 1
    assert trials[1]["value"] is not None
    history = (out / "trial-0001" / "history.csv").read_text().splitlines()
    assert len(history) == 2  # the header and the one epoch it ran
    # The run dirs say so themselves (they looked like runs that had finished): which trial of
    # which study each is, and after which epoch the pruner stopped it.
    for number, pruned in ((0, None), (1, 1)):
        metrics = json.loads((out / f"trial-000{number}" / "metrics.json").read_text())
        assert metrics["tune"] == {"study": "tiny", "trial": number, "pruned_after_epoch": pruned}


def test_gates_apply_to_the_best_trial(tiny_config: Path, tmp_path: Path) -> None:
    config = tune_config(tiny_config, trials=2)
    out = tmp_path / "study"
    failed = invoke(str(config), "--output", str(out), "--min", "accuracy=1.01", "--json")
    assert failed.exit_code == 4, failed.output
    document = doc(failed)
    assert document["error"]["kind"] == "gate" and document["best"] is not None
    passed = invoke(str(out), "--show", "--min", "test.accuracy=0", "--max", "loss=100")
    assert passed.exit_code == 0, passed.output
    unknown = invoke(str(config), "--output", str(out), "--min", "acuracy=0.5")
    assert unknown.exit_code == 2 and "did you mean 'accuracy'" in unknown.output


def test_tune_under_torchrun_is_refused(tiny_config: Path, tmp_path: Path) -> None:
    """Every worker ran the study, and each trial tried to join the other workers' trials as
    a data-parallel run (300 s of waiting, then a failed trial)."""
    config, out = tune_config(tiny_config), tmp_path / "study"
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    result = CliRunner().invoke(cli, ["tune", str(config), "--output", str(out)], env=env)
    assert result.exit_code == 2, result.output
    assert "dlcli tune runs in one process, but this one was started as worker rank 1 of 2" in (
        " ".join(result.stderr.split())
    )
    assert not out.exists()


def test_trials_read_own_images_at_the_models_input_size(tmp_path: Path) -> None:
    """The study read class-folder images at their own size (8×8), and every trial of a model
    that takes them at 4×4 failed, for a config train trains."""
    config = write_resized_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["tune"] = {"trials": 1, "space": {"training.optimizer.learning_rate": SPACE_LR}}
    config.write_text(yaml.safe_dump(raw))
    result = invoke(str(config), "--output", str(tmp_path / "study"), "--json")
    assert result.exit_code == 0, result.output
    assert [t["state"] for t in doc(result)["trials"]] == ["complete"]


def test_a_config_without_a_tune_section_is_refused(tiny_config: Path) -> None:
    result = invoke(str(tiny_config))
    assert result.exit_code == 2
    assert "no tune: section" in result.output


def test_a_bad_space_fails_before_any_trial(tiny_config: Path, tmp_path: Path) -> None:
    config = tune_config(tiny_config, space={"model.layers[1].unit": {"int": [4, 8]}})
    out = tmp_path / "study"
    result = invoke(str(config), "--output", str(out))
    assert result.exit_code == 2
    assert "did you mean 'units'?" in result.output
    assert not out.exists()


def test_a_directory_that_is_not_a_study_is_refused(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(str(tune_config(tiny_config)), "--output", str(out))
    assert result.exit_code == 3
    assert "is not a dlcli tune directory" in result.output
    assert (out / "notes.txt").read_text() == "mine"
    shown = invoke(str(out), "--show")
    assert shown.exit_code == 3 and "no tune.json" in shown.output


# What _worker_main reads of its settings when Worker itself is replaced.
_SETTINGS = SimpleNamespace(storage="sqlite:///unused.db")


def test_a_worker_error_is_shown_a_line_each_with_its_details(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A worker's error reached the parent as one text: its details, joined by line breaks,
    now shown as escapes (a note is one line), or a file name's line break as two lines."""
    from dlcli.cli.tune import _on_event
    from dlcli.errors import ConfigError
    from dlcli.report import Reporter
    from dlcli.tune import _worker_main

    class Events:
        def __init__(self) -> None:
            self.sent: list[dict[str, Any]] = []

        def put(self, event: dict[str, Any]) -> None:
            self.sent.append(event)

    events = Events()
    failing = ConfigError("x.yaml: 2 problems", details=["a\nb.png: bad", "c: bad"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dlcli.tune.Worker", lambda *a: (_ for _ in ()).throw(failing))
        patch.setattr("torch.set_num_threads", lambda n: None)  # this process's count stays
        patch.setattr("os.setpgid", lambda *a: None)  # pytest keeps its process group
        with pytest.raises(SystemExit):
            _worker_main(_SETTINGS, 1, events)  # type: ignore[arg-type]
    _on_event(Reporter(), "val_accuracy", events.sent[0])
    assert capsys.readouterr().err.splitlines() == [
        "worker error: x.yaml: 2 problems",
        "  - a\\nb.png: bad",
        "  - c: bad",
    ]


@pytest.mark.parametrize(("cli", "said"), [(True, "--set"), (False, "overrides")])
def test_a_worker_names_options_as_its_command_does(cli: bool, said: str) -> None:
    """A --workers process is spawned: messages its trials raised named the Python API's
    parameters ("overrides model.layers[9]...") in a command that was given --set."""
    from dlcli.errors import ConfigError, named
    from dlcli.tune import _worker_main

    sent: list[dict[str, Any]] = []

    def worker(*args: Any) -> Any:
        raise ConfigError(f"{named('set')} model.layers[9].units: no item [9]")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("dlcli.tune.Worker", worker)
        patch.setattr("torch.set_num_threads", lambda n: None)  # this process's count stays
        patch.setattr("os.setpgid", lambda *a: None)  # pytest keeps its process group
        with pytest.raises(SystemExit):
            events = type("Events", (), {"put": staticmethod(sent.append)})
            _worker_main(_SETTINGS, 1, events, cli)  # type: ignore[arg-type]
    assert sent[0]["message"] == f"{said} model.layers[9].units: no item [9]"


def test_show_of_a_fifo_or_a_file_answers_at_once(tmp_path: Path) -> None:
    """tune --show DIR with a FIFO at DIR/tune.json blocked for ever (read_text on it), and
    --show AFILE said "AFILE/tune.json: unreadable ([Errno 20] Not a directory...)"."""
    from cli_process import dlcli

    (tmp_path / "study").mkdir()
    os.mkfifo(tmp_path / "study" / "tune.json")
    done = dlcli("tune", "--show", str(tmp_path / "study"), timeout=60)  # a hang fails here
    assert done.returncode == 3
    assert "tune.json: is a FIFO (named pipe), expected a regular tune marker file" in (done.stderr)
    (tmp_path / "afile").write_text("notes")
    shown = invoke("--show", str(tmp_path / "afile"))
    assert shown.exit_code == 3
    assert f"{tmp_path / 'afile'}: is a file, not a dlcli tune directory" in shown.output


def test_another_study_in_the_same_directory_is_refused(tiny_config: Path, tmp_path: Path) -> None:
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    assert invoke(str(config), "--output", str(out)).exit_code == 0
    other = invoke(str(config), "--output", str(out), "--study", "other")
    assert other.exit_code == 2
    assert "belongs to study 'tiny'" in other.output


def test_a_study_continues_only_with_the_config_it_started_with(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    assert invoke(str(config), "-o", str(out), "--set", "training.epochs=2").exit_code == 0
    changed = invoke(
        str(config), "-o", str(out), "--trials", "2", "--set", "training.epochs=3",
        "--set", "training.batch_size=7",
    )  # fmt: skip
    assert changed.exit_code == 2, changed.output
    assert "training.epochs is 2 in the study, 3 given" in changed.output
    assert "training.batch_size is" in changed.output and "Traceback" not in changed.output
    assert not (out / "trial-0001").exists()
    # What tune varies (a space key), the study's length and where it runs may change.
    same = invoke(
        str(config), "-o", str(out), "--trials", "2", "--set", "training.epochs=2",
        "--set", "training.optimizer.learning_rate=0.5", "--set", "model.layers[1].units=99",
        "--set", "training.threads=1", "--set", "tune.trials=9", "--timeout", "600",
    )  # fmt: skip
    assert same.exit_code == 0, same.output
    assert (out / "trial-0001").is_dir()


@pytest.mark.parametrize(
    ("tune", "named"),
    [
        ({"sampler": "random"}, "tune.sampler is 'tpe' in the study, 'random' given"),
        ({"pruner": "none"}, "tune.pruner is 'median' in the study, 'none' given"),
        ({"startup_trials": 3}, "tune.startup_trials is 1 in the study, 3 given"),
        (
            {"space": {**SPACE, "model.layers[1].units": {"int": [4, 64]}}},
            "tune.space.model.layers[1].units.int[1] is 32 in the study, 64 given",
        ),
        (
            {"space": {**SPACE, "training.seed": {"int": [0, 9]}}},
            "tune.space.training.seed is given, not in the study's space",
        ),
        ({"space": {"training.seed": {"int": [0, 9]}}}, "is not in this config"),
    ],
)
def test_a_study_continues_only_with_its_space_sampler_and_pruner(
    tiny_config: Path, tmp_path: Path, tune: dict[str, Any], named: str
) -> None:
    """Trials drawn from another space, or by another sampler or pruner, are not comparable
    with the earlier ones: the rerun is refused (exit 2) naming the key, and runs no trial."""
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    assert invoke(str(config), "-o", str(out)).exit_code == 0
    changed = invoke(str(tune_config(config, trials=2, **tune)), "-o", str(out))
    assert changed.exit_code == 2, changed.output
    assert named in changed.output and "Traceback" not in changed.output
    assert not (out / "trial-0001").exists()


def test_a_study_without_a_recorded_config_continues_and_records_it(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    assert invoke(str(config), "-o", str(out)).exit_code == 0
    storage = f"sqlite:///{out / 'study.db'}"
    optuna.load_study(study_name="tiny", storage=storage).set_user_attr("dlcli.config", None)
    older = invoke(str(config), "-o", str(out), "--trials", "2")  # as before dlcli recorded it
    assert older.exit_code == 0, older.output
    again = invoke(str(config), "-o", str(out), "--trials", "3", "--set", "training.epochs=5")
    assert again.exit_code == 2 and "training.epochs is 2 in the study, 5 given" in again.output


def test_the_timeout_counts_from_the_command_start(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--timeout counts from the command's start, loading the data included (it counted from
    after the data loaded, so a timeout spent loading still started a trial). A timeout spent
    before the first trial is exit 2, saying so, and no trial starts; the study can go on."""
    import time

    from dlcli import pipeline

    loading = pipeline.config_data  # where every command reads a config's data

    def slow_loading(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return loading(*args, **kwargs)

    monkeypatch.setattr(pipeline, "config_data", slow_loading)
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    result = invoke(str(config), "-o", str(out), "--timeout", "0.5")
    assert result.exit_code == 2, result.output
    assert "--timeout 0.5: spent before the first trial could start" in result.output
    assert "no trial was run, 1 wait" in result.output and "Traceback" not in result.output
    assert not list(out.glob("trial-*"))
    monkeypatch.setattr(pipeline, "config_data", loading)
    again = invoke(str(config), "-o", str(out), "--timeout", "600")  # the study goes on
    assert again.exit_code == 0, again.output
    assert (out / "trial-0000").is_dir()


@pytest.mark.parametrize("storage", ["", " "])
def test_an_empty_storage_is_refused(tiny_config: Path, tmp_path: Path, storage: str) -> None:
    # --storage '' silently meant the default DIR/study.db.
    out = tmp_path / "study"
    result = invoke(str(tune_config(tiny_config)), "-o", str(out), "--storage", storage)
    assert result.exit_code == 2
    assert f"'--storage': expected a storage URL, found {storage!r}" in result.output
    assert not out.exists()


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_study_name_is_refused(tiny_config: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "study"
    result = invoke(str(tune_config(tiny_config)), "-o", str(out), "--study", name)
    assert result.exit_code == 2
    assert f"--study: expected a study name, found {name!r}" in result.output
    assert not out.exists()
    shown = invoke(str(tmp_path), "--show", "--study", name)
    assert shown.exit_code == 2 and "--study: expected a study name" in shown.output


def test_a_copied_or_moved_study_folder_is_its_own_study(tiny_config: Path, tmp_path: Path) -> None:
    config = tune_config(tiny_config, trials=1)
    original, copy, moved = tmp_path / "st", tmp_path / "stz", tmp_path / "moved"
    assert invoke(str(config), "-o", str(original)).exit_code == 0
    shutil.copytree(original, copy)
    original.rename(moved)  # the copy must not need the original where it was
    shown = invoke(str(copy), "--show", "--json")
    assert shown.exit_code == 0, shown.output
    document = doc(shown)
    assert [t["run_dir"] for t in document["trials"]] == [str(copy / "trial-0000")]
    assert document["best_config"] == str(copy / "best.yaml")
    assert str(moved) not in (copy / "best.yaml").read_text()
    more = invoke(str(config), "-o", str(copy), "--trials", "2")  # it goes on in the copy
    assert more.exit_code == 0, more.output
    assert (copy / "trial-0001").is_dir() and not (moved / "trial-0001").exists()
    assert (
        len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{moved / 'study.db'}").trials)
        == 1
    )
    shown = invoke(str(moved), "--show", "--json")
    assert shown.exit_code == 0 and [t["number"] for t in doc(shown)["trials"]] == [0]


def test_an_older_tune_json_with_an_absolute_database_still_works_when_copied(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = tune_config(tiny_config, trials=1)
    original, copy = tmp_path / "st", tmp_path / "stz"
    assert invoke(str(config), "-o", str(original)).exit_code == 0
    old = {"study": "tiny", "storage": f"sqlite:///{(original / 'study.db').resolve()}"}
    (original / "tune.json").write_text(json.dumps(old))  # as dlcli wrote it before
    assert invoke(str(original), "--show").exit_code == 0
    assert invoke(str(config), "-o", str(original)).exit_code == 0  # it continues
    shutil.copytree(original, copy)
    # Run dirs recorded as they were then (from the working directory, or absolute) are the
    # copy's own ones of that name.
    from dlcli.tune import run_dir_of

    assert run_dir_of(copy, str(original / "trial-0000")) == copy / "trial-0000"
    assert run_dir_of(copy, str(original / "trial-0009")) == original / "trial-0009"
    shutil.rmtree(original)
    shown = invoke(str(copy), "--show", "--json")
    assert shown.exit_code == 0, shown.output
    assert doc(shown)["trials"][0]["run_dir"] == str(copy / "trial-0000")
    assert invoke(str(config), "-o", str(copy), "--trials", "2").exit_code == 0
    assert (copy / "trial-0001").is_dir() and not original.exists()


def test_without_optuna_tune_says_how_to_install_it(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    result = invoke(str(tune_config(tiny_config)))
    assert result.exit_code == 2
    assert "pip install 'dlcli[tune]'" in result.output


def test_a_storage_that_cannot_be_opened_is_a_usage_error(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = tune_config(tiny_config)
    result = invoke(
        str(config), "--output", str(tmp_path / "s"), "--storage", "nosuchdb://user:pw@host/x"
    )
    assert result.exit_code == 2
    assert "cannot open the study storage" in result.output and "pw" not in result.output
    # The failed start leaves no tune.json claiming the folder for that storage: the corrected
    # command was refused ("belongs to study 'tiny' in nosuchdb://...").
    assert not (tmp_path / "s").exists()
    again = invoke(str(config), "--output", str(tmp_path / "s"), "--trials", "1", "--quiet")
    assert again.exit_code == 0, again.output


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_postgresql_url_without_a_driver_connects_with_the_installed_one(
    tiny_config: Path, tmp_path: Path
) -> None:
    """postgresql://user@host/db, as the README writes it, was 'a database driver is missing'
    under SQLAlchemy 2.1 (its default driver became psycopg; the tune extra installs psycopg2):
    now it reaches the server, here a port nobody listens on."""
    url = f"postgresql://dlcli:pw@127.0.0.1:{closed_port()}/studies"
    result = invoke(
        str(tune_config(tiny_config)), "--output", str(tmp_path / "s"), "--storage", url
    )
    assert result.exit_code == 2, result.output
    assert "driver is missing" not in result.output
    assert "cannot open the study storage" in result.output
    assert "Connection refused" in result.output


def test_a_database_server_that_never_answers_is_given_up_on(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that takes the connection and never answers (a firewall, a stopped VM) held
    dlcli tune for ever; now the connect has CONNECT_TIMEOUT seconds (2 here: libpq's least)."""
    from dlcli import tune

    monkeypatch.setattr(tune, "CONNECT_TIMEOUT", 2, raising=False)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nothing ever reads or answers
    port = silent.getsockname()[1]
    # Without a timeout the test would hang: the silent server goes away after 20 s.
    threading.Timer(20, silent.close).start()
    url = f"postgresql+psycopg2://dlcli:pw@127.0.0.1:{port}/studies"
    started = time.monotonic()
    result = invoke(
        str(tune_config(tiny_config)), "--output", str(tmp_path / "s"), "--storage", url
    )
    assert result.exit_code == 2, result.output
    assert "cannot open the study storage" in result.output and "timeout expired" in result.output
    assert time.monotonic() - started < 15


def test_a_storage_that_fails_mid_study_is_one_message_not_an_internal_error(
    tiny_config: Path, tmp_path: Path
) -> None:
    """A storage that fails while the study runs (a PostgreSQL server stopped, an SQLite file
    made read-only) was 'internal error: StorageInternalError ... This is a bug in dlcli'
    (exit 1). Here the database refuses the first trial's result (a trigger), as a server gone
    between the trial's start and its end would."""
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "s"
    with sqlite3.connect(tmp_path / "study.db") as db:  # the study's tables, then the trigger
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
        db.execute(
            # Not RAISE(): Optuna takes a constraint error for a race it lost, and goes on.
            "CREATE TRIGGER gone BEFORE INSERT ON trial_values "
            "BEGIN SELECT the_server_went_away(); END"
        )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = invoke(str(config), "--output", str(out), "--storage", url, "--json")
    assert result.exit_code == 3, result.output
    error = doc(result)["error"]
    assert error["kind"] == "storage"
    assert error["message"].startswith(f"the study storage {url} failed: ")
    assert "no such function: the_server_went_away" in error["message"]
    assert "the same dlcli tune command continues the study" in error["message"]
    assert (out / "trial-0000" / "metrics.json").is_file()  # the trial's run is whole


def test_a_journal_storage_that_cannot_be_a_journal_is_a_usage_error(
    tiny_config: Path, tmp_path: Path
) -> None:
    """journal:FIFO hung for ever; a file of other text, a folder, a path in no folder and an
    empty path were 'internal error' (exit 1)."""
    config = tune_config(tiny_config)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    cases = [
        (fifo, f"{fifo}: is a FIFO (named pipe), expected a regular journal file"),
        (text, f"--storage journal:{text}: {text} is not an Optuna journal file (its first"),
        (tmp_path, f"{tmp_path}: is a directory, expected a regular journal file"),
        (tmp_path / "no" / "x.log", f"journal:{tmp_path}/no/x.log: no folder {tmp_path}/no to"),
        ("", "--storage journal:PATH: the journal file's path is missing"),
    ]
    for i, (path, message) in enumerate(cases):
        out = str(tmp_path / f"s{i}")
        result = invoke(str(config), "--output", out, "--storage", f"journal:{path}")
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert text.read_text() == "my notes\n"


@pytest.mark.parametrize(
    ("option", "value", "bounds"),
    [("--workers", "99999999", "1<=x<=1024"), ("--heartbeat", "99999999999", "1<=x<=31536000")],
)
def test_worker_counts_and_heartbeats_are_bounded(
    tiny_config: Path, tmp_path: Path, option: str, value: str, bounds: str
) -> None:
    """--workers 99999999 built that many process objects (a gigabyte in seconds, then a
    hang); a heartbeat beyond what time.sleep takes overflowed in a waiting worker."""
    out = tmp_path / "s"
    result = invoke(str(tune_config(tiny_config)), "--output", str(out), option, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': {value} is not in the range {bounds}" in result.output
    assert not out.exists()


def test_a_diverging_trial_fails_and_the_study_goes_on(tiny_config: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(tiny_config.read_text())
    optimizer = {"name": "sgd", "learning_rate": 10, "momentum": 0.99, "weight_decay": 1}
    raw["training"] |= {"loss": "mse", "optimizer": optimizer}  # as steep as the config allows
    tiny_config.write_text(yaml.safe_dump(raw))
    config = tune_config(tiny_config, trials=2, space={"training.seed": {"int": [0, 9]}})
    result = invoke(str(config), "--output", str(tmp_path / "study"), "--json")
    assert result.exit_code == 0, result.output
    document = doc(result)
    assert document["counts"] == {"fail": 2} and document["best"] is None
    assert all("the loss became" in t["error"] for t in document["trials"])
    assert "no trial has completed yet" in result.stderr


def test_a_trial_out_of_memory_fails_with_its_reason_and_the_study_goes_on(
    tiny_config: Path, tmp_path: Path
) -> None:
    """A trial whose parameters need more memory than there is (here 138M weights under
    ulimit -v) stopped the whole study as 'internal error: RuntimeError ... a bug in dlcli',
    and was queued again to fail the same way at every rerun. Now it is a failed trial with
    the allocator's message, like a diverging one, and the next trial runs."""
    config = tune_config(
        tiny_config,
        trials=2,
        sampler="random",
        pruner="none",
        space={"model.layers[1].units": {"choice": [2_000_000]}},
    )
    proc = dlcli("tune", str(config), "--output", str(tmp_path / "s"), "--json", bomb=True)
    document = json.loads(proc.stdout) if proc.returncode == 0 else None
    assert document is not None, proc.stderr
    assert document["counts"] == {"fail": 2}
    for trial in document["trials"]:
        assert "can't allocate memory" in trial["error"], trial
        assert f"trial {trial['number']} fail: " in proc.stderr


def test_a_worker_that_crashes_names_the_trial_and_the_reason(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is not the trial's (a bug, here a KeyError with a bare message) stopped
    the worker saying only "'boom'" (--workers N: "worker error: 'boom'"): which trial, and
    what kind of error, were not said."""
    from dlcli import pipeline

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(pipeline, "train", crash)
    config = tune_config(tiny_config, trials=1)
    result = invoke(str(config), "--output", str(tmp_path / "s"))
    assert result.exit_code == 1, result.output
    assert "trial 0: stopped by KeyError: 'boom'; it is queued again" in result.output


@pytest.mark.parametrize(
    ("sampler", "space"),
    [
        ("random", SPACE),
        ("tpe", {"training.batch_size": {"choice": [20]}}),  # one value: nothing to sample
    ],
)
def test_trials_the_sampler_does_not_list_first_take_their_parameters(
    tiny_config: Path, tmp_path: Path, sampler: str, space: dict[str, Any]
) -> None:
    # A worker claims a queued trial its study had never listed; unless the sampler listed the
    # trials first (TPE drawing from a range does), giving it parameters was 'internal error:
    # KeyError: 1' on the first trial.
    config = tune_config(tiny_config, trials=2, sampler=sampler, space=space)
    result = invoke(str(config), "--output", str(tmp_path / "study"), "--json")
    assert result.exit_code == 0, result.output
    trials = doc(result)["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1]
    assert {t["state"] for t in trials} <= {"complete", "pruned"}


def test_gates_apply_to_the_best_trial_of_a_run_without_test_data(
    tiny_config: Path, tmp_path: Path
) -> None:
    # The best trial's metrics.json has "test": null; the gates crashed on it with 'internal
    # error: AttributeError' (exit 1) after the whole study had run.
    raw = yaml.safe_load(tiny_config.read_text())
    data = raw["data"]
    raw["data"] = {"train": data["train_images"], "validation_split": data["validation_split"]}
    tiny_config.write_text(yaml.safe_dump(raw))
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    passed = invoke(str(config), "--output", str(out), "--min", "accuracy=0", "--json")
    assert passed.exit_code == 0, passed.output
    assert [g["split"] for g in doc(passed)["gates"]] == ["validation"]
    failed = invoke(str(out), "--show", "--min", "accuracy=1.01", "--json")
    assert failed.exit_code == 4, failed.output
    assert doc(failed)["error"]["kind"] == "gate"


def test_a_test_gate_without_test_data_is_refused_before_any_trial(
    tiny_config: Path, tmp_path: Path
) -> None:
    # It ran the whole study, then exited 2 with "the test split was not evaluated (add
    # --split test)", an option tune does not have.
    raw = yaml.safe_load(tiny_config.read_text())
    raw["data"] = {"train": raw["data"]["train_images"]}
    tiny_config.write_text(yaml.safe_dump(raw))
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    result = invoke(str(config), "--output", str(out), "--min", "test.accuracy=0.5", "--json")
    assert result.exit_code == 2, result.output
    message = doc(result)["error"]["message"]
    assert "--min test.accuracy=0.5: no test split: the config gives no test data" in message
    assert not out.exists()


def test_a_storage_that_does_not_open_leaves_no_directory_claiming_it(
    tiny_config: Path, tmp_path: Path
) -> None:
    # The failed attempt wrote tune.json naming the bad storage, so the same --output with the
    # right storage was refused ("belongs to study 'tiny' in nosuchdb://...").
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "runs" / "study"
    bad = invoke(str(config), "--output", str(out), "--storage", "nosuchdb://host/x")
    assert bad.exit_code == 2, bad.output
    assert not (tmp_path / "runs").exists()
    good = invoke(str(config), "--output", str(out))
    assert good.exit_code == 0, good.output
    assert json.loads((out / "tune.json").read_text())["storage"].startswith("sqlite:")


def test_show_never_creates_a_database(tiny_config: Path, tmp_path: Path) -> None:
    # A study directory whose database is gone (tune.json holds its absolute path: a moved or
    # copied directory): --show created an empty study.db there and said "no study 'tiny'".
    config = tune_config(tiny_config, trials=1)
    out = tmp_path / "study"
    assert invoke(str(config), "--output", str(out)).exit_code == 0
    (out / "study.db").unlink()
    shown = invoke(str(out), "--show")
    assert shown.exit_code == 3, shown.output
    assert f"no study database at {(out / 'study.db').resolve()}" in shown.output
    assert not (out / "study.db").exists()
    elsewhere = invoke(str(out), "--show", "--storage", f"sqlite:///{tmp_path / 'other.db'}")
    assert elsewhere.exit_code == 3 and not (tmp_path / "other.db").exists()


def test_two_writers_of_best_yaml_at_once_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tune processes of one study write best.yaml (and tune.json) at once: they wrote
    one shared temporary name, and the second to rename found it gone (FileNotFoundError,
    an internal error). Here the second write happens between the first's write and rename."""
    from dlcli import tune as tuning

    path = tmp_path / "best.yaml"
    write_text = Path.write_text
    calls: list[str] = []

    def write_then_another_writer(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        written = write_text(self, text, *args, **kwargs)
        if not calls:
            calls.append(text)
            tuning._write_atomic(path, "second\n")  # another process meanwhile
        return written

    monkeypatch.setattr(Path, "write_text", write_then_another_writer)
    tuning._write_atomic(path, "first\n")
    assert path.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]


def test_a_trial_whose_worker_dies_resumes_in_its_run_dir_and_is_retried_twice_at_most(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial whose worker stopped beating (SIGKILL, the kernel's OOM killer, a machine lost)
    was queued again with no limit, to start over in a new run dir: one that killed its
    worker every time was retried at every rerun, and the study never ended. Now its copy
    resumes from the trial's checkpoint, in its run dir, and after STALE_RETRIES copies (1
    here) it stays failed, counted as one of the study's trials."""
    from dlcli import tune
    from dlcli.config import load_config

    monkeypatch.setattr(tune, "STALE_RETRIES", 1, raising=False)
    settings = tune.Settings(
        config=load_config(tune_config(tiny_config, trials=1)),
        directory=tmp_path / "s",
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        study="tiny",
        trials=1,
        heartbeat=1,  # stale after 2 s
    )
    handle = tune.open_study(settings, create=True)
    tune.top_up(handle, settings.trials)

    def claim_and_die() -> None:  # a worker claims the trial, then beats no more
        claimed = tune.claim(handle)
        assert claimed is not None
        trial, _ = claimed
        trial.set_user_attr("run_dir", trial.user_attrs.get("dlcli.resume", "trial-0000"))
        time.sleep(3.1)
        tune.fail_stale(handle)

    claim_and_die()
    (waiting,) = handle.trials(optuna.trial.TrialState.WAITING)
    assert waiting.user_attrs["dlcli.resume"] == "trial-0000"  # its run dir, its checkpoint
    claim_and_die()
    assert handle.trials(optuna.trial.TrialState.WAITING) == []
    assert [t.state.name for t in tune.counted(handle)] == ["FAIL"]  # the study is done
    # why it failed: its error stayed null (Optuna fails it) and --show said nothing
    rows = {row["number"]: row for row in tune.summarize(handle, tmp_path / "s")["trials"]}
    assert rows[0]["error"] is None  # retried as trial 1
    assert rows[1]["error"].startswith("its worker stopped (no heartbeat) 2 times")
    tune.prepare_directory(settings)  # its tune.json, which --show reads
    shown = invoke(str(tmp_path / "s"), "--show")
    assert "trial 1 failed: its worker stopped (no heartbeat) 2 times" in shown.output
