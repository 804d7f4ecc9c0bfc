"""``dlcli tune``: a hyper-parameter study over a config's ``tune.space``, on Optuna.

The study lives in a storage Optuna shares between processes and machines (``DIR/study.db``,
SQLite, unless ``--storage`` names another: any SQLAlchemy URL, or an Optuna journal file).
How a study is run, step by step:

1. **Slots.** The study holds exactly ``tune.trials`` trials that count: when it is created,
   that many empty *waiting* trials are queued (a rerun with a larger number queues the rest).
   A worker *claims* a waiting trial atomically (its state goes from WAITING to RUNNING in one
   database update; on SQLite, which does not lock the row, under an OS lock beside the file),
   so no trial runs twice and no worker overshoots the number, however many processes share
   the study.
2. **A trial** draws its parameters from the sampler (TPE by default), becomes an ordinary run
   directory ``DIR/trial-0007/`` trained by :func:`dlcli.pipeline.train` (the data loaded once
   per process), and reports its metric every epoch, so the pruner can stop it early (it is
   then saved as it is and recorded as pruned, with its last epoch).
3. **Heartbeats.** While a trial runs, its worker records a heartbeat every ``heartbeat``
   seconds (RDB storages). A trial whose worker stopped beating for twice that (killed,
   machine lost) is marked failed by whichever worker looks next, and a copy with the same
   parameters is queued (:func:`retry_stale`), which resumes from its checkpoint: the study
   still ends with its number of trials. Idle workers wait for such trials before they leave.
4. **Ctrl-C** stops the trial under way after its checkpoint; the trial is recorded as failed
   and queued again, and the retry resumes from that checkpoint, so running the same command
   again continues the study to its number of trials.

Results (:func:`summarize`): the trials sorted by the metric, the best one, ``DIR/best.yaml``
(its full config without ``tune:``, which ``dlcli train`` retrains as is) and Optuna's
matplotlib plots in ``DIR/plots/``. Nothing here prints: progress goes to an ``on_event``
callable as plain dicts.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlcli import signals, untrusted
from dlcli.atomic import temp_sibling
from dlcli.callbacks import Reporting
from dlcli.config import (
    PLACEMENT_KEYS,
    Config,
    SearchParam,
    TuneConfig,
    config_differences,
    key_parts,
    metric_mode,
    parse_config,
    read_yaml,
    search_params,
    set_key,
    short_key,
    to_dict,
)
from dlcli.errors import (
    ConfigError,
    DlcliError,
    Interrupted,
    ModelDirError,
    StorageError,
    TrainingError,
    UsageError,
    command_line,
    on_command_line,
)
from dlcli.hooks import Logs, Loop
from dlcli.untrusted import open_regular, shorten

if TYPE_CHECKING:
    import optuna

    from dlcli.data.dataset import Dataset

# How a study stopped by Ctrl-C continues (the interrupted trial is queued again).
CONTINUE_STUDY = "the same dlcli tune command (the study goes on, this trial from its checkpoint)"
STUDY_FILE = "study.db"
MARKER = "tune.json"  # what a tune directory holds: the study's storage and name
BEST_CONFIG = "best.yaml"
PLOTS = "plots"
Event = dict[str, Any]


def require_optuna() -> Any:
    """Optuna, or a usage error (exit 2) saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UsageError(
            "dlcli tune needs the tune extra (missing: optuna): pip install 'dlcli[tune]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def metric_direction(metric: str) -> str:
    """``maximize`` or ``minimize``: the one place a study's direction comes from."""
    return "maximize" if metric_mode(metric, "auto") == "max" else "minimize"


def trial_dir(directory: Path, number: int) -> Path:
    return directory / f"trial-{number:04d}"


# --- the study -------------------------------------------------------------------------------


@dataclass
class Settings:
    """What one ``dlcli tune`` process was asked to do (picklable: workers get a copy)."""

    config: Config  # with its tune section
    directory: Path
    storage: str  # an SQLAlchemy URL or journal:PATH
    study: str
    trials: int
    timeout: float | None = None  # no trial starts later than this after `started`
    workers: int = 1
    heartbeat: int = 10  # seconds between heartbeats; a trial is stale after twice that
    # When the command started (time.monotonic(): the machine's clock since boot, the same in
    # the worker processes), what --timeout counts from: loading the data is part of it.
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.started + self.timeout

    @property
    def tune(self) -> TuneConfig:
        assert self.config.tune is not None
        return self.config.tune

    @property
    def params(self) -> list[SearchParam]:
        return search_params(self.tune.space)[0]


@dataclass
class Study:
    """An Optuna study and the raw storage under it (for claiming trials and heartbeats)."""

    study: optuna.Study
    storage: Any
    study_id: int
    heartbeats: bool  # the storage records heartbeats (RDB storages do, journal files not)
    created: bool = False  # this process created the study
    lock: Path | None = None  # see claim_lock

    def trials(self, *states: Any) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)


def default_storage(directory: Path) -> str:
    return f"sqlite:///{(directory / STUDY_FILE).resolve()}"


def _storage(optuna: Any, url: str, heartbeat: int) -> tuple[Any, bool]:
    """The storage a URL names: ``journal:PATH`` (a journal file) or an SQLAlchemy URL."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:")
        if not path:
            raise UsageError("--storage journal:PATH: the journal file's path is missing")
        if os.path.lexists(path):
            _check_journal(url, path)
        elif not os.path.isdir(os.path.dirname(path) or "."):
            raise UsageError(f"--storage {url}: no folder {os.path.dirname(path)} to hold it")
        try:
            storage = optuna.storages.JournalStorage(JournalFileBackend(path))
            storage.get_all_studies()  # reads the whole journal
            return storage, False
        except (OSError, ValueError) as err:  # ValueError: a line that is not a journal's JSON
            problem = f"{err.strerror or err}" if isinstance(err, OSError) else str(err)
            raise UsageError(
                f"--storage {url}: cannot read it as an Optuna journal file: {shorten(problem)}"
            ) from None
    try:
        engine_url = _with_installed_driver(url)
        storage = optuna.storages.RDBStorage(
            engine_url,
            engine_kwargs=_engine_options(engine_url),
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=retry_stale,
        )
    except ImportError as err:
        raise UsageError(f"--storage {masked(url)}: a database driver is missing ({err})") from None
    except DlcliError:  # a signal while connecting: interrupted, not a storage that cannot open
        raise
    except Exception as err:  # SQLAlchemy's errors: a bad URL, a server that does not answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(
            f"--storage {masked(url)}: cannot open the study storage: {first}"
        ) from None
    return storage, True


# Seconds a database server has to accept a connection: a server that took the connection and
# never answered (a firewall, a stopped VM, a port forwarded to nothing) held dlcli tune for ever.
CONNECT_TIMEOUT = 10
# The argument that bounds a connect, by SQLAlchemy driver name (the others have none to give).
_CONNECT_TIMEOUT_ARGUMENT = {
    "psycopg2": "connect_timeout",
    "psycopg": "connect_timeout",
    "pymysql": "connect_timeout",
    "mysqldb": "connect_timeout",
    "pg8000": "timeout",
}


def _engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a storage URL: an SQLite file waits up to a minute for its
    lock (several processes share it); a server's connections are checked before use and have
    ``CONNECT_TIMEOUT`` seconds to be made."""
    from sqlalchemy.engine import make_url

    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    argument = _CONNECT_TIMEOUT_ARGUMENT.get(make_url(url).get_driver_name())
    connect = {argument: CONNECT_TIMEOUT} if argument else {}
    return {"pool_pre_ping": True, "connect_args": connect}


def _with_installed_driver(url: str) -> str:
    """A ``postgresql://`` URL without a driver, as the README writes it, connects through
    psycopg2 (the one the tune extra installs) when psycopg is not installed: SQLAlchemy 2.1
    made psycopg its default, so the URL was refused as 'a database driver is missing'."""
    from importlib.util import find_spec

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername != "postgresql" or find_spec("psycopg") or not find_spec("psycopg2"):
        return url
    return str(parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False))


def _check_journal(url: str, path: str) -> None:
    """An existing journal file must be a regular file (a FIFO blocked the journal's reader for
    ever) whose first line is a journal entry: Optuna skips a last line it cannot parse (one
    being written), so a file of other text was read as an empty journal, then appended to."""
    with open_regular(path, UsageError, "journal file") as f:
        first = f.readline(1 << 20)
    if not first.strip():
        return
    try:
        entry = json.loads(first)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "op_code" not in entry:
        raise UsageError(
            f"--storage {url}: {path} is not an Optuna journal file (its first line is not a "
            "journal entry); it is left as it is"
        )


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """The storage's own errors while a study runs (a database server gone, an SQLite file that
    cannot be written) as one StorageError naming the storage (they were 'internal error')."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, SQLAlchemyError) else err
        text = str(cause).strip()
        reason = shorten(text.splitlines()[0] if text else type(cause).__name__)
        raise StorageError(
            f"the study storage {masked(url)} failed: {reason}. The trials it recorded are "
            "kept; once it works again, the same dlcli tune command continues the study"
        ) from None


def masked(url: str) -> str:
    """The URL with its password hidden (it goes into messages and tune.json)."""
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return url


def open_study(settings: Settings, *, create: bool) -> Study:
    """Load the study (``create``: or create it, queueing its slots)."""
    optuna = require_optuna()
    storage, heartbeats = _storage(optuna, settings.storage, settings.heartbeat)
    tune = settings.tune
    direction = metric_direction(tune.metric)
    kwargs = {"study_name": settings.study, "storage": storage}
    kwargs |= {"sampler": _sampler(optuna, tune), "pruner": _pruner(optuna, settings)}
    created = False
    if create:
        try:
            study = optuna.create_study(direction=direction, **kwargs)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**kwargs)
    else:
        try:
            study = optuna.load_study(**kwargs)
        except KeyError:
            raise UsageError(f"no study {settings.study!r} in {masked(settings.storage)}") from None
    if created:
        study.set_user_attr("dlcli.metric", tune.metric)
    found = study.user_attrs.get("dlcli.metric")
    if found != tune.metric:
        raise UsageError(
            f"study {settings.study!r} optimises {found!r}, but the config's tune.metric is "
            f"{tune.metric!r}; name another study with --study"
        )
    _check_same_config(study, settings)
    study_id = storage.get_study_id_from_name(settings.study)
    return Study(study, storage, study_id, heartbeats, created, claim_lock(settings.storage))


CONFIG_ATTR = "dlcli.config"  # the study's config, as its first process resolved it


# The tune key a continued study may change: it only bounds the study's length (as --timeout
# does). The others say how its trials are drawn and pruned, or over what (tune.space): trials
# drawn otherwise would not compare with the earlier ones. (tune.metric has its own check.)
TUNE_CHANGES = ("tune.trials",)


def _check_same_config(study: optuna.Study, settings: Settings) -> None:
    """A study continues with the config it started with: a rerun with other settings would
    mix trials trained differently (and a retried trial would resume its checkpoint under
    them), or drawn from another space, sampler or pruner. What may change: the keys tune
    varies (``tune.space``), ``TUNE_CHANGES``, and where a run runs (``PLACEMENT_KEYS``). A
    study recorded before dlcli kept its config records this one and goes on."""
    current = json.loads(json.dumps(to_dict(settings.config)))  # as the storage gives it back
    recorded = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(recorded, dict):
        study.set_user_attr(CONFIG_ATTR, current)
        return
    spaces = [_space_of(current), _space_of(recorded)]
    varied = {p.path for space in spaces for p in search_params(space)[0]}
    ignore = (*TUNE_CHANGES, "tune.metric", *PLACEMENT_KEYS, *(_canonical(p) for p in varied))
    # tune.space key by key, however a path was spelled, and a key added to it too (for the rest
    # of the config, a key the recorded config lacks is one older than dlcli's key: its default).
    recorded, current = _with_space(recorded, spaces[1]), _with_space(current, spaces[0])
    differences = config_differences(recorded, current, ignore, ("in the study", "given"))
    differences += [
        f"tune.space.{path} is given, not in the study's space"
        for path in spaces[0]
        if path not in spaces[1]
    ]
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ConfigError(
            f"study {settings.study!r} was run with another config: {shown}. A study continues "
            f"with the config it started with (only {', '.join(TUNE_CHANGES)}, the keys "
            f"tune.space varies, and where it runs: {', '.join(PLACEMENT_KEYS)} may change); "
            "tune into another --output (or --study)"
        )


def _space_of(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw config's tune.space, its key paths spelled as config_differences names them."""
    tune = raw.get("tune")
    space = tune.get("space") if isinstance(tune, dict) else None
    return {_canonical(k): v for k, v in space.items()} if isinstance(space, dict) else {}


def _with_space(raw: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    tune = raw.get("tune")
    return {**raw, "tune": {**tune, "space": space}} if isinstance(tune, dict) else raw


def _canonical(path: str) -> str:
    """``model.layers[1].units`` however it was spelled (spaces), as config_differences names it."""
    parts = key_parts(path)
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _sampler(optuna: Any, tune: TuneConfig) -> Any:
    # Unseeded: workers seeded alike would draw the same "random" startup trials.
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler(n_startup_trials=tune.startup_trials)


def _pruner(optuna: Any, settings: Settings) -> Any:
    tune = settings.tune
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    if tune.pruner == "hyperband":
        epochs = settings.config.training.epochs
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, tune.warmup_epochs), max_resource=epochs
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
    )


def counted(handle: Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards the number: all but the failed ones queued again."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    trials = handle.trials()
    retried = {Retry.retried_trial_number(t) for t in trials}
    return [t for t in trials if not (t.state.name == "FAIL" and t.number in retried)]


def top_up(handle: Study, trials: int) -> int:
    """Queue empty trials until ``trials`` count; return how many were queued.

    The process that created the study queues them, then records the number
    (``dlcli.trials``); one joining it first waits for that record, and queues nothing unless
    asked for more trials, or nobody works on the study any more (its creator may have died
    while queueing, or a rerun continues a finished study).
    """
    import optuna

    if not handle.created:
        _wait_for_setup(handle)
    with _taking_turns(handle):  # two processes continuing an idle study: one of them queues
        live = counted(handle)
        active = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
        idle = not any(t.state in active for t in live)
        target = int(handle.study.user_attrs.get("dlcli.trials", 0))
        if target >= trials and not idle:
            return 0
        missing = max(trials - len(live), 0)
        for _ in range(missing):
            handle.study.enqueue_trial({}, user_attrs={"dlcli.slot": True})
        if target < trials:  # after the slots: a process joining now finds them queued
            handle.study.set_user_attr("dlcli.trials", trials)
        return missing


SETUP_WAIT = 30.0  # seconds a joining process waits for the creator to queue the trials


def _wait_for_setup(handle: Study) -> None:
    deadline = time.monotonic() + SETUP_WAIT
    while "dlcli.trials" not in handle.study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)


def claim_lock(url: str) -> Path | None:
    """The file whose OS lock serialises claims on an SQLite study (None: other storages).

    Optuna moves a trial from WAITING to RUNNING with ``SELECT ... FOR UPDATE``, which SQLite
    ignores: two processes can both read WAITING and both claim the trial (Optuna issue #4002;
    four processes claimed 72 of 60 queued trials here). PostgreSQL and MySQL lock the row,
    and journal files take their own lock. So on an SQLite file the processes sharing it take
    turns to claim under an ``flock`` on ``FILE.claims``, beside the database.
    """
    database = sqlite_file(url)
    return None if database is None else Path(f"{database}.claims")


def sqlite_file(url: str) -> Path | None:
    """The database file an SQLite URL names (None: another storage, or one in memory)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None  # in memory: one process alone sees the study
    return Path(database)


@contextlib.contextmanager
def _taking_turns(handle: Study) -> Iterator[None]:
    """Hold the study's claim lock (:func:`claim_lock`) while the block runs, if it has one."""
    if handle.lock is None:
        yield
        return
    import fcntl

    fd = os.open(handle.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a few queries; it dies with its holder
        yield
    finally:
        os.close(fd)


def claim(handle: Study) -> tuple[optuna.Trial, int] | None:
    """Take a waiting trial for this process: the trial and its storage id (None when none is
    left). The WAITING → RUNNING update succeeds in one process only (on SQLite, under
    :func:`claim_lock`), so two workers never get the same trial."""
    with _taking_turns(handle):
        return _claim(handle)


def _claim(handle: Study) -> tuple[optuna.Trial, int] | None:
    import optuna

    storage = handle.storage
    # Listed through the study, not the raw storage: the study caches which trial ids it
    # holds, and a trial it has never listed cannot take parameters (KeyError in Optuna's
    # cache) unless the sampler happened to list the trials first (TPE does; the random
    # sampler and a single-valued space do not).
    for frozen in handle.trials(optuna.trial.TrialState.WAITING):
        trial_id = storage.get_trial_id_from_study_id_trial_number(handle.study_id, frozen.number)
        try:
            if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if handle.heartbeats:
            storage.record_heartbeat(trial_id)
        return optuna.Trial(handle.study, trial_id), trial_id
    return None


STALE_RETRIES = 2  # how often a trial whose worker died is queued again


def retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue again a trial whose worker stopped beating (Optuna calls this once it has failed
    it): the copy resumes from the trial's checkpoint, in its run dir, as an interrupted trial's
    does (it started over in a new one). At most ``STALE_RETRIES`` times: a trial that kills
    its worker every time (the kernel's out-of-memory killer) was queued again at every rerun,
    and the study never ended; it now stays failed, and counts."""
    import copy

    import optuna

    stale = int(trial.user_attrs.get("dlcli.stale", 0)) + 1
    if stale > STALE_RETRIES:
        return
    attrs = {**trial.user_attrs, "dlcli.stale": stale}
    if trial.user_attrs.get("run_dir"):
        attrs["dlcli.resume"] = trial.user_attrs["run_dir"]
    original = copy.copy(trial)
    original.user_attrs = attrs
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, original)


def fail_stale(handle: Study) -> None:
    """Mark failed the running trials whose worker stopped beating, and queue them again (once:
    on SQLite two workers could otherwise both fail a trial and queue two copies)."""
    if handle.heartbeats:
        import optuna

        with _taking_turns(handle):
            optuna.storages.fail_stale_trials(handle.study)


@contextlib.contextmanager
def heartbeat(handle: Study, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the block runs."""
    if not handle.heartbeats:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                handle.storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="dlcli-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- trials ----------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, param: SearchParam) -> Any:
    if param.kind == "choice":
        return trial.suggest_categorical(param.path, list(param.choices))
    if param.kind == "int":
        step = int(param.step or 1)
        return trial.suggest_int(
            param.path, int(param.low), int(param.high), step=step, log=param.log
        )
    return trial.suggest_float(param.path, param.low, param.high, step=param.step, log=param.log)


def trial_config(config: Config, params: dict[str, Any], run_dir: Path) -> Config:
    """The config of one trial: ``config`` with ``params`` set, no tune section, its run dir."""
    raw = to_dict(config)
    raw["tune"] = None
    raw["output"]["dir"] = str(run_dir)
    for path, value in params.items():
        set_key(raw, path, value)
    return parse_config(raw, source=f"the trial config ({run_dir})")


class ReportEpochs(Reporting):
    """Reports the metric to the trial every epoch and stops training (after that epoch) when
    the pruner says so. The run's metrics.json says which trial of which study it is, and
    after which epoch the pruner stopped it (``tune``; null: it was not pruned)."""

    report_key = "tune"

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = history_key(metric)
        self.pruned_at: int | None = None

    def report(self) -> dict[str, Any]:
        study = self.trial.study.study_name
        return {"study": study, "trial": self.trial.number, "pruned_after_epoch": self.pruned_at}

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        value = logs.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.stop_training = True


@dataclass
class Worker:
    """One process's share of a study: claim a trial, train it, tell the study, again."""

    settings: Settings
    on_event: Callable[[Event], None]
    interrupted: str | None = None  # set by a signal between trials (see signals)
    _datasets: dict[str, Dataset] = field(default_factory=dict)

    def run(self) -> None:
        self.dataset(self.settings.config)  # a data problem stops here, before any trial
        handle = open_study(self.settings, create=False)
        deadline = self.settings.deadline
        with signals.stop_on_signals(self) as guard:
            guard.immediate = True  # between trials there is no step to finish
            while deadline is None or time.monotonic() < deadline:
                fail_stale(handle)
                claimed = claim(handle)
                if claimed is None:
                    if not (handle.heartbeats and handle.trials(_running())):
                        return
                    time.sleep(self.settings.heartbeat)  # a running trial may fail and return
                    continue
                guard.immediate = False
                self.run_trial(handle, *claimed)
                guard.immediate = True
                if self.interrupted:
                    raise Interrupted(f"{self.interrupted}: stopped between trials")

    def run_trial(self, handle: Study, trial: optuna.Trial, trial_id: int) -> None:
        from dlcli import checkpoint, pipeline

        settings = self.settings
        params = {p.path: suggest(trial, p) for p in settings.params}
        # A retry of an interrupted trial continues from its checkpoint, in its directory.
        recorded = str(trial.user_attrs.get("dlcli.resume", ""))
        resume_dir = run_dir_of(settings.directory, recorded) if recorded else None
        resume = resume_dir is not None and checkpoint.describe(resume_dir) is not None
        run_dir = (
            resume_dir if resume_dir and resume else trial_dir(settings.directory, trial.number)
        )
        shown = in_folder(settings.directory, run_dir)
        for key, initial in (("run_dir", shown), ("interrupted", False), ("error", None)):
            trial.set_user_attr(key, initial)  # a retry starts with its original's attributes
        started = time.perf_counter()
        self.on_event({"event": "start", "trial": trial.number, "params": params})
        reporter = ReportEpochs(trial, settings.tune.metric)
        state, value, error = "FAIL", None, None
        with heartbeat(handle, trial_id, settings.heartbeat):
            try:
                cfg = trial_config(settings.config, params, run_dir)
                prepared = pipeline.prepare(cfg, resume=resume, dataset=self.dataset(cfg))
                # Not `dlcli train --resume`: that would finish the trial outside the study.
                prepared.continue_with = CONTINUE_STUDY
                result = pipeline.train(prepared, callbacks=[reporter])
                value = final_metric(result.metrics, settings.tune.metric)
                state = "PRUNED" if reporter.pruned_at is not None else "COMPLETE"
                trial.set_user_attr("epochs", int(result.metrics["epochs"]))
            except Interrupted:
                self._requeue(handle, trial, shown, interrupted=True)
                self.on_event({"event": "interrupted", "trial": trial.number})
                raise
            except (TrainingError, ConfigError, ModelDirError, UsageError) as err:
                error = err.message  # a diverged or impossible trial fails; the study goes on
                trial.set_user_attr("error", error)
            except BaseException as err:  # not the trial's fault (a bug, a full disk): again
                self._requeue(handle, trial, shown, interrupted=False)
                text = str(err).strip()
                reason = f"{type(err).__name__}: {shorten(text)}" if text else type(err).__name__
                self.on_event({"event": "crashed", "trial": trial.number, "reason": reason})
                raise
            seconds = time.perf_counter() - started
            trial.set_user_attr("seconds", round(seconds, 3))
            self._tell(handle, trial, state, value)
        self.on_event(
            {
                "event": "end",
                "trial": trial.number,
                "state": state.lower(),
                "value": value,
                "params": params,
                "seconds": seconds,
                "error": error,
            }
        )

    def _tell(self, handle: Study, trial: optuna.Trial, state: str, value: float | None) -> None:
        import optuna

        if state == "COMPLETE" and value is not None and math.isfinite(value):
            handle.study.tell(trial, value)
        elif state == "PRUNED":
            handle.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            handle.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _requeue(
        self, handle: Study, trial: optuna.Trial, run_dir: str, *, interrupted: bool
    ) -> None:
        """Fail the trial and queue a copy, which resumes from its checkpoint (if any)."""
        import optuna

        trial.set_user_attr("dlcli.resume", run_dir)
        trial.set_user_attr("interrupted", interrupted)
        frozen = handle.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(handle.study, frozen)

    def dataset(self, cfg: Config) -> Dataset:
        """The dataset ``cfg.data`` names, loaded once per process."""
        from dlcli.pipeline import config_data

        key = json.dumps([to_dict(cfg.data), cfg.model.input_shape], sort_keys=True)
        if key not in self._datasets:
            self._datasets[key] = config_data(cfg)
        return self._datasets[key]


def _running() -> Any:
    import optuna

    return optuna.trial.TrialState.RUNNING


def history_key(metric: str) -> str:
    """Any spelling of a metric (``validation.accuracy``) → its epoch-log key (``val_accuracy``)."""
    from dlcli import metric_names

    return metric_names.parse(metric).history_key


def final_metric(metrics: dict[str, Any], metric: str) -> float | None:
    """The tuned metric of a finished run: ``val_x`` from its validation metrics, ``x`` from
    its training metrics (the saved model's, after early stopping restored the best)."""
    from dlcli import metric_names

    split, name = metric_names.untag(history_key(metric))
    value = metrics.get(split, {}).get(name)
    return None if value is None else float(value)


# --- running a study -------------------------------------------------------------------------


def prepare_directory(settings: Settings) -> Callable[[], None] | None:
    """Create DIR (or check it is a tune directory) and record the study in DIR/tune.json.
    Returns what undoes that when it was done now (None for a directory that held the study
    already): a study whose storage cannot be opened must not claim DIR for that storage."""
    directory = settings.directory
    marker = directory / MARKER
    if directory.exists() and not directory.is_dir():
        raise ModelDirError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not marker.exists():
        raise ModelDirError(
            f"{directory}: exists and is not a dlcli tune directory (no {MARKER}); "
            "give another --output"
        )
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    record = marker_record(directory, settings.study, settings.storage)
    if marker.exists():
        found = read_marker(directory)
        storage = marker_storage(directory, found)
        if found["study"] != settings.study or not same_storage(storage, settings.storage):
            raise UsageError(
                f"{directory}: belongs to study {found['study']!r} in {masked(storage)}, not "
                f"{settings.study!r} in {masked(settings.storage)}; give the same --storage and "
                "--study, or another --output"
            )
        return None
    _write_atomic(marker, json.dumps(record, indent=2) + "\n")

    def undo() -> None:
        marker.unlink(missing_ok=True)
        for folder in created:  # innermost first; only the folders made here, and only empty
            with contextlib.suppress(OSError):
                folder.rmdir()

    return undo


def run_study(settings: Settings, on_event: Callable[[Event], None]) -> None:
    """Run the study to its number of trials in ``settings.workers`` processes (1: this one).
    Raises :class:`Interrupted` after Ctrl-C, once every worker has stopped, and
    :class:`StorageError` when the storage fails."""
    with storage_errors(settings.storage):
        _run_study(settings, on_event)


def _run_study(settings: Settings, on_event: Callable[[Event], None]) -> None:
    undo = prepare_directory(settings)
    try:
        handle = open_study(settings, create=True)
    except DlcliError:
        if undo is not None:
            undo()
        raise
    if handle.created and any(settings.directory.glob("trial-*")):
        raise ModelDirError(
            f"{settings.directory}: holds trial directories of an earlier study, but study "
            f"{settings.study!r} is new (was {STUDY_FILE} removed?); give another --output"
        )
    on_event({"event": "study", "queued": top_up(handle, settings.trials)})
    started = 0

    def counting(event: Event) -> None:
        nonlocal started
        started += event["event"] == "start"
        on_event(event)

    if settings.workers == 1:
        Worker(settings, counting).run()
    else:
        _run_workers(settings, counting)
    if started == 0:
        _check_timeout_left_a_trial(settings, handle)


def _check_timeout_left_a_trial(settings: Settings, handle: Study) -> None:
    """A --timeout spent before the first trial could start (loading the data counts) while
    trials wait: a usage error (exit 2), not a study that silently did nothing."""
    import optuna

    deadline = settings.deadline
    if deadline is None or time.monotonic() < deadline:
        return
    waiting = len(handle.trials(optuna.trial.TrialState.WAITING))
    if waiting:
        spent = time.monotonic() - settings.started
        raise UsageError(
            f"--timeout {settings.timeout:g}: spent before the first trial could start "
            f"({spent:.1f} s since the command started, loading the data included); no trial "
            f"was run, {waiting} wait; give a longer --timeout, or none"
        )


def _run_workers(settings: Settings, on_event: Callable[[Event], None]) -> None:
    threads = max(1, (os.cpu_count() or 1) // settings.workers)
    with contextlib.suppress(AttributeError):
        threads = max(1, len(os.sched_getaffinity(0)) // settings.workers)
    context = multiprocessing.get_context("spawn")
    events: Any = context.Queue()
    processes = [
        context.Process(
            target=_worker_main,
            args=(settings, threads, events, on_command_line()),
            daemon=False,
        )
        for _ in range(settings.workers)
    ]
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the workers' OpenMP pools, from the start
    try:
        for process in processes:
            process.start()
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    # The workers have process groups of their own (_worker_main): a signal reaches them from
    # here only, once, whoever sent it (Ctrl-C to the terminal's group, or `kill` to this
    # process alone, which let the workers run the whole study while this one waited).
    stop = _Stop()
    forwarded = False
    with signals.stop_on_signals(stop):  # a second signal raises Interrupted here
        try:
            while True:
                if stop.interrupted and not forwarded:  # the workers checkpoint and stop
                    forwarded = True
                    _signal_workers(processes, getattr(signal, stop.interrupted))
                try:
                    on_event(events.get(timeout=0.2))
                    continue
                except queue.Empty:
                    pass
                if not any(p.is_alive() for p in processes):
                    break
        except Interrupted:  # the second signal: the workers stop at once too
            _signal_workers(processes, signal.SIGTERM)
            raise
    codes = [p.exitcode for p in processes]
    if stop.interrupted or 130 in codes:
        why = f" ({stop.interrupted})" if stop.interrupted else ""
        raise Interrupted(
            f"interrupted{why}: every worker stopped after its trial's checkpoint. "
            f"Continue with: {CONTINUE_STUDY}"
        )
    if any(codes):
        raise TrainingError(f"a tune worker failed (exit codes {codes}); see the messages above")


@dataclass
class _Stop:
    interrupted: str | None = None  # set by the first signal (see signals.stop_on_signals)


def _signal_workers(processes: list[Any], signum: int) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)


def _worker_main(settings: Settings, threads: int, events: Any, cli: bool = False) -> None:
    """A worker process of ``--workers N``: its share of the cores, events to the parent, and
    a process group of its own, so that signals come from the parent alone (_run_workers); its
    messages name what the parent's do (``cli``: the command line's options)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    import torch

    torch.set_num_threads(threads)
    try:
        with storage_errors(settings.storage), command_line() if cli else contextlib.nullcontext():
            Worker(settings, events.put).run()
    except (Interrupted, KeyboardInterrupt):
        raise SystemExit(130) from None
    except Exception as err:
        lines = err.lines() if isinstance(err, DlcliError) else [str(err)]
        events.put({"event": "error", "message": str(err), "lines": lines})
        raise SystemExit(1) from None


# --- results ---------------------------------------------------------------------------------


def summarize(handle: Study, directory: Path) -> dict[str, Any]:
    """The trials sorted by the metric (best first; unfinished ones last) and the best."""
    metric = str(handle.study.user_attrs.get("dlcli.metric"))
    direction = handle.study.direction.name.lower()
    trials = handle.trials()
    retried = _retried(trials)
    rows = [_row(t, directory, retried) for t in trials]
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["value"]
        ranked = value is not None and row["state"] in ("complete", "pruned")
        order = 0 if row["state"] == "complete" else 1
        return (order if ranked else 2, sign * value if ranked else 0.0, row["number"])

    rows.sort(key=key)
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {
        "study": handle.study.study_name,
        "directory": str(directory),
        "metric": metric,
        "direction": direction,
        "counts": counts,
        "trials": rows,
        "best": complete[0] if complete else None,
    }


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of the trials a later trial retries."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    return {n for n in map(Retry.retried_trial_number, trials) if n is not None}


def _stale_reason(trial: optuna.trial.FrozenTrial, retried: set[int]) -> str | None:
    """Why a trial failed when it records no error: its worker stopped beating, in it and in
    each of the ``STALE_RETRIES`` copies before it, so it was not queued again (Optuna failed
    it: a finished trial takes no attribute, so this is derived). A trial that ran to its end
    has its seconds; one failed otherwise has its error, or was queued again."""
    attrs = trial.user_attrs
    stale = int(attrs.get("dlcli.stale", 0))
    if (
        trial.state.name != "FAIL"
        or trial.number in retried
        or attrs.get("error") is not None
        or attrs.get("seconds") is not None
        or attrs.get("interrupted")
        or stale < STALE_RETRIES
    ):
        return None
    return (
        f"its worker stopped (no heartbeat) {stale + 1} times, in this trial and the {stale} "
        f"before it that it retries; not queued again (a trial that kills its worker, "
        "such as by running out of memory)"
    )


def _row(trial: optuna.trial.FrozenTrial, directory: Path, retried: set[int]) -> dict[str, Any]:
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    attrs = trial.user_attrs
    epochs = attrs.get("epochs")
    if epochs is None and trial.intermediate_values:
        epochs = max(trial.intermediate_values)
    value = trial.value
    if value is None and trial.intermediate_values:  # pruned: its last reported epoch
        value = trial.intermediate_values[max(trial.intermediate_values)]
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": value,
        "params": dict(trial.params),
        "epochs": epochs,
        "seconds": attrs.get("seconds"),
        "run_dir": str(run_dir_of(directory, attrs["run_dir"])) if attrs.get("run_dir") else None,
        "retry_of": Retry.retried_trial_number(trial),
        "interrupted": bool(attrs.get("interrupted", False)),
        "error": attrs.get("error") or _stale_reason(trial, retried),
    }


def write_best_config(summary: dict[str, Any], directory: Path) -> Path | None:
    """``DIR/best.yaml``: the best trial's config without ``tune:``, its run dir ``DIR/best``."""
    best = summary["best"]
    if best is None or not best.get("run_dir"):
        return None
    saved = Path(best["run_dir"]) / "config.yaml"  # a run's: as dlcli (maybe an older one) wrote it
    cfg = parse_config(read_yaml(saved, saved=True), source=str(saved), saved=True)
    cfg.tune = None
    cfg.output.dir = str(directory / "best")
    raw = to_dict(cfg)
    del raw["tune"]
    header = (
        f"# dlcli train {directory / BEST_CONFIG}\n"
        f"# The best trial ({best['number']}) of study {summary['study']!r}: "
        f"{summary['metric']} {best['value']:.6g}; its run: {best['run_dir']}\n"
    )
    import yaml

    from dlcli.config import Dumper  # quotes what dlcli reads as a number (a class named 1e3)

    text = header + yaml.dump(raw, Dumper=Dumper, sort_keys=False, default_flow_style=None)
    path = directory / BEST_CONFIG
    _write_atomic(path, text)
    return path


def best_metrics(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The best trial's final train/validation/test metrics (what --min/--max gate)."""
    best = summary["best"]
    if best is None:
        return {}
    path = Path(best["run_dir"]) / "metrics.json"
    metrics = untrusted.load_json(path, ModelDirError, "metrics file")
    if not isinstance(metrics, dict):
        raise ModelDirError(f"{path}: unreadable metrics file (not a JSON object)")
    # A split the run does not have is null there (no test data): it has no metrics to gate.
    return {
        split: metrics[split]
        for split in ("train", "validation", "test")
        if isinstance(metrics.get(split), dict)
    }


def write_plots(handle: Study, directory: Path) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib figures in ``DIR/plots/``; returns the files and what was skipped
    (and why: too few trials, no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["plots: matplotlib is not installed (pip install 'dlcli[tune]')"]
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    complete = handle.trials(_complete())
    figures: dict[str, Callable[[], Any]] = {
        "history.png": lambda: vis.plot_optimization_history(handle.study),
        "importances.png": lambda: vis.plot_param_importances(
            handle.study, evaluator=PedAnovaImportanceEvaluator()
        ),
        "slice.png": lambda: vis.plot_slice(handle.study),
    }
    written, skipped = [], []
    if not complete:
        return [], ["plots: no complete trial yet"]
    (directory / PLOTS).mkdir(exist_ok=True)
    for name, draw in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            skipped.append(f"plots/{name}: {err}")
            continue
        first = axes.flatten()[0] if hasattr(axes, "flatten") else axes
        figure = first.figure
        figure.set_size_inches(10, 6)
        path = directory / PLOTS / name
        tmp = temp_sibling(path)  # this writer's own; a killed writer's goes once old
        figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        plt.close(figure)
        tmp.replace(path)
        written.append(path)
    return written, skipped


def _complete() -> Any:
    import optuna

    return optuna.trial.TrialState.COMPLETE


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling of this writer's own (two tune processes of one
    study write best.yaml at once), then rename it to ``path``; a failed or interrupted write
    leaves neither a partial file nor the temporary one."""
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def open_existing(directory: Path, storage: str | None, study: str | None) -> Study:
    """The study of a tune directory (``--show``), or the one ``storage``/``study`` name."""
    optuna = require_optuna()
    record = read_marker(directory) if storage is None or study is None else {}
    url = storage or marker_storage(directory, record)
    if storage is None and "***" in url:
        raise UsageError(f"{directory}: its storage URL has a password; give it with --storage")
    database = sqlite_file(url)
    if database is not None and not database.is_file():  # SQLite would create an empty one
        raise ModelDirError(f"{masked(url)}: no study database at {database}; nothing was created")
    raw, heartbeats = _storage(optuna, url, heartbeat=10)
    name = study or str(record["study"])
    try:
        loaded = optuna.load_study(study_name=name, storage=raw)
    except KeyError:
        raise UsageError(f"no study {name!r} in {masked(url)}") from None
    return Study(loaded, raw, raw.get_study_id_from_name(name), heartbeats, lock=claim_lock(url))


def describe_params(params: dict[str, Any]) -> str:
    """``learning_rate=0.00123, layers[1].units=212`` (the last two parts of each path)."""
    parts = []
    for path, value in params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{short_key(path)}={shown}")
    return ", ".join(parts) or "no parameters"


def read_marker(directory: Path) -> dict[str, Any]:
    """DIR/tune.json: the study's name and (password-less) storage."""
    from dlcli.manifest import no_run_dir

    marker = directory / MARKER
    if not os.path.lexists(marker):
        if os.path.lexists(directory) and not directory.is_dir():  # a file, a device
            raise no_run_dir(directory, "dlcli tune directory")
        raise ModelDirError(f"{directory}: not a dlcli tune directory (no {MARKER})")
    # A regular file of bounded size (a FIFO there hung --show for ever), bounded JSON.
    record = untrusted.load_json(marker, ModelDirError, "tune marker file")
    if not isinstance(record, dict) or not {"study", "storage"} <= set(record):
        raise ModelDirError(f"{marker}: expected {{study, storage}}, found {record!r}")
    return record


# --- paths inside the study folder --------------------------------------------------------------
# tune.json and the trials record what lies in the study folder relative to it, so a copied or
# moved folder is its own study (with absolute paths a copy showed, and went on with, the
# original's database and run dirs).


def in_folder(directory: Path, path: Path) -> str:
    """``path`` as recorded: relative to the study folder when it lies in it, else as given."""
    try:
        return str(path.resolve().relative_to(directory.resolve()))
    except ValueError:
        return str(path)


def run_dir_of(directory: Path, recorded: str) -> Path:
    """A trial's recorded run dir → its path. A record from before they were relative (the path
    from the working directory, or absolute) names a run dir directly in the study folder: the
    folder's own one of that name is it, or its copy."""
    path = Path(recorded)
    if not path.is_absolute() and len(path.parts) == 1:
        return directory / path
    own = directory / path.name
    return own if own.is_dir() else path


def marker_record(directory: Path, study: str, url: str) -> dict[str, Any]:
    """What tune.json holds: the study's name and storage; a storage file in the folder
    (the default ``study.db``) relative to it (``"in_folder": true``)."""
    for scheme, file in (("sqlite:///", sqlite_file(url)), ("journal:", _journal_file(url))):
        if file is not None:
            with contextlib.suppress(ValueError):
                inside = file.resolve().relative_to(directory.resolve())
                return {"study": study, "storage": f"{scheme}{inside}", "in_folder": True}
    return {"study": study, "storage": masked(url)}


def marker_storage(directory: Path, record: dict[str, Any]) -> str:
    """The storage URL a tune.json record names, for this folder. An older record holds the
    absolute URL; one of the default ``DIR/study.db`` in a folder that holds its own (a copy)
    means the folder's."""
    url = str(record["storage"])
    if record.get("in_folder") is True:
        if url.startswith("journal:"):
            return f"journal:{directory / url.removeprefix('journal:')}"
        if url.startswith("sqlite:///"):
            return f"sqlite:///{(directory / url.removeprefix('sqlite:///')).resolve()}"
        raise ModelDirError(f"{directory / MARKER}: unreadable storage {url!r}")
    database = sqlite_file(url)
    if database is not None and database.name == STUDY_FILE and (directory / STUDY_FILE).is_file():
        return default_storage(directory)
    return url


def same_storage(first: str, second: str) -> bool:
    """Two URLs name the same storage: the same file (however spelled), or the same URL."""
    for file in (sqlite_file, _journal_file):
        a, b = file(first), file(second)
        if a is not None and b is not None:
            return a.resolve() == b.resolve()
    return masked(first) == masked(second)


def _journal_file(url: str) -> Path | None:
    return Path(url.removeprefix("journal:")) if url.startswith("journal:") else None
