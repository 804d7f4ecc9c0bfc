"""The training display: a callback that draws rich progress bars on a terminal and prints one
plain line per epoch elsewhere (CI logs). The loop itself never prints; this is just another
:class:`~dlcli.hooks.Callback`, handed a :class:`~dlcli.report.Reporter`.
"""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from dlcli.hooks import Callback, Logs, Loop
from dlcli.report import Reporter

_REFRESH_SECONDS = 0.1


def format_logs(logs: Logs, keys: tuple[str, ...] | None = None) -> str:
    """``loss 0.4123  accuracy 0.8512  ...`` (time and lr are formatted by the caller)."""
    skip = {"epoch", "seconds", "lr"}
    return "  ".join(
        f"{k} {v:.4f}" for k, v in logs.items() if k not in skip and (keys is None or k in keys)
    )


class ProgressDisplay(Callback):
    """Per-batch bar with the running loss and metrics; one summary line per epoch."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._last_refresh = 0.0
        self._epochs = 0

    def on_fit_begin(self, trainer: Loop) -> None:
        self._epochs = trainer.epochs
        if self.reporter.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[logs]}"),
                TimeElapsedColumn(),
                console=self.reporter.err,
                transient=True,
            )
            self.progress.start()

    def on_epoch_begin(self, trainer: Loop, epoch: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(
                f"epoch {epoch}/{self._epochs}", total=trainer.steps_per_epoch, logs=""
            )

    def on_step_end(self, trainer: Loop, step: int) -> None:
        if self.progress is None or self.task is None:
            return
        now = time.monotonic()
        if now - self._last_refresh >= _REFRESH_SECONDS or step == trainer.steps_per_epoch:
            self._last_refresh = now
            logs = format_logs(trainer.running_logs())
            self.progress.update(self.task, completed=step, logs=logs)

    def on_epoch_end(self, trainer: Loop, epoch: int, logs: Logs) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        width = len(str(self._epochs))
        self.reporter.note(
            f"epoch {epoch:>{width}}/{self._epochs}  {format_logs(logs)}  {logs['seconds']:.1f}s"
        )

    def on_fit_end(self, trainer: Loop) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
