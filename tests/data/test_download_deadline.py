"""The total download deadline per file (issue 14): a mirror that trickles bytes just fast
enough never to hit the per-read timeout is abandoned for the next mirror once the file has
taken ``deadline`` seconds from it."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from conftest import write_tiny_archives

from dlcli.cli import cli
from dlcli.data.download import DownloadEvent, download_dataset
from dlcli.data.registry import ROLES, ArchiveFile, DatasetEntry
from dlcli.errors import DownloadError

STOP = threading.Event()


class Trickle(BaseHTTPRequestHandler):
    """Sends any file 100 bytes every 0.1 s (1 kB/s): each read is well inside the timeout."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        data = self.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for start in range(0, len(data), 100):
            if STOP.wait(0.1):
                return
            self.wfile.write(data[start : start + 100])
            self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client gave up and left: expected


@pytest.fixture
def trickle() -> Iterator[str]:
    STOP.clear()
    httpd = Server(("127.0.0.1", 0), Trickle)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    STOP.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def entry(tmp_path: Path) -> tuple[DatasetEntry, Path]:
    source = tmp_path / "source"
    paths = write_tiny_archives(source)
    files = {}
    for role, path in zip(ROLES, paths, strict=False):
        data = Path(path).read_bytes()
        Trickle.files[Path(path).name] = data
        files[role] = ArchiveFile(Path(path).name, len(data), hashlib.sha256(data).hexdigest())
    entry = DatasetEntry(
        name="tiny",
        description="test data",
        files=files,
        num_classes=10,
        class_names=tuple("0123456789"),
        mirrors=(),
        license="none",
        homepage="",
    )
    return entry, source


def test_a_trickling_mirror_is_abandoned_for_the_next(
    trickle: str, entry: tuple[DatasetEntry, Path], tmp_path: Path
) -> None:
    dataset, source = entry
    events: list[DownloadEvent] = []
    start = time.monotonic()
    statuses = download_dataset(
        dataset,
        tmp_path / "data",
        mirrors=[trickle, str(source)],
        timeout=5.0,
        deadline=0.5,
        on_event=events.append,
    )
    seconds = time.monotonic() - start
    assert [s.status for s in statuses] == ["downloaded"] * 4
    # A file the trickle cannot deliver within the deadline (over 500 bytes) comes from the
    # next mirror; the label files are small enough to arrive in time.
    large = [s for s in statuses if s.size > 1000]
    assert large and all(s.url == str(source / s.filename) for s in large)
    given_up = [e for e in events if e.kind == "failed" and "gave up after" in e.reason]
    assert len(given_up) == len(large), [e.reason for e in events if e.kind == "failed"]
    assert "the download deadline per file (--deadline 0.5)" in given_up[0].reason
    assert seconds < 4 * (0.5 + 0.2) + 5, seconds  # each file: the deadline, one read more


def test_when_every_mirror_trickles_the_message_says_so(
    trickle: str, entry: tuple[DatasetEntry, Path], tmp_path: Path
) -> None:
    dataset, _ = entry
    with pytest.raises(DownloadError) as err:
        download_dataset(dataset, tmp_path / "data", mirrors=[trickle], deadline=0.3)
    assert "gave up after" in str(err.value)


def test_the_deadline_is_a_documented_option() -> None:
    result = CliRunner().invoke(cli, ["download", "--help"])
    assert "--deadline SECONDS" in result.output
    assert "[default: 600.0" in " ".join(result.output.split())
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "--deadline" in readme
