"""Everything a person or a script sees: rich tables and progress on a terminal, plain lines in
CI logs, one JSON document on stdout under ``--json``.

Library code never prints; it hands events to callbacks (see ``dlcli.engine``), and the CLI
hands those a :class:`Reporter`.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO, cast

from rich import box
from rich.console import Console
from rich.markup import escape as markup_escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from dlcli import metric_names
from dlcli.errors import DlcliError, OutputError, write_problem
from dlcli.signals import discard_output
from dlcli.untrusted import printable


class Reporter:
    """Where output goes for one command invocation.

    * ``out``: results (tables, predictions) — stdout, or stderr under ``--json`` so that stdout
      carries exactly one JSON document.
    * ``err``: progress, notes and errors — always stderr.

    Under ``--json --quiet`` the human results are dropped too: stderr carries only errors.
    """

    def __init__(
        self, *, json_mode: bool = False, quiet: bool = False, no_color: bool = False
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        no_color = no_color or bool(os.environ.get("NO_COLOR"))  # no-color.org: set, not empty
        self.streams = (Stream("stdout", sys.stdout), Stream("stderr", sys.stderr))
        self._stdout, stderr = self.streams
        width = console_width()
        self.err = Console(
            file=cast(TextIO, stderr),
            no_color=no_color,
            highlight=False,
            soft_wrap=True,
            width=width,
        )
        if json_mode:
            self.out = self.err
        else:
            self.out = Console(
                file=cast(TextIO, self._stdout),
                no_color=no_color,
                highlight=False,
                soft_wrap=True,
                width=width,
            )
        self._show_results = not (json_mode and quiet)
        self._silenced = False
        self._json_file: str | None = None

    def silence(self) -> None:
        """From now on print errors only, and no JSON: a distributed worker other than rank 0
        (rank 0 prints the run's progress, results and document)."""
        self.quiet = True
        self.json_mode = False
        self._show_results = False
        self._silenced = True

    @property
    def live(self) -> bool:
        """True when live progress bars may be drawn (stderr is an interactive terminal)."""
        return self.err.is_terminal and not self.quiet

    def note(self, message: str) -> None:
        """A line of human progress text on stderr (dropped under ``--quiet``)."""
        if not self.quiet:
            self.err.print(shown(message), markup=False)

    def result_line(self, message: str, *, wrap_at: str | None = None) -> None:
        """A line of the command's human result (stdout, or stderr under ``--json``). On a
        terminal narrower than the line, ``wrap_at`` (a separator) is where it may break, so
        that no name or number is cut; elsewhere it stays one line."""
        if self._show_results:
            message = shown(message)
            if wrap_at and self.out.is_terminal:
                message = wrap_fields(message.split(wrap_at), self.out.width, sep=wrap_at)
            self.out.print(message, markup=False)

    def table(self, table: Table) -> None:
        """A result table: drawn by rich on a terminal, plain aligned text elsewhere."""
        if self._show_results:
            _print_table(self.out, table)

    def note_table(self, table: Table) -> None:
        """A table of human progress text on stderr (the model summary; not under --quiet)."""
        if not self.quiet:
            _print_table(self.err, table)

    def write(self, text: str) -> None:
        """Verbatim text as the command's result (YAML, CSV): no markup, wrapping or colour."""
        if self._show_results:
            self.out.file.write(text)
            self.out.file.flush()

    def emit_json(self, document: Mapping[str, Any]) -> None:
        """Write the command's one JSON document to stdout (only under ``--json``)."""
        if self.json_mode:
            text = json.dumps(_finite(document), indent=2, default=_json_default)
            if self._json_file is not None:
                with open(self._json_file, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
                return
            self._stdout.write(text + "\n")
            self._stdout.flush()

    def json_to_file(self, path: str) -> None:
        """Write the JSON document to ``path`` instead of stdout: the rank-0 worker of
        ``train --nproc-per-node``, whose launcher prints it (with what the job ended as)."""
        self._json_file = path

    def output_lost(self) -> OutputError | None:
        """The error to end with when stdout or stderr could not be written (a full disk, a
        terminal gone) and the output from then on was lost; None when both were written, or
        when only the reader of a pipe left (EPIPE: ``dlcli runs list | head -1`` wants no more
        lines and no word about it, as with any Unix tool)."""
        for stream in self.streams:
            failure = stream.failure
            if failure is not None and failure.errno != errno.EPIPE:
                return OutputError(
                    f"could not write to {stream.name}: {write_problem(failure)}; what the "
                    f"command printed there from then on was lost (it ran to its end)"
                )
        return None

    def error(self, err: DlcliError | str, *, code: int, kind: str = "internal") -> None:
        """Report an error: one message on stderr, and a JSON document under ``--json``
        (the error's ``document``, e.g. the metrics a gate rejected, with ``error`` added)."""
        message = str(err)
        if self._silenced and kind in ("interrupted", "gate"):  # every worker's; rank 0 says it
            return
        # The message and each detail on a line of its own; a name in them keeps to its line.
        # A str is dlcli's own words (an internal error), in their lines.
        lines = err.lines() if isinstance(err, DlcliError) else err.split("\n")
        text = "\n".join(shown(line) for line in lines)
        self.err.print(f"Error: {text}", style="bold red", markup=False)
        if self.json_mode:
            document = dict(err.document or {}) if isinstance(err, DlcliError) else {}
            document["error"] = {"code": code, "kind": kind, "message": message}
            self.emit_json(document)


def shown(message: str) -> str:
    """A line of a message as it may reach a terminal: every character a terminal acts on
    written as its escape (``\x1b``, ``\n``). Messages name files, folders and classes: a
    folder named ESC[31m recoloured the terminal, other sequences retitle or rewrite it, and a
    name with a line break split its note in two (a message of several lines is printed line
    by line: an error's details, a wrapped epoch line)."""
    return printable(message)


def escape(text: str) -> str:
    """A file's, folder's or class's name as a table cell: rich markup escaped (a class
    folder named [x] showed as an empty name, [bold]b as a bold b) and every character a
    terminal acts on written as its escape."""
    return markup_escape(printable(text))


def console_width() -> int | None:
    """The width to give rich: ``None`` (rich asks the terminal, or reads ``COLUMNS``) unless
    ``COLUMNS`` is 0, which rich takes as a width of 0 and then prints nothing at all, error
    messages included; then the terminal's width, else 80 (what a 0 from the terminal gets)."""
    columns = os.environ.get("COLUMNS", "")
    if not columns.isdigit() or int(columns) > 0:
        return None
    import shutil

    return shutil.get_terminal_size().columns  # skips COLUMNS=0: the terminal's, else 80


class Stream(io.TextIOBase):
    """stdout or stderr as the :class:`Reporter` writes to it: a write that fails (the reader of
    a pipe gone: EPIPE; a full disk: ENOSPC; a terminal hung up: EIO) never ends the command, a
    training run least of all. The first failure is kept in ``failure``, the file descriptor is
    pointed at /dev/null (Python's own flush at exit would fail again) and later writes are
    dropped; the command layer ends with :meth:`Reporter.output_lost`."""

    def __init__(self, name: str, file: TextIO) -> None:
        self.name = name
        self.file = file
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                return self.file.write(text)
            except OSError as err:
                self._failed(err)
        return len(text)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self.file.flush()
            except OSError as err:
                self._failed(err)

    def _failed(self, err: OSError) -> None:
        self.failure = err
        try:
            fd = self.file.fileno()
        except (OSError, ValueError):  # not a real file (click's test runner)
            return
        discard_output(fd)

    def isatty(self) -> bool:
        return self.file.isatty()

    def fileno(self) -> int:
        return self.file.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.file.encoding


def _print_table(console: Console, table: Table) -> None:
    """On a terminal, rich's table when it fits; on one too narrow for it (rich cut cells: lr
    0.001 shown as 0.0, accuracies as 1.00…, at 5 columns every row blank), and off a
    terminal, :func:`plain_table`."""
    if console.is_terminal and _narrowest(console, table) <= console.width:
        console.print(table)
    else:  # a pipe, a file, or a terminal too narrow for the table: nothing wrapped or cut
        console.file.write(plain_table(table))
        console.file.flush()


def _narrowest(console: Console, table: Table) -> int:
    """The fewest columns rich draws ``table`` in without cutting a cell: every column as wide
    as its longest word, but a folding column with a ``min_width`` (a run name, the layers)
    folded down to it."""
    unbounded = console.options.update_width(1 << 20)  # rich's own minimum, not clamped
    width = console.measure(table, options=unbounded).minimum
    for column in table.columns:
        if column.overflow == "fold" and column.min_width and not column.no_wrap:
            cells = [column.header, *column.cells]
            words = max(Measurement.get(console, unbounded, cell).minimum for cell in cells)
            width -= max(0, words - column.min_width)
    return width


def plain_table(table: Table) -> str:
    """A table as plain text for a pipe or a file: the title, a header and one line per row,
    columns two spaces apart and padded to their widest cell, numbers right-aligned; nothing
    is wrapped or cut (a line is as long as its row), no box, no colour, no markup."""
    columns = table.columns
    header = [_plain(column.header) for column in columns]
    rows = [[_plain(cell) for cell in column.cells] for column in columns]
    count = max((len(cells) for cells in rows), default=0)
    widths = [max([len(header[i]), *map(len, rows[i])]) for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if column.justify == "right" else cell.ljust(width)
            for cell, width, column in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [_plain(table.title)] if table.title else []
    if table.show_header:
        lines.append(line(header))
    lines += [
        line([rows[c][r] if r < len(rows[c]) else "" for c in range(len(columns))])
        for r in range(count)
    ]
    if table.caption:
        lines.append(_plain(table.caption))
    return "\n".join(lines) + "\n"


def _plain(cell: Any) -> str:
    """A cell's text without markup (rich Text, a markup string, or anything else)."""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def wrap_fields(fields: Sequence[str], width: int, *, sep: str = "  ") -> str:
    """Fields joined by ``sep``, broken into lines of at most ``width`` columns between fields
    (never inside one; a field wider than a line gets a line of its own), each line after the
    first indented by two spaces."""
    lines: list[str] = []
    line = ""
    for text in fields:
        candidate = f"{line}{sep}{text}" if line else text
        if line and len(candidate) > width:
            lines.append(line.rstrip())
            candidate = "  " + text
        line = candidate
    lines.append(line)
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """What JSON cannot spell, spelt: NaN and infinities become null, and a text holding bytes
    that are not UTF-8 (a file name's, kept by Python as lone surrogates, which strict JSON
    readers refuse) shows them as ``\\xNN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _unicode(value)
    if isinstance(value, Mapping):
        return {_unicode(k) if isinstance(k, str) else k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:  # a file name's undecodable bytes, as Python keeps them: shown as those bytes
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # other lone surrogates: shown as code points
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return text


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, os.PathLike):
        return _unicode(os.fspath(value))
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``, ``10,000 inputs``, ``1 class``, ``10 classes``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural or noun + 's'}"


def metrics_table(title: str, rows: Mapping[str, Mapping[str, float]]) -> Table:
    """A table with one row per split (e.g. validation, test) and one column per metric."""
    columns: list[str] = []
    for metrics in rows.values():
        columns += [name for name in metrics if name not in columns]
    table = Table(title=escape(title))
    table.add_column("split")
    for name in columns:
        table.add_column(name, justify="right")
    for split, metrics in rows.items():
        table.add_row(split, *(_fmt(metrics.get(name)) for name in columns))
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def summary_table(
    layers: Sequence[Any], input_shape: Sequence[int], total: int, trainable: int
) -> Table:
    """KotlinDL/Keras-style model summary; shapes shown as (None, H, W, C) or (None, F).
    ``input_shape`` is (H, W, C), as the config writes it; layers have ``output_shape_hwc``."""
    table = Table(title="Model summary", caption=_param_caption(total, trainable))
    table.add_column("Layer (type)")
    table.add_column("Output shape")
    table.add_column("Param #", justify="right")
    table.add_row("input (Input)", keras_shape(input_shape), "0")
    for layer in layers:
        table.add_row(
            f"{layer.name} ({layer.kind})",
            keras_shape(layer.output_shape_hwc),
            f"{layer.params:,}",
        )
        for inner in getattr(layer, "inner", ()):  # a residual block's layers, indented
            table.add_row(
                f"  └ {inner.name} ({inner.kind})",
                keras_shape(inner.output_shape),
                f"{inner.params:,}",
            )
    return table


def _param_caption(total: int, trainable: int) -> str:
    return (
        f"Total params: {total:,}  Trainable params: {trainable:,}  "
        f"Non-trainable params: {total - trainable:,}"
    )


def keras_shape(shape: Sequence[int]) -> str:
    """(H, W, C) → "(None, H, W, C)"; (F,) → "(None, F)": the batch axis first, as Keras."""
    return "(" + ", ".join(["None", *map(str, shape)]) + ")"


# --- per-class metrics and the confusion matrix (dlcli evaluate --per-class) ----------------


def per_class_table(title: str, report: Mapping[str, Any]) -> Table:
    """Precision, recall, F1 and support per class, then the macro and weighted averages.

    ``report`` is :meth:`dlcli.metrics.PerClass.to_dict`'s plain data (what ``--json`` shows).
    """
    table = Table(title=escape(title))
    table.add_column("class")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    for row in report["classes"]:
        table.add_row(
            escape(f"{row['index']} {row['name']}"),
            *(_fmt(row[k]) for k in ("precision", "recall", "f1")),
            str(row["support"]),
        )
    total = sum(row["support"] for row in report["classes"])
    table.add_section()
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        avg = report[key]
        values = (_fmt(avg[k]) for k in ("precision", "recall", "f1"))
        table.add_row(label, *values, str(total))
    table.add_row("accuracy", "", "", _fmt(report["accuracy"]), str(total))
    return table


def confusion_table(title: str, matrix: Sequence[Sequence[int]], names: Sequence[str]) -> Table:
    """The confusion matrix: a row per true class, a column per predicted class (by index);
    the diagonal (correct) in green, mistakes in yellow, zeros dimmed."""
    table = Table(title=escape(title), caption="rows: true class · columns: predicted class")
    table.add_column("true \\ predicted")
    for index in range(len(names)):
        table.add_column(str(index), justify="right")
    for i, (name, row) in enumerate(zip(names, matrix, strict=True)):
        cells = [_confusion_cell(int(count), i == j) for j, count in enumerate(row)]
        table.add_row(escape(f"{i} {name}"), *cells)
    return table


def _confusion_cell(count: int, diagonal: bool) -> str:
    if diagonal:
        return f"[bold green]{count}[/]"
    return f"[yellow]{count}[/]" if count else "[dim]0[/]"


# --- runs list / compare -----------------------------------------------------------------------


def runs_table(
    title: str, runs: Sequence[Mapping[str, Any]], damaged: Sequence[Mapping[str, Any]] = ()
) -> Table:
    """One row per run (``RunInfo.to_dict()``): key config values and final accuracy (loss
    when a run has no accuracy); ``--json`` has every metric. A damaged run (``path`` and
    ``reason``) is a row marked DAMAGED with no values: none of them can be trusted."""
    config_keys: list[str] = []
    metric_keys: list[str] = []
    for run in runs:
        config_keys += [k for k in run["config"] if k not in config_keys]
        metric_keys += [k for k in run["metrics"] if k not in metric_keys]
    name = "accuracy" if any(k.endswith("_accuracy") for k in metric_keys) else "loss"
    tags = (metric_names.tag(name, split) for split in ("validation", "test"))
    shown = [k for k in tags if k in metric_keys]
    # Narrow: a compact box, folding only the run name, dataset and layers.
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    widths = {"dataset": 7, "layers": 14}
    table.add_column("run", style="bold", overflow="fold", min_width=6)
    for key in config_keys:
        header = {"batch_size": "batch"}.get(key, key)
        table.add_column(
            header, overflow="fold", min_width=widths.get(key), no_wrap=key not in widths
        )
    for key in shown:
        table.add_column(_short(key), justify="right", no_wrap=True)
    table.add_column("best", justify="right", no_wrap=True)
    for run in runs:
        table.add_row(
            escape(run["name"]),
            *(escape(_config_cell(run, k)) for k in config_keys),
            *(_fmt(run["metrics"].get(k)) for k in shown),
            _fmt(run["summary"].get("best_epoch")),
        )
    for item in damaged:  # the reason is a note below the table
        table.add_row(escape(os.path.basename(item["path"])), "DAMAGED", style="red")
    return table


def _config_cell(run: Mapping[str, Any], key: str) -> str:
    """A run's config value; its ``epochs`` as trained/configured (``3/10``) when it ended
    before training.epochs (early stopping, a target), as the final table counts them."""
    value = run["config"].get(key)
    trained = run["summary"].get("epochs")
    if key == "epochs" and isinstance(trained, int) and trained != value:
        return f"{trained}/{_fmt_value(value)}"
    return _fmt_value(value)


def _short(metric: str) -> str:
    """``val_accuracy`` → ``val acc`` (narrow column headers)."""
    return metric.replace("top_k_accuracy", "top-k").replace("accuracy", "acc").replace("_", " ")


def compare_table(names: Sequence[str], rows: Sequence[Any]) -> Table:
    """Runs side by side (a column each); rows whose values differ are marked and highlighted,
    the best value of each metric is green. ``rows`` are :class:`dlcli.runs.Row`."""
    table = Table(title="Runs compared", caption="≠ marks a config value that differs")
    table.add_column("")
    table.add_column("key")
    for name in names:
        table.add_column(escape(name), justify="right", overflow="fold")
    for row in rows:
        style = "bold yellow" if row.differs else ""
        cells = [escape(_fmt_cell(row.label, v, row.metric)) for v in row.values]
        if row.best is not None:
            cells[row.best] = f"[bold green]{cells[row.best]}[/]"
        table.add_row("≠" if row.differs else "", escape(row.label), *cells, style=style)
    return table


def _fmt_cell(label: str, value: Any, metric: bool) -> str:
    if label == "samples_per_second" and isinstance(value, float):
        return f"{value:,.0f}"
    return _fmt(value) if metric else _fmt_value(value)


def _fmt_value(value: Any) -> str:
    """Config values as written: floats not rounded (a learning rate of 3e-4 stays 3e-4)."""
    if isinstance(value, float):
        return f"{value:g}"
    return _fmt(value)


def fit_summary_line(summary: Mapping[str, Any], run_dir: Any) -> str:
    """``best epoch 7 (val_loss 0.3121) · 2.41 s/epoch · 23,651 samples/s · saved runs/x``."""
    parts = []
    if summary.get("best_epoch") is not None:
        parts.append(
            f"best epoch {summary['best_epoch']} "
            f"({summary['monitor']} {_fmt(summary.get('best_value'))})"
        )
    if summary.get("seconds_per_epoch") is not None:
        parts.append(f"{summary['seconds_per_epoch']:.2f} s/epoch")
    if summary.get("samples_per_second") is not None:
        parts.append(f"{summary['samples_per_second']:,.0f} samples/s")
    weights = summary.get("weights") or {}
    held = ""
    if weights.get("why") == "last":
        held = f" (model.safetensors: the last epoch, {weights.get('epoch')})"
    elif weights:
        held = (
            f" (model.safetensors: epoch {weights.get('epoch')}, the {weights.get('why')}, "
            "restored by early stopping)"
        )
    parts.append(f"saved {run_dir}{held}")
    return " · ".join(parts)


def early_stop_line(early: Mapping[str, Any]) -> str:
    """``early stopping after epoch 8: val_loss has not improved for 3 epochs (best 0.3121
    at epoch 5)``."""
    stopped, best = early.get("stopped_epoch"), early.get("best_epoch")
    waited = ""
    if isinstance(best, int) and isinstance(stopped, int):
        waited = f" for {stopped - best} epoch{'s' if stopped - best != 1 else ''}"
    best_text = f" (best {_fmt(early.get('best'))} at epoch {best})" if best is not None else ""
    return (
        f"early stopping after epoch {stopped}: {early.get('monitor')} has not improved"
        f"{waited}{best_text}"
    )


# --- predictions (dlcli predict) ---------------------------------------------------------------


def predictions_table(
    predictions: Sequence[Mapping[str, Any]], top_k: int, only_input: str | None = None
) -> Table:
    """One row per input: the file (in the title instead when all come from ``only_input``),
    the item in it, the best class and its probability; with ``top_k`` > 1 a column per
    further rank. ``predictions`` are ``--json``'s plain data."""
    one_file = only_input is not None
    table = Table(title=f"Predictions for {escape(str(only_input))}" if one_file else "Predictions")
    if not one_file:
        table.add_column("input", overflow="fold")
    table.add_column("item", justify="right")
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("probability", justify="right")
    ranks = max((len(p["top_k"]) for p in predictions), default=1) if top_k > 1 else 1
    for rank in range(2, ranks + 1):
        table.add_column(f"#{rank}")
    for p in predictions:
        others = [f"{t['class']} {t['class_name']} {t['probability']:.4f}" for t in p["top_k"][1:]]
        table.add_row(
            *([] if one_file else [escape(str(p["input"]))]),
            str(p["item"]),
            str(p["class"]),
            escape(str(p["class_name"])),
            f"{p['probability']:.4f}",
            *(escape(o) for o in others[: ranks - 1]),
        )
    return table


def trials_table(summary: Mapping[str, Any]) -> Table:
    """A study's trials, best first: number, state, the metric, epochs, seconds, parameters."""
    from dlcli.config import short_key

    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items())
    table = Table(
        title=escape(f"Study {summary['study']} ({summary['direction']} {summary['metric']})"),
        caption=counts or "no trials",
        box=box.SIMPLE_HEAD,
    )
    params: list[str] = []
    for trial in summary["trials"]:
        params += [p for p in trial["params"] if p not in params]
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column(summary["metric"], justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("seconds", justify="right")
    for name in params:
        table.add_column(escape(short_key(name)), justify="right", overflow="fold")
    best = summary["best"]
    for trial in summary["trials"]:
        seconds = trial["seconds"]
        state = trial["state"] + (" (retry)" if trial["retry_of"] is not None else "")
        values = [trial["params"].get(name) for name in params]
        table.add_row(
            str(trial["number"]),
            state,
            _fmt(trial["value"]),
            _fmt(trial["epochs"]),
            "-" if seconds is None else f"{seconds:.1f}",
            *(
                escape("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
                for v in values
            ),
            style="bold green" if best is not None and trial["number"] == best["number"] else "",
        )
    return table
