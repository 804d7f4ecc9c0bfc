"""``dlcli tune`` (a study over the config's ``tune.space``, on Optuna) and ``dlcli lr-find``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from dlcli import limits
from dlcli.cli.base import (
    LEARNING_RATE,
    SECONDS,
    NonBlank,
    NonEmptyPath,
    _set_option,
    cli,
    dlcli_command,
)
from dlcli.cli.train import _gate_options
from dlcli.report import Reporter


@cli.command()
@click.argument("config", type=NonEmptyPath(path_type=Path))
@_set_option
@click.option(
    "--trials", type=click.IntRange(min=1), help="Trials in the study, in all (tune.trials)."
)
@click.option(
    "--timeout",
    type=SECONDS,
    metavar="SECONDS",
    help="Start no trial SECONDS after the command started, loading the data included (the "
    "ones under way finish; none started in time: exit 2).",
)
@click.option(
    "--output",
    "-o",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    help="Study directory: trial-NNNN/ runs, best.yaml, plots/ (default: runs/CONFIG-tune).",
)
@click.option(
    "--storage",
    type=NonBlank("a storage URL"),
    metavar="URL",
    help="Where the study lives: an SQLAlchemy URL (postgresql://user@host/db, sqlite:///f.db) "
    "or journal:PATH (default: sqlite DIR/study.db). Share it to share the study.",
)
@click.option("--study", metavar="NAME", help="Study name in the storage (default: CONFIG's name).")
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=limits.THREADS_MAX),
    default=1,
    show_default=True,
    help="Worker processes on this machine; the cores are split between them.",
)
@click.option(
    "--heartbeat",
    type=click.IntRange(min=1, max=int(limits.SECONDS_MAX)),
    default=10,
    show_default=True,
    metavar="SECONDS",
    help="A running trial's heartbeat; one silent for twice this is failed and retried.",
)
@click.option("--show", is_flag=True, help="Show the results of the study in directory CONFIG.")
@_gate_options
@dlcli_command
def tune(
    reporter: Reporter,
    config: Path,
    overrides: tuple[str, ...],
    trials: int | None,
    timeout: float | None,
    output: Path | None,
    storage: str | None,
    study: str | None,
    workers: int,
    heartbeat: int,
    show: bool,
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
) -> dict[str, Any]:
    """Search the config's tune.space with Optuna.

    Each trial is a run in DIR/trial-NNNN/.

    Results: the trials sorted by tune.metric, the best trial, DIR/best.yaml (its config, which
    `dlcli train` retrains) and plots in DIR/plots/. Ctrl-C stops after the current trial's
    checkpoint (exit 130); the same command again continues the study. Processes on several
    machines given the same --storage and --study share one study.

    With --show, CONFIG is a study directory: print its results.
    """
    import time

    started = time.monotonic()  # what --timeout counts from
    from dlcli import tune as tuning

    if study is not None and not study.strip():
        from dlcli.errors import UsageError

        raise UsageError(f"--study: expected a study name, found {study!r}")
    tuning.require_optuna()
    if show:
        return _show(reporter, config, storage, study, mins, maxs)
    from dlcli.config import load_config
    from dlcli.errors import ConfigError

    cfg = load_config(config, overrides)
    if cfg.tune is None:
        raise ConfigError(
            f"{config}: no tune: section; add one, e.g. tune: {{trials: 20, space: "
            "{training.optimizer.learning_rate: {float: [1e-4, 1e-1], log: true}}}"
        )
    from dlcli import gates as gating

    gates = gating.for_training(mins, maxs, cfg.training.metrics)
    if any(gate.split == "test" for gate in gates):  # known once the data is read
        from dlcli import pipeline

        if pipeline.config_data(cfg).test is None:  # before any trial, not after the study
            gating.refuse_split(gates, "test", pipeline.NO_TEST)
    directory = output or Path("runs") / f"{config.stem}-tune"
    settings = tuning.Settings(
        config=cfg,
        directory=directory,
        storage=storage or tuning.default_storage(directory),
        study=study or config.stem,
        trials=trials or cfg.tune.trials,
        timeout=timeout,
        workers=workers,
        heartbeat=heartbeat,
        started=started,
    )
    reporter.note(
        f"study {settings.study!r}: {settings.trials} trials, {cfg.tune.metric} "
        f"({tuning.metric_direction(cfg.tune.metric)}), {len(settings.params)} parameters, "
        f"{workers} worker(s); storage {tuning.masked(settings.storage)}"
    )
    metric = cfg.tune.metric
    tuning.run_study(settings, lambda event: _on_event(reporter, metric, event))
    with tuning.storage_errors(settings.storage):
        handle = tuning.open_study(settings, create=False)
        return _results(reporter, handle, directory, gates)


def _show(
    reporter: Reporter,
    directory: Path,
    storage: str | None,
    study: str | None,
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
) -> dict[str, Any]:
    from dlcli import tune as tuning
    from dlcli.gates import parse_gates

    handle = tuning.open_existing(directory, storage, study)
    return _results(reporter, handle, directory, parse_gates(mins, maxs))


def _results(reporter: Reporter, handle: Any, directory: Path, gates: list[Any]) -> dict[str, Any]:
    """The trials table, the best trial, best.yaml, the plots, and the gates on the best."""
    from dlcli import tune as tuning
    from dlcli.errors import GateError
    from dlcli.report import trials_table

    summary = tuning.summarize(handle, directory)
    reporter.table(trials_table(summary))
    for trial in summary["trials"]:
        if trial["state"] == "fail" and trial["error"]:
            reporter.result_line(f"trial {trial['number']} failed: {trial['error']}")
    best = summary["best"]
    document = dict(summary)
    if best is None:
        reporter.result_line("no trial has completed yet")
    else:
        best_yaml = tuning.write_best_config(summary, directory)
        plots, skipped = tuning.write_plots(handle, directory)
        for line in skipped:
            reporter.note(line)
        reporter.result_line(
            f"best trial {best['number']}: {summary['metric']} {best['value']:.4f} · "
            f"{tuning.describe_params(best['params'])} · run {best['run_dir']}"
        )
        if best_yaml is not None:  # a best trial without its run dir has none
            from dlcli.untrusted import shell_word

            reporter.result_line(f"retrain it with: dlcli train {shell_word(best_yaml)}")
        document |= {"best_config": str(best_yaml), "plots": [str(p) for p in plots]}
    if gates:
        if best is None:
            raise GateError("no trial has completed: the gates cannot pass", document=document)
        from dlcli import gates as gating

        for passed in gating.apply(gates, tuning.best_metrics(summary), document):
            reporter.note(f"gate passed: {passed.describe()}")
    return document


def _on_event(reporter: Reporter, metric: str, event: dict[str, Any]) -> None:
    """One line per finished trial (workers send theirs to the parent)."""
    from dlcli import tune as tuning

    kind = event["event"]
    if kind == "study" and event["queued"]:
        reporter.note(f"queued {event['queued']} trial(s)")
    elif kind == "error":
        first, *more = event["lines"]  # a note is one line (report.shown): its details, each
        reporter.note(f"worker error: {first}")
        for line in more:
            reporter.note(line)
    elif kind == "interrupted":
        reporter.note(f"trial {event['trial']}: interrupted; it is queued again")
    elif kind == "crashed":  # the worker stops (the error follows); the trial is not to blame
        reporter.note(f"trial {event['trial']}: stopped by {event['reason']}; it is queued again")
    elif kind == "end":
        value = event["value"]
        shown = f"{metric} {value:.4f}" if value is not None else "no value"
        if event["error"]:
            shown = event["error"]
        reporter.note(
            f"trial {event['trial']} {event['state']}: {shown} · {event['seconds']:.1f} s · "
            f"{tuning.describe_params(event['params'])}"
        )


@cli.command("lr-find")
@click.argument("config", type=NonEmptyPath(dir_okay=False, path_type=Path))
@_set_option
@click.option("--start-lr", type=LEARNING_RATE, default=1e-7, show_default=True)
@click.option("--end-lr", type=LEARNING_RATE, default=limits.LEARNING_RATE_MAX, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(min=20),
    default=200,
    show_default=True,
    help="Steps at most (the test stops earlier when the loss diverges).",
)
@click.option(
    "--plot",
    "plot_path",
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="Where the PNG goes (default: CONFIG-lr-find.png in the current directory).",
)
@click.option("--force", is_flag=True, help="Replace the PNG when it exists.")
@dlcli_command
def lr_find(
    reporter: Reporter,
    config: Path,
    overrides: tuple[str, ...],
    start_lr: float,
    end_lr: float,
    steps: int,
    plot_path: Path | None,
    force: bool,
) -> dict[str, Any]:
    """Learning-rate range test: suggest a learning rate for CONFIG.

    Trains the config's model from its initial weights with the learning rate growing
    exponentially from --start-lr to --end-lr, one step each, stops when the smoothed loss
    diverges, and suggests the rate of steepest descent. Writes the PNG of loss against
    learning rate and nothing else: no run directory, the config unchanged.
    """
    from dlcli.config import load_config
    from dlcli.errors import UsageError
    from dlcli.lr_find import lr_find as range_test

    cfg = load_config(config, overrides)
    path = plot_path or Path(f"{config.stem}-lr-find.png")
    if path.exists() and os.path.samefile(path, config):  # --force or not: the config stays
        raise UsageError(f"--plot {path}: is CONFIG, the config read; give the PNG another path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plotting = False
        reporter.note("no PNG: matplotlib is not installed (pip install 'dlcli[plot]')")
    else:
        from dlcli.plot import prepare_figure

        plotting = True
        prepare_figure(path, force=force)  # before the test: it cannot fail after it
    reporter.note(f"lr-find: {start_lr:g} → {end_lr:g} over {steps} steps at most")
    result = range_test(cfg, start_lr=start_lr, end_lr=end_lr, steps=steps)
    written = None
    if plotting:
        from dlcli.plot import plot_lr_find

        written = plot_lr_find(result, path)
    reporter.note(f"stopped: {result.stopped}")
    reporter.result_line(f"suggested learning rate: {result.suggested_lr:.3g}")
    reporter.result_line(f"rule: {result.rule}")
    reporter.result_line(f"minimum/10: {result.minimum_lr / 10:.3g}")
    if written is not None:
        reporter.result_line(f"plot: {written}")
    return {"config": str(config), **result.to_dict(), "plot": str(written) if written else None}
