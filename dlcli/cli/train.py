"""``dlcli train`` and ``dlcli evaluate``, with their metric gates and launch options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dlcli import limits
from dlcli.cli.base import (
    SECONDS,
    NonEmptyPath,
    _set_option,
    batch_size_option,
    cli,
    complete_run_dirs,
    data_dir_option,
    device_option,
    dlcli_command,
    run_dir_argument,
    thread_count,
    tta_option,
    weights_option,
)
from dlcli.report import (
    Reporter,
    counted,
    early_stop_line,
    fit_summary_line,
    metrics_table,
    summary_table,
)


def _gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--min`` / ``--max`` quality gates (see dlcli.gates): exit 4 when a bound is violated."""
    fn = click.option(
        "--max",
        "maxs",
        multiple=True,
        metavar="[SPLIT.]METRIC=VALUE",
        help="Fail (exit 4) when METRIC is above VALUE, e.g. --max loss=0.4 (repeatable).",
    )(fn)
    return click.option(
        "--min",
        "mins",
        multiple=True,
        metavar="[SPLIT.]METRIC=VALUE",
        help="Fail (exit 4) when METRIC is below VALUE, e.g. --min accuracy=0.88 or "
        "--min test.accuracy=0.85 (repeatable; unqualified: the validation split).",
    )(fn)


_LAUNCH_OPTIONS = (
    click.option(
        "--nproc-per-node",
        type=click.IntRange(min=1, max=limits.WORKERS_MAX),
        metavar="N",
        help="Train in N worker processes on this node (one per GPU), started by "
        "torch.distributed.run (torchrun's engine); batch_size stays the global batch.",
    ),
    click.option(
        "--nnodes",
        default="1",
        show_default=True,
        metavar="N|MIN:MAX",
        help="Nodes in the run; run the same command on each.",
    ),
    click.option(
        "--node-rank",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="This node's rank (with --master-addr).",
    ),
    click.option("--master-addr", metavar="HOST", help="The rank-0 node's address."),
    click.option(
        "--master-port",
        type=click.IntRange(1, 65535),
        metavar="PORT",
        help="Its port (default: 29500).",
    ),
    click.option(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="Multi-node rendezvous (c10d) endpoint, the same on every node.",
    ),
    click.option("--rdzv-id", metavar="ID", help="Rendezvous id (default: dlcli)."),
    click.option(
        "--dist-timeout",
        type=SECONDS,
        envvar="DLCLI_DIST_TIMEOUT",
        metavar="SECONDS",
        help="Distributed runs: how long a worker waits for the others before the job fails "
        "(default 300; also $DLCLI_DIST_TIMEOUT).",
    ),
)


def _launch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options above (see dlcli.distributed), handed to ``fn`` as one ``launch`` dict."""
    names = [
        "nproc_per_node",
        "nnodes",
        "node_rank",
        "master_addr",
        "master_port",
        "rdzv_endpoint",
        "rdzv_id",
        "dist_timeout",
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        launch = {name: kwargs.pop(name) for name in names}
        return fn(*args, launch=launch, **kwargs)

    for option in reversed(_LAUNCH_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


@cli.command()
@click.argument("config", type=NonEmptyPath(dir_okay=False, path_type=Path), required=False)
@_set_option
@click.option("--output", "-o", type=NonEmptyPath(file_okay=False), help="Run directory.")
@device_option(None, "(overrides training.device)")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed (overrides training.seed).")
@click.option(
    "--threads",
    metavar="auto|N",
    callback=thread_count,
    help="CPU threads: auto (the free cores) or a number (overrides training.threads).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the dlcli run in the output directory (files dlcli did not write are kept).",
)
@click.option(
    "--resume",
    shell_complete=complete_run_dirs,
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN_DIR]",
    help="Continue from the newest checkpoint of RUN_DIR, with the config the run started with "
    "(CONFIG may be left out; without RUN_DIR: the config's run directory).",
)
@_gate_options
@dlcli_command
@_launch_options
def train(
    reporter: Reporter,
    config: Path | None,
    overrides: tuple[str, ...],
    output: str | None,
    device: str | None,
    seed: int | None,
    threads: str | int | None,
    overwrite: bool,
    resume: str | None,
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
    launch: dict[str, Any],
) -> dict[str, Any] | None:
    """Train a config's model, evaluate it and save the run.

    The run directory holds the weights, the resolved config, metrics and history.

    Ctrl-C, SIGTERM or SIGHUP stops after the current step, saves a checkpoint and prints the
    command that continues the run: dlcli train --resume RUN_DIR.

    With --nproc-per-node N, N workers train data-parallel (also: torchrun
    --nproc-per-node N -m dlcli train CONFIG); only rank 0 prints and saves.
    """
    from dlcli import distributed, gates, pipeline
    from dlcli.progress import ProgressDisplay
    from dlcli.train_request import TrainRequest

    _worker_output(reporter)  # under torchrun: only rank 0 prints its progress
    launching = distributed.Launch.from_options(launch)  # None: this process trains
    request = TrainRequest(
        config, overrides, output, device, seed, overwrite, resume, threads=threads
    )
    cfg = request.resolve()
    checked = gates.for_training(mins, maxs, cfg.training.metrics)
    if launching is not None:
        return _launch(reporter, cfg, launching, overwrite=overwrite, resume=request.resuming)
    prepared = pipeline.prepare(
        cfg, overwrite=overwrite, resume=request.resuming, dist_timeout=launch["dist_timeout"]
    )
    if prepared.dataset.test is None:  # known once the data is read: refused before training
        try:
            gates.refuse_split(checked, "test", pipeline.NO_TEST)
        except BaseException:
            if prepared.output is not None:
                prepared.output.release()
            raise
    _announce(reporter, prepared)
    result = pipeline.train(prepared, callbacks=[ProgressDisplay(reporter)])
    _show_result(reporter, result)
    document = result.to_dict()
    final = result.final_metrics()
    for passed in gates.apply(checked, final, document):  # after the model is saved
        reporter.note(f"gate passed: {passed.describe()}")
    return document


def _show_result(reporter: Reporter, result: Any) -> None:
    metrics = result.metrics
    if result.note:
        reporter.note(result.note)
    reporter.table(
        metrics_table(
            f"Final metrics ({counted(metrics['epochs'], 'epoch')}, "
            f"fit {metrics['fit_seconds']:.1f}s)",
            result.final_metrics(),
        )
    )
    if metrics["test"] is None:
        from dlcli import pipeline

        reporter.note(pipeline.NO_TEST)
    for skipped in metrics.get("skipped_files", []):
        reporter.note(f"skipped {skipped['path']}: {skipped['reason']}")
    early = metrics.get("early_stopping") or {}
    if early.get("stopped_epoch") is not None:
        reporter.note(early_stop_line(early))
    if "ema" in metrics:
        reporter.note(
            f"saved model: the weight average (EMA, decay {metrics['ema']['decay']}, "
            f"{metrics['ema']['updates']} updates), as validated"
        )
    threads = metrics.get("threads") or {}
    if threads.get("changes"):
        reporter.note(
            f"threads followed the free cores: {threads['count']} at the start, "
            f"{counted(threads['changes'], 'change')}, {threads['count_at_end']} at the end"
            " (training.threads: auto; --threads N keeps one count)"
        )
    reporter.result_line(fit_summary_line(result.summary(), result.run_dir), wrap_at=" · ")


def _worker_output(reporter: Reporter) -> None:
    """How a torchrun worker reports: ranks other than 0 print errors only; rank 0 of
    ``train --nproc-per-node`` hands its JSON document to the launcher, which prints it."""
    import os

    from dlcli.distributed import JSON_FILE, env_rank

    if env_rank() != 0:
        reporter.silence()
    elif os.environ.get(JSON_FILE):
        reporter.json_to_file(os.environ[JSON_FILE])


def _launch(
    reporter: Reporter, cfg: Any, launching: Any, *, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    """--nproc-per-node: run this same command in the workers (without the launch options)
    and wait; rank 0's output and JSON document are the run's."""
    from dlcli import distributed, store

    # Checked once here rather than N times in the workers.
    store.check_output_dir(Path(str(cfg.output.dir)), overwrite=overwrite, resume=resume)
    reporter.note(launching.describe())
    argv = click.get_current_context().meta.get("dlcli.argv", sys.argv[1:])
    return distributed.launch(launching, argv)


def _announce(reporter: Reporter, prepared: Any) -> None:
    from dlcli import pipeline

    output = prepared.output
    if output is not None and output.discarded:
        reporter.note(output.discarded)
    if output is not None and output.replaces and output.kept:
        reporter.note(
            f"{prepared.run_dir}: the previous run is replaced when this one is saved; kept as "
            f"they are (not written by training): {', '.join(output.kept)}"
        )
    if prepared.world.distributed:
        reporter.note(prepared.world.summary(prepared.config.training.batch_size))
    if prepared.resume is not None:
        reporter.note(f"resuming from {prepared.resume.path}, {prepared.resume.where}")
        stretched = pipeline.schedule_note(prepared)
        if stretched:
            reporter.note(stretched)
    data = prepared.dataset
    test = f"{len(data.test)} test" if data.test is not None else "no test split"
    kind, why = pipeline.step_kind(prepared)
    reporter.note(
        f"data: {data.name or 'custom'}: {len(prepared.train)} train, "
        f"{len(prepared.validation)} validation, {test}, "
        f"{data.num_classes} classes; device: {prepared.device}"
        + (_threads(prepared.threads.count) if prepared.threads is not None else "")
        + f", {kind} step"
    )
    for note in data.notes:
        reporter.note(f"data: {note}")
    tools = pipeline.describe_recipe(prepared.config.training)
    if tools:
        reporter.note(f"training with {tools}")
    if why and prepared.config.training.backward == "explicit":
        reporter.note(f"training.backward: explicit, but {why}: autograd computes the gradients")
    emulated = pipeline.precision_note(prepared)
    if emulated:
        reporter.note(emulated)
    native = pipeline.native_note(prepared)
    if native:
        reporter.note(native)
    from dlcli.model import hwc

    built = prepared.model
    shape = hwc(built.input_shape)
    reporter.note_table(
        summary_table(built.layers, shape, built.total_params, built.trainable_params)
    )


def _threads(count: int) -> str:
    return f", {count} thread" + ("" if count == 1 else "s")


@cli.command()
@run_dir_argument()
@click.option(
    "--split",
    "splits",
    type=click.Choice(["validation", "test", "train"]),
    multiple=True,
    help="Which split(s) to evaluate (repeatable; default: validation and test).",
)
@batch_size_option
@data_dir_option
@device_option()
@click.option(
    "--per-class",
    is_flag=True,
    help="Also precision, recall, F1 and support per class, and the confusion matrix.",
)
@weights_option
@tta_option
@click.option(
    "--data",
    "data_path",
    type=NonEmptyPath(path_type=Path),
    metavar="PATH",
    help="Score labelled data instead of the run's splits: class folders, a path,label CSV, "
    "an .npz or an IDX archive, converted as the run's training images were.",
)
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Evaluate even when a data file differs from the one the model was trained with "
    "(its SHA-256 in metrics.json); the result lists the changed files under data_changed.",
)
@_gate_options
@dlcli_command
def evaluate(
    reporter: Reporter,
    model_dir: Path,
    splits: tuple[str, ...],
    batch_size: int,
    data_dir: str | None,
    device: str,
    per_class: bool,
    data_path: Path | None,
    weights: str,
    tta: str | None,
    accept_changed_data: bool,
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
) -> dict[str, Any]:
    """Evaluate a saved model on its splits, or on --data.

    Without --data: the run's validation and/or test split. With --data PATH: the labelled data
    there (its split is called "data").

    The data files are compared with the SHA-256 the run recorded; a changed file is refused
    (exit 3) unless --accept-changed-data.

    With --min/--max, exits 4 when a metric is out of bounds (an unqualified METRIC applies to
    the validation split, or to the only split evaluated).
    """
    from dlcli import gates, pipeline
    from dlcli.errors import UsageError

    checked = gates.parse_gates(mins, maxs)
    reports: dict[str, Any]
    changed: list[str] = []
    if data_path is not None:
        given = {
            "--split": bool(splits),
            "--data-dir": data_dir is not None,
            "--accept-changed-data": accept_changed_data,
        }
        misplaced = [option for option, used in given.items() if used]
        if misplaced:
            raise UsageError(
                f"--data scores the data given: {', '.join(misplaced)} applies only to the "
                "run's own data"
            )
        reports = pipeline.evaluate_data(
            model_dir,
            data_path,
            batch_size=batch_size,
            device=device,
            weights=weights,
            per_class=per_class,
            tta=tta,
        )
    else:
        evaluate_fn: Callable[..., dict[str, Any]] = (
            pipeline.evaluate_per_class if per_class else pipeline.evaluate
        )
        reports = evaluate_fn(
            model_dir,
            splits=splits or None,
            batch_size=batch_size,
            data_dir=data_dir,
            device=device,
            gates=checked,
            weights=weights,
            accept_changed_data=accept_changed_data,
            changed=changed,
            tta=tta,
        )
    for path in changed:
        reporter.note(f"{path}: changed since the model was trained (--accept-changed-data)")
    results: dict[str, Any] = (
        {name: r.metrics for name, r in reports.items()} if per_class else reports
    )
    shown = {
        name: {k: v for k, v in m.items() if k not in ("seconds", "samples")}
        for name, m in results.items()
    }
    reporter.table(metrics_table(f"Metrics of {model_dir}", shown))
    if not splits and data_path is None and "test" not in results:
        reporter.note(pipeline.NO_TEST)
    document = {
        "model_dir": str(model_dir),
        "weights": weights,
        "metrics": results,
        "data_changed": changed,
    }
    if data_path is not None:
        document["data"] = str(data_path)
    if per_class:
        document["per_class"] = _show_per_class(reporter, reports)
    for passed in gates.apply(checked, results, document):
        reporter.note(f"gate passed: {passed.describe()}")
    return document


def _show_per_class(reporter: Reporter, reports: dict[str, Any]) -> dict[str, Any]:
    """Print each split's per-class table and confusion matrix; return them as plain data."""
    from dlcli.report import confusion_table, per_class_table

    document = {}
    for name, report in reports.items():
        data = report.per_class.to_dict()
        reporter.table(per_class_table(f"Per-class metrics ({name})", data))
        names = [c["name"] for c in data["classes"]]
        matrix = data["confusion_matrix"]
        reporter.table(confusion_table(f"Confusion matrix ({name})", matrix, names))
        document[name] = data
    return document
