"""``dlcli train`` and ``dlcli evaluate``, with their metric gates and launch options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dlcli.cli.base import _set_option, cli, dlcli_command
from dlcli.report import Reporter, fit_summary_line, metrics_table, summary_table


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


def _train_gates(mins: tuple[str, ...], maxs: tuple[str, ...], cfg: Any) -> list[Any]:
    """The gates, their names checked against what training will report, before it starts."""
    from dlcli.gates import SPLITS, parse_gates, resolve_gates

    gates = parse_gates(mins, maxs)
    resolve_gates(gates, {s: ["loss", *cfg.training.metrics] for s in SPLITS}, "validation")
    return gates


def _apply_gates(
    reporter: Reporter, gates: list[Any], metrics: dict[str, Any], document: dict[str, Any]
) -> dict[str, Any]:
    """Check the gates against the final metrics (split → logs); add them to ``document``.
    A violated bound raises GateError (exit 4), which carries ``document`` for --json."""
    from dlcli.gates import check_gates, default_split, gate_metrics, resolve_gates

    available = {split: gate_metrics(logs) for split, logs in metrics.items()}
    resolved = resolve_gates(gates, available, default_split(list(available)))
    for result in check_gates(resolved, available, document):
        reporter.note(f"gate passed: {result.describe()}")
    return document


_LAUNCH_OPTIONS = (
    click.option(
        "--nproc-per-node",
        type=click.IntRange(min=1),
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
        type=click.FloatRange(min=0, min_open=True),
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
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Run directory.")
@click.option("--device", help="auto | cpu | cuda | cuda:N (overrides training.device).")
@click.option("--seed", type=int, help="Random seed (overrides training.seed).")
@click.option(
    "--threads",
    metavar="auto|N",
    help="CPU threads (overrides training.threads; auto: the free cores).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN_DIR]",
    help="Continue from the newest checkpoint of RUN_DIR (default: the config's run directory).",
)
@_gate_options
@dlcli_command
@_launch_options
def train(
    reporter: Reporter,
    config: Path,
    overrides: tuple[str, ...],
    output: str | None,
    device: str | None,
    seed: int | None,
    threads: str | None,
    overwrite: bool,
    resume: str | None,
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
    launch: dict[str, Any],
) -> dict[str, Any] | None:
    """Train the model a YAML CONFIG describes, evaluate it and save the run directory.

    Ctrl-C (or SIGTERM) stops after the current step, saves a checkpoint and prints the
    --resume command that continues the run.

    With --nproc-per-node N, N workers train data-parallel (also: torchrun
    --nproc-per-node N -m dlcli train CONFIG); only rank 0 prints and saves.
    """
    from dlcli import distributed, pipeline
    from dlcli.config import load_config
    from dlcli.errors import UsageError
    from dlcli.progress import ProgressDisplay

    distributed.worker_output(reporter)  # under torchrun: only rank 0 prints its progress
    launching = distributed.Launch.from_options(launch)  # None: this process trains
    if resume is not None and overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one")
    if resume:
        if output is not None and Path(output) != Path(resume):
            raise UsageError(f"--resume {resume} and --output {output} name different runs")
        output = resume
    flags = {
        "output.dir": output,
        "training.device": device,
        "training.seed": seed,
        "training.threads": threads,
    }
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    cfg = load_config(config, [*overrides, *extra])
    gates = _train_gates(mins, maxs, cfg)
    if launching is not None:
        return _launch(reporter, cfg, launching, overwrite=overwrite, resume=resume is not None)
    prepared = pipeline.prepare(
        cfg, overwrite=overwrite, resume=resume is not None, dist_timeout=launch["dist_timeout"]
    )
    _announce(reporter, prepared)
    if prepared.world.distributed:
        reporter.note(prepared.world.summary(cfg.training.batch_size))
    if prepared.resume is not None:
        reporter.note(f"resuming from {prepared.resume.path}, {prepared.resume.where}")
    result = pipeline.train(prepared, callbacks=[ProgressDisplay(reporter)], config_path=config)
    metrics = result.metrics
    reporter.table(
        metrics_table(
            f"Final metrics ({metrics['epochs']} epochs, fit {metrics['fit_seconds']:.1f}s)",
            {
                "train": metrics["train"],
                "validation": metrics["validation"],
                "test": metrics["test"],
            },
        )
    )
    if "ema" in metrics:
        reporter.note(
            f"saved model: the weight average (EMA, decay {metrics['ema']['decay']}, "
            f"{metrics['ema']['updates']} updates), as validated"
        )
    fit_summary = _fit_summary(result, cfg)
    reporter.result_line(fit_summary_line(fit_summary, result.run_dir))
    document = {"run_dir": str(result.run_dir), **metrics, "summary": fit_summary}
    final = {split: metrics[split] for split in ("train", "validation", "test")}
    return _apply_gates(reporter, gates, final, document)  # after the model is saved


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


def _fit_summary(result: Any, cfg: Any) -> dict[str, Any]:
    """Best epoch (by the monitored metric, else val_loss), seconds per epoch, samples/s."""
    from dlcli.config import to_dict
    from dlcli.runs import monitored_metric, summarize_history

    train_size = result.metrics.get("dataset", {}).get("train_size")
    monitor, mode = monitored_metric(to_dict(cfg))
    return summarize_history(result.history, monitor=monitor, mode=mode, train_size=train_size)


def _announce(reporter: Reporter, prepared: Any) -> None:
    from dlcli.pipeline import describe_recipe

    data = prepared.dataset
    reporter.note(
        f"data: {data.name or 'custom'}: {len(prepared.train)} train, "
        f"{len(prepared.validation)} validation, {len(data.test)} test, "
        f"{data.num_classes} classes; device: {prepared.device}"
        + (f", {prepared.threads.count} threads" if prepared.threads is not None else "")
    )
    tools = describe_recipe(prepared.config.training)
    if tools:
        reporter.note(f"training with {tools}")
    if not reporter.quiet:
        built = prepared.model
        reporter.err.print(
            summary_table(
                built.layers, built.input_shape, built.total_params, built.trainable_params
            )
        )


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--split",
    "splits",
    type=click.Choice(["validation", "test", "train"]),
    multiple=True,
    help="Which split(s) to evaluate (repeatable; default: validation and test).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset lives.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option(
    "--per-class",
    is_flag=True,
    help="Also precision, recall, F1 and support per class, and the confusion matrix.",
)
@click.option(
    "--tta",
    type=click.Choice(["none", "flip"]),
    help="Test-time augmentation: flip averages each image's and its mirror's logits "
    "(default: the run's training.tta).",
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
    tta: str | None,
    accept_changed_data: bool,
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
) -> dict[str, Any]:
    """Metrics of a saved model directory on its validation and/or test split.

    The data files are compared with the SHA-256 the run recorded; a changed file is refused
    (exit 3) unless --accept-changed-data.

    With --min/--max, exits 4 when a metric is out of bounds (an unqualified METRIC applies to
    the validation split, or to the only split evaluated).
    """
    from dlcli import pipeline
    from dlcli.gates import parse_gates

    gates = parse_gates(mins, maxs)

    evaluate_fn = pipeline.evaluate_per_class if per_class else pipeline.evaluate
    changed: list[str] = []
    reports: dict[str, Any] = evaluate_fn(
        model_dir,
        splits=splits or ("validation", "test"),
        batch_size=batch_size,
        data_dir=data_dir,
        device=device,
        tta=tta,
        accept_changed_data=accept_changed_data,
        changed=changed,
    )
    for path in changed:
        reporter.note(f"{path}: changed since the model was trained (--accept-changed-data)")
    results = {name: r.metrics for name, r in reports.items()} if per_class else reports
    shown = {
        name: {k: v for k, v in m.items() if k not in ("seconds", "samples")}
        for name, m in results.items()
    }
    reporter.table(metrics_table(f"Metrics of {model_dir}", shown))
    document = {"model_dir": str(model_dir), "metrics": results, "data_changed": changed}
    if per_class:
        document["per_class"] = _show_per_class(reporter, reports)
    return _apply_gates(reporter, gates, results, document)


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
