"""``dlcli download``: fetch and verify a registry dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dlcli.cli.base import cli, dlcli_command
from dlcli.limits import DOWNLOAD_DEADLINE_S
from dlcli.report import Reporter


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
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=DOWNLOAD_DEADLINE_S,
    show_default=True,
    metavar="SECONDS",
    help="Total time one file may take from one mirror (retries included); then the next "
    "mirror is tried.",
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
    deadline: float,
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
            deadline=deadline,
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
