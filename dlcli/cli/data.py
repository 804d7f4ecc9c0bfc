"""``dlcli download``: fetch and verify a registry dataset; ``dlcli data check``: check your own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dlcli.cli.base import (
    SECONDS,
    NonBlank,
    NonEmptyPath,
    _set_option,
    cli,
    complete_datasets,
    dlcli_command,
)
from dlcli.limits import DOWNLOAD_DEADLINE_S, WORKERS_MAX
from dlcli.report import Reporter


@cli.command()
@click.argument("name", required=False, shell_complete=complete_datasets)
@click.option(
    "--data-dir",
    type=NonEmptyPath(file_okay=False, path_type=Path),
    help="Where datasets are kept (NAME/ goes inside).  [default: $DLCLI_DATA_DIR or data]",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    type=NonBlank("a mirror: a URL or a directory"),
    metavar="URL|DIR",
    help="Try this mirror first: a base URL, a file:// URL or a local directory (repeatable; "
    "default: $DLCLI_MIRROR). The dataset's own mirrors are tried after.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Download again, replacing the files present (valid or not).",
)
@click.option(
    "--timeout",
    type=SECONDS,
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
    type=SECONDS,
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
    """Download and verify a registry dataset.

    The archives of dataset NAME go into DATA_DIR/NAME, verified by SHA-256.

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
        if name is not None:  # it listed and downloaded nothing, exit 0: the download skipped
            raise UsageError(
                f"--list lists the datasets and downloads nothing: give it without a NAME "
                f"(found {name!r}), or drop it to download {name!r}"
            )
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
    for column in ("name", "classes", "shape (H×W×C)", "size", "license"):
        table.add_column(column)
    for entry in REGISTRY.values():
        size = f"{entry.total_size / 2**20:.1f} MiB"
        shape = "×".join(map(str, entry.input_shape))
        table.add_row(entry.name, str(entry.num_classes), shape, size, entry.license)
    reporter.table(table)
    return {
        "datasets": [
            {
                "name": e.name,
                "description": e.description,
                "num_classes": e.num_classes,
                "class_names": list(e.class_names),
                "input_shape": list(e.input_shape),
                "format": e.format,
                "size": e.total_size,
                "license": e.license,
                "homepage": e.homepage,
            }
            for e in REGISTRY.values()
        ]
    }


# --- data check: your own data, before training -----------------------------------------------


_IGNORED_SHOWN = 20  # ignored files named in the human output; --json lists all


@cli.group(name="data")
def data_group() -> None:
    """Check your own images before training on them.

    Class folders, a path,label CSV, an .npz or IDX archives.
    """


@data_group.command(name="check")
@click.argument("target", metavar="PATH|CONFIG", type=NonEmptyPath(path_type=Path))
@_set_option
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=WORKERS_MAX),
    help="Processes decoding images.  [default: every core]",
)
@dlcli_command
def data_check(
    reporter: Reporter, target: Path, overrides: tuple[str, ...], workers: int | None
) -> dict[str, Any]:
    """Check a dataset's files as train would read them.

    PATH is a folder of class folders, a path,label CSV, an .npz or an IDX archive (a folder
    holding train/ and test/ is both), or a CONFIG whose data is checked.

    Reports images per class and split, image sizes and modes, every file that cannot be read,
    duplicate files, files in both train and test, and class imbalance. Exit 3 when a file
    cannot be read (what `dlcli train` would stop on), else 0.

    \b
    Examples:
      dlcli data check pets/
      dlcli data check pets.yaml --json
    """
    from dlcli.data.check import check_target
    from dlcli.errors import DataError

    report = check_target(target, overrides, workers=workers)
    document = report.to_dict()
    _show_check(reporter, document)
    count = report.unreadable
    if count:
        raise DataError(
            f"{count} file{'s' if count != 1 else ''} cannot be read (listed above); "
            "fix or remove them, or train with data.skip_bad_files: true",
            document=document,
        )
    return document


def _show_check(reporter: Reporter, document: dict[str, Any]) -> None:
    from rich.table import Table

    from dlcli.report import escape
    from dlcli.untrusted import printable

    splits = document["splits"]
    classes = list(dict.fromkeys(c for s in splits.values() for c in s["per_class"]))
    table = Table(title="Images per class")
    table.add_column("class")
    for name in splits:
        table.add_column(name, justify="right")
    for cls in classes:
        table.add_row(escape(cls), *(f"{s['per_class'].get(cls, 0):,}" for s in splits.values()))
    table.add_row("total", *(f"{s['images']:,}" for s in splits.values()), style="bold")
    reporter.table(table)
    summary = Table(title="Files")
    for column in ("split", "source", "sizes (HxW)", "modes", "unreadable", "ignored", "dupes"):
        summary.add_column(column)
    for name, s in splits.items():
        summary.add_row(
            name,
            escape(f"{s['source']} ({s['kind']})"),
            _counts(s["sizes"]),
            _counts(s["modes"]),
            str(len(s["unreadable"])),
            str(len(s["ignored"]) + len(s["links"])),
            str(sum(len(g) - 1 for g in s["duplicates"])),
        )
    reporter.table(summary)

    def line(text: str) -> None:  # one line each: a name's line break is shown as \n
        reporter.note(printable(text))

    for name, s in splits.items():
        for bad in s["unreadable"]:
            line(f"unreadable ({name}): {bad['path']}: {bad['reason']}")
        for group in s["duplicates"]:
            line(f"duplicates ({name}): {' = '.join(group)}")
        for path in s["ignored"][:_IGNORED_SHOWN]:
            line(f"ignored, not an image ({name}): {path}")
        if len(s["ignored"]) > _IGNORED_SHOWN:
            line(f"... and {len(s['ignored']) - _IGNORED_SHOWN} more ignored (--json)")
        for link in s["links"][:_IGNORED_SHOWN]:
            line(f"ignored ({name}): {link['path']}: {link['reason']}")
        if len(s["links"]) > _IGNORED_SHOWN:
            line(f"... and {len(s['links']) - _IGNORED_SHOWN} more folder links (--json)")
    for group in document["in_train_and_test"]:
        line(f"in train and test: {' = '.join(group)}")
    for note in document["notes"]:
        line(f"note: {note}")


def _counts(counts: dict[str, int], shown: int = 4) -> str:
    items = [f"{key} ×{value:,}" for key, value in list(counts.items())[:shown]]
    more = f", +{len(counts) - shown} more" if len(counts) > shown else ""
    return ", ".join(items) + more
