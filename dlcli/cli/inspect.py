"""``dlcli plot``, ``dlcli runs`` and ``dlcli summary``: see what a run did."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from dlcli.cli.base import (
    NonEmptyPath,
    _set_option,
    batch_size_option,
    cli,
    complete_run_dirs,
    data_dir_option,
    device_option,
    dlcli_command,
    run_dir_argument,
)
from dlcli.report import Reporter, summary_table

# --- plot / runs: see what happened ------------------------------------------------------------


@cli.command()
@run_dir_argument("run_dir")
@click.option(
    "--out",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    help="Where the PNG files go.  [default: RUN_DIR/plots]",
)
@click.option(
    "--split",
    type=click.Choice(["validation", "test", "train"]),
    default="validation",
    show_default=True,
    help="The split the confusion matrix is computed on.",
)
@batch_size_option
@data_dir_option
@device_option()
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="Plot even when a data file differs from the one the model was trained with.",
)
@dlcli_command
def plot(
    reporter: Reporter,
    run_dir: Path,
    out: Path | None,
    split: str,
    batch_size: int,
    data_dir: str | None,
    device: str,
    accept_changed_data: bool,
) -> dict[str, Any]:
    """Plot a run's training curves and confusion matrix.

    PNG files: a curve per metric (per epoch, and per step where recorded), the learning rate,
    and a confusion-matrix heatmap of the saved model on --split.

    Needs matplotlib: pip install 'dlcli[plot]'.
    """
    from dlcli.plot import plot_run

    result = plot_run(
        run_dir,
        out,
        split=split,
        batch_size=batch_size,
        data_dir=data_dir,
        device=device,
        accept_changed_data=accept_changed_data,
    )
    for path in result.files:
        reporter.result_line(f"wrote {path}")
    return {"run_dir": str(run_dir), "out_dir": str(result.out_dir), "files": result.files}


@cli.group()
def runs() -> None:
    """List and compare saved runs.

    Key config values and final metrics, read from the run directories.
    """


@runs.command("list")
@click.argument(
    "directory",
    type=NonEmptyPath(path_type=Path),  # a file: exit 3, as a missing folder (dlcli.runs)
    required=False,
    shell_complete=complete_run_dirs,
)
@dlcli_command
def runs_list(reporter: Reporter, directory: Path | None) -> dict[str, Any]:
    """List the runs in DIRECTORY, one row each.

    DIRECTORY defaults to runs/ (none there yet: no runs, exit 0; a DIRECTORY given that is
    not there: exit 3). Each run's config, metrics and history are checked against
    its manifest.json first: a run whose files were edited or damaged is marked DAMAGED, with
    the reason, and none of its values are shown (JSON: under "damaged", not "runs").
    """
    from dlcli.report import runs_table
    from dlcli.runs import DEFAULT_ROOT, list_runs

    given, directory = directory, directory or DEFAULT_ROOT
    listing = list_runs(directory, missing_ok=given is None)
    rows = [run.to_dict() for run in listing.runs]
    damaged = _skipped(listing.damaged)
    if rows or damaged:
        reporter.table(runs_table(f"Runs in {directory}", rows, damaged))
    elif listing.missing:
        reporter.note(f"no runs yet in {directory}{os.sep} (train one: dlcli train CONFIG)")
    else:
        reporter.note(f"no complete runs in {directory}")
    for item in listing.damaged:
        reporter.note(f"damaged {item.path}: {item.reason}")
    _note_skipped(reporter, listing.skipped)
    if listing.not_runs:
        count = len(listing.not_runs)
        reporter.note(
            f"{count} other folder{'s' if count > 1 else ''} in {directory} "
            f"{'are not runs' if count > 1 else 'is not a run'} (no files dlcli writes)"
        )
    return {
        "directory": str(directory),
        "runs": rows,
        "damaged": damaged,
        "skipped": _skipped(listing.skipped),
        "not_runs": [str(path) for path in listing.not_runs],
    }


@runs.command("compare")
@click.argument(
    "run_dirs",
    nargs=-1,
    required=True,
    type=NonEmptyPath(path_type=Path),  # a file: exit 3, as a missing folder (dlcli.runs)
    shell_complete=complete_run_dirs,
)
@dlcli_command
def runs_compare(reporter: Reporter, run_dirs: tuple[Path, ...]) -> dict[str, Any]:
    """Put runs side by side, differences marked.

    Config values of RUN_DIRS (those that differ highlighted) and their final metrics.
    Each run is checked against its manifest.json first: a damaged run (a file edited,
    truncated or removed since training) is refused, exit 3, naming it; an incomplete one
    (no manifest.json) is skipped with a note. A run named twice is refused, exit 2.
    """
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


def _layer_row(info: Any) -> dict[str, Any]:
    """One summary row as JSON; a residual block lists its own layers under ``layers``."""
    row = {
        "name": info.name,
        "type": info.kind,
        "output_shape_hwc": list(info.output_shape_hwc),
        "params": info.params,
    }
    if info.inner:
        row["layers"] = [_layer_row(i) for i in info.inner]
    return row


@cli.command()
@click.argument("target", type=NonEmptyPath(exists=True, path_type=Path))
@_set_option
@dlcli_command
def summary(reporter: Reporter, target: Path, overrides: tuple[str, ...]) -> dict[str, Any]:
    """Show a model's layers, output shapes and parameters.

    TARGET is a CONFIG file or a saved MODEL_DIR.
    """
    from dlcli.config import load_config
    from dlcli.errors import ModelDirError
    from dlcli.model import build_model, hwc

    if target.is_dir() and not (target / "config.yaml").is_file():  # not "DIR/config.yaml:
        raise ModelDirError(  # config file not found", a file the user never named
            f"{target}: not a saved model directory (no config.yaml in it); TARGET is a "
            "CONFIG file or a saved MODEL_DIR"
        )
    if target.is_dir():  # a run's config.yaml, as evaluate reads it (an older dlcli's too)
        cfg = load_config(target / "config.yaml", overrides, saved=True)
    else:
        cfg = load_config(target, overrides)
    if cfg.model.input_shape is None and cfg.data.train is not None:
        from dlcli.config_tools import infer_from_data

        infer_from_data(cfg)  # what training will infer, from the images' headers
    built = build_model(cfg.model)
    reporter.table(
        summary_table(
            built.layers, hwc(built.input_shape), built.total_params, built.trainable_params
        )
    )
    return {
        "layers": [_layer_row(i) for i in built.layers],
        "total_params": built.total_params,
        "trainable_params": built.trainable_params,
    }
