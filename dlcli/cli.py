"""The ``dlcli`` command line: a thin click layer over the library.

Each command parses its options, calls one library function, and reports the result. Errors
are mapped to exit codes in one place, :func:`dlcli_command`; the codes are documented in
``dlcli.errors`` and the README. torch is imported only inside the commands that need it, so
``dlcli --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dlcli import __version__
from dlcli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DlcliError
from dlcli.report import Reporter, metrics_table, summary_table

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Run directory.")
@click.option("--device", help="auto | cpu | cuda | cuda:N (overrides training.device).")
@click.option("--seed", type=int, help="Random seed (overrides training.seed).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@dlcli_command
def train(
    reporter: Reporter,
    config: Path,
    overrides: tuple[str, ...],
    output: str | None,
    device: str | None,
    seed: int | None,
    overwrite: bool,
) -> dict[str, Any]:
    """Train the model a YAML CONFIG describes, evaluate it and save the run directory."""
    from dlcli import pipeline
    from dlcli.config import load_config
    from dlcli.progress import ProgressDisplay

    flags = {"output.dir": output, "training.device": device, "training.seed": seed}
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    cfg = load_config(config, [*overrides, *extra])
    prepared = pipeline.prepare(cfg, overwrite=overwrite)
    _announce(reporter, prepared)
    result = pipeline.train(prepared, callbacks=[ProgressDisplay(reporter)])
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
    reporter.note(f"saved {result.run_dir}")
    return {"run_dir": str(result.run_dir), **metrics}


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
@dlcli_command
def evaluate(
    reporter: Reporter,
    model_dir: Path,
    splits: tuple[str, ...],
    batch_size: int,
    data_dir: str | None,
    device: str,
) -> dict[str, Any]:
    """Metrics of a saved model directory on its validation and/or test split."""
    from dlcli import pipeline

    results = pipeline.evaluate(
        model_dir,
        splits=splits or ("validation", "test"),
        batch_size=batch_size,
        data_dir=data_dir,
        device=device,
    )
    shown = {
        name: {k: v for k, v in m.items() if k not in ("seconds", "samples")}
        for name, m in results.items()
    }
    reporter.table(metrics_table(f"Metrics of {model_dir}", shown))
    return {"model_dir": str(model_dir), "metrics": results}


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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dlcli")
