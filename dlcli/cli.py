"""The ``dlcli`` command line: a thin click layer over the library.

Each command parses its options, calls one library function, and reports the result. Errors
are mapped to exit codes in one place, :func:`dlcli_command`; the codes are documented in
``dlcli.errors`` and the README. torch is imported only inside the commands that need it, so
``dlcli --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dlcli import __version__
from dlcli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DlcliError
from dlcli.report import Reporter, fit_summary_line, metrics_table, summary_table

CommandFn = Callable[..., dict[str, Any] | None]


def dlcli_command(fn: CommandFn) -> Callable[..., None]:
    """Give a command ``--json``/``--quiet``/``--no-color`` and the one error-to-exit-code map.

    The wrapped function receives a :class:`Reporter` first and may return a JSON-able dict: it
    is printed to stdout as the command's one JSON document under ``--json``.
    """

    @click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress output.")
    @click.option("--no-color", is_flag=True, help="No colours (also: the NO_COLOR variable).")
    @functools.wraps(fn)
    def wrapper(json_mode: bool, quiet: bool, no_color: bool, **kwargs: Any) -> None:
        reporter = Reporter(json_mode=json_mode, quiet=quiet, no_color=no_color)
        code = 0
        try:
            document = fn(reporter, **kwargs)
            if document is not None:
                reporter.emit_json(document)
        except DlcliError as err:
            code = err.exit_code
            reporter.error(err, code=code, kind=err.kind)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
            reporter.error("interrupted", code=code, kind="interrupted")
        except Exception as err:
            code = EXIT_INTERNAL
            if os.environ.get("DLCLI_DEBUG"):
                traceback.print_exc()
            reporter.error(
                f"internal error: {type(err).__name__}: {err}\n"
                "This is a bug in dlcli. Please report it with the command you ran and the "
                "output of `dlcli --version` (set DLCLI_DEBUG=1 for the traceback).",
                code=code,
            )
        if code:
            click.get_current_context().exit(code)

    return wrapper


class DlcliGroup(click.Group):
    """A click group whose own usage errors (an unknown option, a bad value, a missing
    argument) are, under ``--json``, also a JSON error document; they keep click's exit code 2
    and its usage text on stderr."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        json_mode = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            raise (_JsonUsageError(err) if json_mode else err) from None
        ctx.meta["dlcli.json"] = json_mode
        ctx.meta["dlcli.argv"] = argv  # train --nproc-per-node re-runs it in each worker
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            if ctx.meta.get("dlcli.json") and not isinstance(err, _JsonUsageError):
                raise _JsonUsageError(err) from None
            raise


class _JsonUsageError(click.UsageError):
    """A click usage error shown as usual on stderr, plus the JSON error document on stdout."""

    def __init__(self, err: click.UsageError) -> None:
        super().__init__(err.format_message(), ctx=err.ctx)

    def show(self, file: Any = None) -> None:
        super().show(file)
        error = {"code": self.exit_code, "kind": "usage", "message": self.format_message()}
        Reporter(json_mode=True).emit_json({"error": error})


@click.group(cls=DlcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="dlcli")
def cli() -> None:
    """Train, evaluate and save PyTorch vision models from a YAML file.

    \b
    Typical session:
      dlcli download fashion-mnist
      dlcli train configs/fashion-mnist-mlp.yaml
      dlcli evaluate runs/fashion-mnist-mlp
    """


# --- train / evaluate / summary --------------------------------------------------------------

_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set training.epochs=3 (repeatable; value is YAML).",
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
    flags = {"output.dir": output, "training.device": device, "training.seed": seed}
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
    data = prepared.dataset
    reporter.note(
        f"data: {data.name or 'custom'}: {len(prepared.train)} train, "
        f"{len(prepared.validation)} validation, {len(data.test)} test, "
        f"{data.num_classes} classes; device: {prepared.device}"
    )
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
    mins: tuple[str, ...],
    maxs: tuple[str, ...],
) -> dict[str, Any]:
    """Metrics of a saved model directory on its validation and/or test split.

    With --min/--max, exits 4 when a metric is out of bounds (an unqualified METRIC applies to
    the validation split, or to the only split evaluated).
    """
    from dlcli import pipeline
    from dlcli.gates import parse_gates

    gates = parse_gates(mins, maxs)

    evaluate_fn = pipeline.evaluate_per_class if per_class else pipeline.evaluate
    reports: dict[str, Any] = evaluate_fn(
        model_dir,
        splits=splits or ("validation", "test"),
        batch_size=batch_size,
        data_dir=data_dir,
        device=device,
    )
    results = {name: r.metrics for name, r in reports.items()} if per_class else reports
    shown = {
        name: {k: v for k, v in m.items() if k not in ("seconds", "samples")}
        for name, m in results.items()
    }
    reporter.table(metrics_table(f"Metrics of {model_dir}", shown))
    document = {"model_dir": str(model_dir), "metrics": results}
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


# --- plot / runs: see what happened ------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the PNG files go.  [default: RUN_DIR/plots]",
)
@click.option(
    "--split",
    type=click.Choice(["validation", "test", "train"]),
    default="validation",
    show_default=True,
    help="The split the confusion matrix is computed on.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the dataset lives.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@dlcli_command
def plot(
    reporter: Reporter,
    run_dir: Path,
    out: Path | None,
    split: str,
    batch_size: int,
    data_dir: str | None,
    device: str,
) -> dict[str, Any]:
    """PNG training curves (one per metric) and a confusion-matrix heatmap of a saved run.

    Needs matplotlib: pip install 'dlcli[plot]'.
    """
    from dlcli.plot import plot_run

    result = plot_run(
        run_dir, out, split=split, batch_size=batch_size, data_dir=data_dir, device=device
    )
    for path in result.files:
        reporter.result_line(f"wrote {path}")
    return {"run_dir": str(run_dir), "out_dir": str(result.out_dir), "files": result.files}


@cli.group()
def runs() -> None:
    """List and compare saved runs: key config values and final metrics."""


@runs.command("list")
@click.argument("directory", type=click.Path(path_type=Path), default="runs", required=False)
@dlcli_command
def runs_list(reporter: Reporter, directory: Path) -> dict[str, Any]:
    """The runs in DIRECTORY (default: runs/), one row each."""
    from dlcli.report import runs_table
    from dlcli.runs import list_runs

    listing = list_runs(directory)
    rows = [run.to_dict() for run in listing.runs]
    if rows:
        reporter.table(runs_table(f"Runs in {directory}", rows))
    else:
        reporter.note(f"no complete runs in {directory}")
    _note_skipped(reporter, listing.skipped)
    return {"directory": str(directory), "runs": rows, "skipped": _skipped(listing.skipped)}


@runs.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@dlcli_command
def runs_compare(reporter: Reporter, run_dirs: tuple[Path, ...]) -> dict[str, Any]:
    """RUN_DIRS side by side: config values (what differs highlighted) and final metrics."""
    from dlcli.report import compare_table
    from dlcli.runs import compare, comparison_rows

    listing, differences = compare(list(run_dirs))
    names = [run.name for run in listing.runs]
    if len(set(names)) < len(names):  # same-named runs in different folders
        names = [str(run.path) for run in listing.runs]
    reporter.table(compare_table(names, comparison_rows(listing.runs, differences)))
    _note_skipped(reporter, listing.skipped)
    return {
        "runs": [run.to_dict() for run in listing.runs],
        "differences": [d.to_dict() for d in differences],
        "skipped": _skipped(listing.skipped),
    }


def _note_skipped(reporter: Reporter, skipped: list[Any]) -> None:
    for item in skipped:
        reporter.note(f"skipped {item.path}: {item.reason}")


def _skipped(skipped: list[Any]) -> list[dict[str, str]]:
    return [item.to_dict() for item in skipped]


@cli.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@_set_option
@dlcli_command
def summary(reporter: Reporter, target: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Layer table of a CONFIG file or a saved MODEL_DIR: output shapes and parameters."""
    from dlcli.config import load_config
    from dlcli.model import build_model

    cfg = load_config(target / "config.yaml" if target.is_dir() else target, overrides)
    built = build_model(cfg.model)
    reporter.table(
        summary_table(built.layers, built.input_shape, built.total_params, built.trainable_params)
    )
    return {
        "layers": [
            {
                "name": i.name,
                "type": i.kind,
                "output_shape": list(i.output_shape),
                "params": i.params,
            }
            for i in built.layers
        ],
        "total_params": built.total_params,
        "trainable_params": built.trainable_params,
    }


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where datasets are kept (NAME/ goes inside).  [default: $DLCLI_DATA_DIR or data]",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="URL|DIR",
    help="Try this mirror first: a base URL, a file:// URL or a local directory (repeatable; "
    "default: $DLCLI_MIRROR). The dataset's own mirrors are tried after.",
)
@click.option("--force", is_flag=True, help="Download again even when valid files are present.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Network timeout for connecting and for each read.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Retries per URL after a timeout, a connection error or an HTTP 5xx.",
)
@click.option("--list", "list_only", is_flag=True, help="List the known datasets and exit.")
@dlcli_command
def download(
    reporter: Reporter,
    name: str | None,
    data_dir: Path | None,
    mirrors: tuple[str, ...],
    force: bool,
    timeout: float,
    retries: int,
    list_only: bool,
) -> dict[str, Any]:
    """Download the archives of dataset NAME into DATA_DIR/NAME, verified by SHA-256.

    Files already present and valid are kept; an interrupted download resumes.

    \b
    Examples:
      dlcli download fashion-mnist
      dlcli download mnist --mirror /mnt/datasets/mnist    (an offline copy)
      dlcli download --list
    """
    from dlcli.data.download import default_data_dir, download_dataset
    from dlcli.data.registry import get_entry
    from dlcli.download_display import DownloadDisplay
    from dlcli.errors import UsageError

    if list_only:
        return _list_datasets(reporter)
    if name is None:
        raise UsageError("missing the dataset NAME (`dlcli download --list` shows them)")
    entry = get_entry(name)
    root = data_dir if data_dir is not None else default_data_dir()
    with DownloadDisplay(reporter) as display:
        files = download_dataset(
            entry,
            root,
            mirrors=mirrors,
            force=force,
            timeout=timeout,
            retries=retries,
            on_event=display,
        )
    fetched = sum(f.status == "downloaded" for f in files)
    reporter.result_line(
        f"{entry.name}: {len(files)} files verified in {root / entry.name} "
        f"({fetched} downloaded, {len(files) - fetched} already present)"
    )
    return {
        "dataset": entry.name,
        "path": root / entry.name,
        "files": [
            {
                "role": f.role,
                "filename": f.filename,
                "path": f.path,
                "size": f.size,
                "sha256": f.sha256,
                "status": f.status,
                "url": f.url,
            }
            for f in files
        ],
    }


def _list_datasets(reporter: Reporter) -> dict[str, Any]:
    from rich.table import Table

    from dlcli.data.registry import REGISTRY

    table = Table(title="Datasets")
    for column in ("name", "classes", "size", "license"):
        table.add_column(column)
    for entry in REGISTRY.values():
        size = f"{entry.total_size / 2**20:.1f} MiB"
        table.add_row(entry.name, str(entry.num_classes), size, entry.license)
    reporter.table(table)
    return {
        "datasets": [
            {
                "name": e.name,
                "description": e.description,
                "num_classes": e.num_classes,
                "class_names": list(e.class_names),
                "size": e.total_size,
                "license": e.license,
                "homepage": e.homepage,
            }
            for e in REGISTRY.values()
        ]
    }


# --- predict / export: use a trained model ---------------------------------------------------

_TABLE_ROWS = 50  # predictions shown in the human table; --csv and --json give them all


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument(
    "inputs", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="List the K most probable classes of each input.",
)
@click.option("--csv", "csv_mode", is_flag=True, help="Print the predictions as CSV on stdout.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@dlcli_command
def predict(
    reporter: Reporter,
    model_dir: Path,
    inputs: tuple[Path, ...],
    top_k: int,
    csv_mode: bool,
    batch_size: int,
    device: str,
) -> dict[str, Any] | None:
    """Classify INPUT files with a saved model: IDX archives, .npy arrays, PNG/JPEG images.

    Prints each input's class index, class name and probability (softmax), or the K best
    with --top-k. Images are converted to the model's channels and resized to its input.

    \b
    Examples:
      dlcli predict runs/fashion-mnist-mlp data/fashion-mnist/t10k-images-idx3-ubyte.gz --csv
      dlcli predict runs/fashion-mnist-mlp shoe.png boot.jpg --top-k 3
    """
    from dlcli.errors import UsageError
    from dlcli.predict import predict as predict_inputs
    from dlcli.report import predictions_table

    if csv_mode and reporter.json_mode:
        raise UsageError("--csv and --json both print the predictions: give one of them")
    result = predict_inputs(
        model_dir, list(inputs), top_k=top_k, batch_size=batch_size, device=device
    )
    count = len(result.predictions)
    reporter.note(f"{count:,} inputs predicted in {result.seconds:.2f}s")
    if csv_mode:
        reporter.write(_csv_text(result.csv_rows(min(top_k, len(result.class_names)))))
        return None
    document = result.to_dict()
    files = list(dict.fromkeys(map(str, inputs)))
    only = files[0] if len(files) == 1 else None
    reporter.table(predictions_table(document["predictions"][:_TABLE_ROWS], top_k, only))
    if count > _TABLE_ROWS:
        reporter.result_line(
            f"... and {count - _TABLE_ROWS:,} more: --csv or --json lists every prediction"
        )
    return document


def _csv_text(rows: list[list[Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="The file format.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The file to write.  [default: MODEL_DIR/model.onnx]",
)
@dlcli_command
def export(reporter: Reporter, model_dir: Path, fmt: str, out: Path | None) -> dict[str, Any]:
    """Export a saved model as an ONNX file with a dynamic batch axis.

    The file takes "images", float32 N×C×H×W pixel values divided by 255, and returns
    "logits", float32 N×classes. It is checked with onnxruntime against PyTorch before it is
    written. Needs the onnx extra: pip install 'dlcli[onnx]'.
    """
    from dlcli.export import export_onnx

    reporter.note(f"exporting {model_dir} to {fmt}...")
    result = export_onnx(model_dir, out)
    reporter.result_line(
        f"wrote {result.path} ({result.size / 1024:.0f} KiB, opset {result.opset}); "
        f"onnxruntime matches PyTorch within {result.max_abs_diff:.1e}"
    )
    return result.to_dict()


# --- init / config: write and check configs ---------------------------------------------------


@cli.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--template",
    type=click.Choice(["mlp", "cnn"]),
    default="mlp",
    show_default=True,
    help="mlp: the KotlinDL seed model; cnn: a small convolutional network.",
)
@click.option(
    "--dataset",
    default="fashion-mnist",
    show_default=True,
    help="A registry dataset (dlcli download --list).",
)
@click.option("--force", is_flag=True, help="Overwrite PATH when it exists.")
@dlcli_command
def init(
    reporter: Reporter, path: Path | None, template: str, dataset: str, force: bool
) -> dict[str, Any]:
    """Write a commented starter config to PATH that trains as is.

    PATH defaults to DATASET-TEMPLATE.yaml in the current directory.
    """
    from dlcli.config_tools import write_starter

    path = path if path is not None else Path(f"{dataset}-{template}.yaml")
    write_starter(path, template=template, dataset=dataset, force=force)
    reporter.result_line(f"wrote {path}; train it with: dlcli train {path}")
    return {
        "path": str(path),
        "template": template,
        "dataset": dataset,
        "command": f"dlcli train {path}",
    }


@cli.group(name="config")
def config_group() -> None:
    """Show a config resolved, or validate it (for pre-commit hooks and CI)."""


@config_group.command(name="show")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@dlcli_command
def config_show(reporter: Reporter, config: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Print CONFIG resolved (defaults filled in, --set applied) as YAML, with each key's doc
    as a comment; --json prints it as a JSON document."""
    from dlcli.config import load_config, to_dict
    from dlcli.config_tools import commented_yaml

    cfg = load_config(config, overrides)
    if not reporter.json_mode:
        reporter.write(commented_yaml(cfg, source=str(config)))
    return to_dict(cfg)


@config_group.command(name="validate")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@dlcli_command
def config_validate(reporter: Reporter, config: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Check CONFIG: its keys and values, and its model's shapes (exit 0: valid, 2: not).

    Builds the model (a kernel larger than its input, a missing flatten or a last layer with
    the wrong number of classes is caught) but reads no data.
    """
    from dlcli.config_tools import validate_config

    result = validate_config(config, overrides)
    reporter.result_line(
        f"{config}: valid ({result['layers']} layers, {result['total_params']:,} parameters, "
        f"{result['num_classes']} classes)"
    )
    return result


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dlcli")
