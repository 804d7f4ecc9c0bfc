"""``dlcli predict`` and ``dlcli export``: use a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dlcli.cli.base import (
    NonEmptyPath,
    batch_size_option,
    cli,
    device_option,
    dlcli_command,
    run_dir_argument,
    tta_option,
    weights_option,
)
from dlcli.report import Reporter, counted

# --- predict / export: use a trained model ---------------------------------------------------

_TABLE_ROWS = 50  # predictions shown in the human table; --csv and --json give them all


@cli.command()
@run_dir_argument()
@click.argument(
    "inputs", metavar="INPUT...", nargs=-1, required=True, type=NonEmptyPath(path_type=Path)
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="List the K most probable classes of each input.",
)
@click.option("--csv", "csv_mode", is_flag=True, help="Print the predictions as CSV on stdout.")
@batch_size_option
@device_option()
@weights_option
@tta_option
@dlcli_command
def predict(
    reporter: Reporter,
    model_dir: Path,
    inputs: tuple[Path, ...],
    top_k: int,
    csv_mode: bool,
    batch_size: int,
    device: str,
    weights: str,
    tta: str | None,
) -> dict[str, Any] | None:
    """Classify images with a saved model.

    INPUT files: IDX archives, .npy arrays, PNG/JPEG images.

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
        model_dir,
        list(inputs),
        top_k=top_k,
        batch_size=batch_size,
        device=device,
        weights=weights,
        tta=tta,
    )
    count = len(result.predictions)
    reporter.note(f"{counted(count, 'input')} predicted in {result.seconds:.2f}s")
    if csv_mode:
        reporter.write(_csv_text(result.csv_rows(min(top_k, len(result.class_names)))))
        return None
    document = result.to_dict()
    # The file goes in the title only when every prediction comes from it; a folder or a
    # pattern names many files, each shown in its row.
    files = list(dict.fromkeys(p.source for p in result.predictions))
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
@run_dir_argument()
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
    type=NonEmptyPath(dir_okay=False, path_type=Path),
    help="The file to write.  [default: MODEL_DIR/model.onnx; with --weights best|last: "
    "model-best.onnx, model-last.onnx]",
)
@weights_option
@dlcli_command
def export(
    reporter: Reporter, model_dir: Path, fmt: str, out: Path | None, weights: str
) -> dict[str, Any]:
    """Export a saved model as an ONNX file with a dynamic batch axis.

    The file takes "images", float32 N×C×H×W pixel values divided by 255, and returns
    "logits", float32 N×classes. It is checked with onnxruntime against PyTorch before it is
    written. Needs the onnx extra: pip install 'dlcli[onnx]'.
    """
    from dlcli.export import export_onnx

    reporter.note(f"exporting {model_dir} to {fmt}...")
    result = export_onnx(model_dir, out, weights)
    reporter.result_line(
        f"wrote {result.path} ({result.size / 1024:.0f} KiB, opset {result.opset}); "
        f"onnxruntime matches PyTorch within {result.max_abs_diff:.1e}"
    )
    return result.to_dict()
