"""Everything a person or a script sees: rich tables and progress on a terminal, plain lines in
CI logs, one JSON document on stdout under ``--json``.

Library code never prints; it hands events to callbacks (see ``dlcli.engine``), and the CLI
hands those a :class:`Reporter`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from dlcli.errors import DlcliError


class Reporter:
    """Where output goes for one command invocation.

    * ``out``: results (tables, predictions) — stdout, or stderr under ``--json`` so that stdout
      carries exactly one JSON document.
    * ``err``: progress, notes and errors — always stderr.
    """

    def __init__(
        self, *, json_mode: bool = False, quiet: bool = False, no_color: bool = False
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        no_color = no_color or "NO_COLOR" in os.environ
        self.err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True)
        if json_mode:
            self.out = self.err
        else:
            self.out = Console(no_color=no_color, highlight=False, soft_wrap=True)

    @property
    def live(self) -> bool:
        """True when live progress bars may be drawn (stderr is an interactive terminal)."""
        return self.err.is_terminal and not self.quiet

    def note(self, message: str) -> None:
        """A line of human progress text on stderr (dropped under ``--quiet``)."""
        if not self.quiet:
            self.err.print(message, markup=False)

    def result_line(self, message: str) -> None:
        """A line of the command's human result (stdout, or stderr under ``--json``)."""
        self.out.print(message, markup=False)

    def table(self, table: Table) -> None:
        self.out.print(table)

    def emit_json(self, document: Mapping[str, Any]) -> None:
        """Write the command's one JSON document to stdout (only under ``--json``)."""
        if self.json_mode:
            sys.stdout.write(json.dumps(document, indent=2, default=_json_default) + "\n")
            sys.stdout.flush()

    def error(self, err: DlcliError | str, *, code: int, kind: str = "internal") -> None:
        """Report an error: one message on stderr, and a JSON document under ``--json``."""
        message = str(err)
        self.err.print(f"Error: {message}", style="bold red", markup=False)
        if self.json_mode:
            self.emit_json({"error": {"code": code, "kind": kind, "message": message}})


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def metrics_table(title: str, rows: Mapping[str, Mapping[str, float]]) -> Table:
    """A table with one row per split (e.g. validation, test) and one column per metric."""
    columns: list[str] = []
    for metrics in rows.values():
        columns += [name for name in metrics if name not in columns]
    table = Table(title=title)
    table.add_column("split")
    for name in columns:
        table.add_column(name, justify="right")
    for split, metrics in rows.items():
        table.add_row(split, *(_fmt(metrics.get(name)) for name in columns))
    return table


def key_value_table(title: str, items: Sequence[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in items:
        table.add_row(key, _fmt(value))
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
    """KotlinDL/Keras-style model summary; shapes shown as (None, H, W, C) or (None, F)."""
    table = Table(title="Model summary", caption=_param_caption(total, trainable))
    table.add_column("Layer (type)")
    table.add_column("Output shape")
    table.add_column("Param #", justify="right")
    table.add_row("input (Input)", keras_shape(input_shape), "0")
    for layer in layers:
        table.add_row(
            f"{layer.name} ({layer.kind})", keras_shape(layer.output_shape), f"{layer.params:,}"
        )
    return table


def _param_caption(total: int, trainable: int) -> str:
    return (
        f"Total params: {total:,}  Trainable params: {trainable:,}  "
        f"Non-trainable params: {total - trainable:,}"
    )


def keras_shape(shape: Sequence[int]) -> str:
    """(C, H, W) → "(None, H, W, C)"; (F,) → "(None, F)"."""
    dims = [shape[1], shape[2], shape[0]] if len(shape) == 3 else list(shape)
    return "(" + ", ".join(["None", *map(str, dims)]) + ")"
