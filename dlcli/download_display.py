"""The ``dlcli download`` display: a rich progress bar per file on a terminal, one plain line per
step elsewhere (CI logs), nothing under ``--quiet``. It is the ``on_event`` callback of
:func:`dlcli.data.download.download_dataset`, which itself never prints. No torch here.
"""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dlcli.data.download import DownloadEvent
from dlcli.report import Reporter


def event_line(event: DownloadEvent) -> str:
    """The plain line for an event, or ``""`` for those only a progress bar shows."""
    name = event.filename
    if event.kind == "waiting":
        return event.reason
    if event.kind == "present":
        return f"{name}: present, verified"
    if event.kind == "start":
        resuming = f" (resuming at {event.done} bytes)" if event.done else ""
        return f"downloading {name} from {event.url}{resuming}"
    if event.kind == "failed":
        return f"{name}: {event.url}: {event.reason}"
    if event.kind == "retry":
        return f"{name}: retrying {event.url} in {event.delay:g} s"
    if event.kind == "done":
        return f"{name}: {event.done} bytes, sha256 ok"
    return ""


class DownloadDisplay:
    """Use as a context manager around the download and pass it as ``on_event``."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> DownloadDisplay:
        if self.reporter.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.reporter.err,
            )
            self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __call__(self, event: DownloadEvent) -> None:
        line = event_line(event)
        if self.progress is None:
            if line:
                self.reporter.note(line)
            return
        if event.kind in ("start", "progress", "done"):
            self._advance(self.progress, event)
        if line and event.kind != "start":  # the bar shows the start
            self.progress.console.print(line, markup=False, highlight=False)

    def _advance(self, progress: Progress, event: DownloadEvent) -> None:
        task = self.tasks.get(event.filename)
        if task is None:
            self.tasks[event.filename] = progress.add_task(
                event.filename, total=event.total, completed=event.done
            )
        elif event.kind == "start":  # a retry or another mirror: the bar restarts
            progress.reset(task, total=event.total, completed=event.done)
        else:
            progress.update(task, completed=event.done)
