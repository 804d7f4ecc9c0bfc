"""The training display: a callback that draws a live two-line status on a terminal and prints
one plain line per epoch elsewhere (CI logs). The loop itself never prints; this is just another
:class:`~dlcli.hooks.Callback`, handed a :class:`~dlcli.report.Reporter`.

On a terminal, while an epoch runs::

    epoch 3/10 ━━━━━━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━  312/570  ETA 0:01  run 0:09
    loss 0.4123  accuracy 0.8512  lr 1.00e-03  210 steps/s  21,020 samples/s

Each line is fitted to the terminal's width by dropping its least useful fields first (the
bar shrinks, then steps/s, the learning rate, samples/s, further metrics; the run's ETA, then
the epoch's): numbers are never cut. At the end of each epoch, and off a terminal, one line::

    epoch  3/10  loss 0.4123  accuracy 0.8512  val_loss 0.4301  val_accuracy 0.8467  2.7s
      21,020 samples/s

(on a terminal, wrapped between fields where the line is wider than it; in a pipe, one line).
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from dlcli.hooks import Callback, Logs, Loop
from dlcli.report import Reporter, wrap_fields

_REFRESH_SECONDS = 0.1
_MIN_BAR = 10
_NOT_METRICS = {"epoch", "seconds", "lr", "samples_per_second"}


def _metric_fields(logs: Logs) -> list[str]:
    """``loss 0.4123``, ``accuracy 0.8512``, ...: the metrics (time, speed and lr are the
    caller's)."""
    return [f"{k} {v:.4f}" for k, v in logs.items() if k not in _NOT_METRICS]


def duration(seconds: float | None) -> str:
    """``0:07``, ``12:30``, ``1:02:03``; ``-:--`` while unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Status:
    """What the live display shows, as plain data (see :func:`status_lines`)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    logs: Logs = field(default_factory=dict)
    lr: float | None = None
    steps_per_second: float | None = None
    samples_per_second: float | None = None
    eta_epoch: float | None = None
    eta_run: float | None = None


@dataclass
class _Field:
    text: str
    keep: int  # the higher, the longer it stays when the line is too narrow
    style: str = ""


def status_lines(status: Status, width: int) -> list[Text]:
    """The two status lines, each fitted to ``width`` columns by dropping fields."""
    counter = f"{status.step:,}/{status.steps:,}"
    line1 = [
        _Field(f"epoch {status.epoch}/{status.epochs}", 100, "bold"),
        _Field(counter, 90),
        _Field(f"ETA {duration(status.eta_epoch)}", 60),
        _Field(f"run {duration(status.eta_run)}", 50),
    ]
    metrics = _metric_fields(status.logs)
    line2 = [_Field(text, 100 if i == 0 else 40 - i) for i, text in enumerate(metrics)]
    if status.lr is not None:
        line2.append(_Field(f"lr {status.lr:.2e}", 20))
    if status.steps_per_second is not None:
        line2.append(_Field(f"{status.steps_per_second:,.0f} steps/s", 10))
    if status.samples_per_second is not None:
        line2.append(_Field(f"{status.samples_per_second:,.0f} samples/s", 30))
    first = _with_bar(_fit(line1, width - _MIN_BAR - 1), status, width)
    return [first, _join(_fit(line2, width))]


def _fit(fields: list[_Field], width: int) -> list[_Field]:
    """Drop the least useful fields until the rest, two spaces apart, fit ``width``."""
    kept = list(fields)
    while len(kept) > 1 and _width(kept) > width:
        kept.remove(min(kept, key=lambda f: f.keep))
    return kept


def _width(fields: Sequence[_Field]) -> int:
    return sum(len(f.text) for f in fields) + 2 * max(len(fields) - 1, 0)


def _join(fields: Sequence[_Field]) -> Text:
    text = Text()
    for i, f in enumerate(fields):
        if i:
            text.append("  ")
        text.append(f.text, style=f.style)
    return text


def _with_bar(fields: list[_Field], status: Status, width: int) -> Text:
    """The first field, then a bar as wide as what is left (none where too narrow)."""
    head, rest = fields[:1], fields[1:]
    room = width - _width(fields) - 2  # a space each side of the bar
    if room < _MIN_BAR:
        return _join(fields)
    text = _join(head)
    text.append(" ")
    done = round(room * status.step / max(status.steps, 1))
    text.append("━" * done, style="green")
    text.append("━" * (room - done), style="grey23")
    text.append(" ")
    text.append_text(_join(rest))
    return text


class _StatusView:
    """A rich renderable: the status lines for the console's width at each refresh."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in status_lines(self.status, options.max_width):
            line.no_wrap = True
            yield line


def epoch_line(epoch: int, epochs: int, logs: Logs) -> list[str]:
    """The fields of an epoch's summary line."""
    width = len(str(epochs))
    fields = [f"epoch {epoch:>{width}}/{epochs}", *_metric_fields(logs), f"{logs['seconds']:.1f}s"]
    if logs.get("samples_per_second"):
        fields.append(f"{logs['samples_per_second']:,.0f} samples/s")
    return fields


class ProgressDisplay(Callback):
    """The live status on a terminal; one summary line per epoch everywhere.

    A write that fails (a terminal gone: EIO; a closed pipe: EPIPE; a full disk: ENOSPC) ends
    the display, never the run: from then on it draws nothing (the Reporter's streams are the
    first layer: they drop what cannot be written; this one holds for any console)."""

    def __init__(self, reporter: Reporter, clock: Callable[[], float] = time.monotonic) -> None:
        self.reporter = reporter
        self.clock = clock
        self.live: Live | None = None
        self.status: Status | None = None
        self._epochs = 0
        self._last_refresh = 0.0
        self._epoch_start = 0.0
        self._first_step = 0  # steps already done when the epoch (or a resumed one) began
        self._epoch_seconds: list[float] = []
        self._failed = False  # a write failed: the display is off

    def _draw(self, draw: Callable[[], object]) -> None:
        """Write to the display; an OSError turns it off instead of ending the run."""
        if self._failed:
            return
        try:
            draw()
        except OSError:
            self._failed = True
            live, self.live = self.live, None
            if live is not None:
                with contextlib.suppress(OSError):  # frees the console (one live display)
                    live.stop()

    def on_fit_begin(self, trainer: Loop) -> None:
        self._epochs = trainer.epochs
        self._epoch_seconds = [row["seconds"] for row in trainer.history if "seconds" in row]
        if self.reporter.live and not self._failed:
            self.live = Live(
                console=self.reporter.err, auto_refresh=False, transient=True, redirect_stderr=False
            )
            self._draw(self.live.start)

    def on_epoch_begin(self, trainer: Loop, epoch: int) -> None:
        self._epoch_start = self.clock()
        self._first_step = trainer.step_in_epoch
        self.status = Status(epoch, self._epochs, trainer.step_in_epoch, trainer.steps_per_epoch)
        if self.live is not None:
            self._draw(lambda: self._show(self.status))

    def _show(self, shown: Status | None) -> None:
        if self.live is not None:
            self.live.update(Text("") if shown is None else _StatusView(shown), refresh=True)

    def on_step_end(self, trainer: Loop, step: int) -> None:
        if self.live is None or self.status is None:
            return
        now = self.clock()
        if now - self._last_refresh < _REFRESH_SECONDS and step != trainer.steps_per_epoch:
            return
        self._last_refresh = now
        self._update(trainer, step, now)
        self._draw(lambda: self._show(self.status))

    def _update(self, trainer: Loop, step: int, now: float) -> None:
        assert self.status is not None
        status = self.status
        status.step = step
        status.logs = trainer.running_logs()
        status.lr = float(trainer.optimizer.param_groups[0]["lr"])
        elapsed = now - self._epoch_start
        done = step - self._first_step
        if elapsed <= 0 or done <= 0:
            return
        rate = done / elapsed
        status.steps_per_second = rate
        status.samples_per_second = rate * trainer.batch_size
        status.eta_epoch = (trainer.steps_per_epoch - step) / rate
        per_epoch = (
            statistics.median(self._epoch_seconds)
            if self._epoch_seconds
            else trainer.steps_per_epoch / rate
        )
        status.eta_run = status.eta_epoch + (self._epochs - status.epoch) * per_epoch

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        self._epoch_seconds.append(logs["seconds"])
        fields = epoch_line(epoch, self._epochs, logs)
        if self.live is not None:
            self._draw(lambda: self._show(None))
            wrapped = wrap_fields(fields, self.reporter.err.width).split("\n")
            for line in wrapped:  # a line each: a note is one line (report.shown)
                self._draw(functools.partial(self.reporter.note, line))
        else:
            self._draw(lambda: self.reporter.note("  ".join(fields)))

    def on_fit_end(self, trainer: Loop) -> None:
        live, self.live = self.live, None
        if live is not None:
            self._draw(live.stop)
