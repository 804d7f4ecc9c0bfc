"""A local HTTP server on 127.0.0.1 with one path prefix per behaviour (``/good/NAME`` serves,
``/missing/`` 404s, ``/slow/`` times a client out, ...): the mirror the download and registry
tests fetch from. ``with serve() as state:`` runs one; ``state.files`` is what it serves."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT = 0.5  # seconds; the slow server waits longer than this
ESCAPES = "\x1b[31mred\x1b]0;pwned\x07"  # the "escapes" mode's reason phrase
ARCHIVE_NAMES = (  # as the tiny-archives fixture writes them, in ROLES order
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    hits: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    base: str = ""

    def url(self, mode: str) -> str:
        return f"{self.base}/{mode}/"

    def ranges(self, mode: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path.startswith(f"/{mode}/")]


class Handler(BaseHTTPRequestHandler):
    """``/MODE/FILENAME``: good, missing (404), forbidden (403), corrupt (right size, wrong
    bytes), truncated, slow (answers after the client timed out), stall (the first answer for
    the train images stops halfway), flaky (503 once), down (always 503), escapes (503 with
    terminal escape sequences as the reason), norange (ignores Range), r416 (416 to any
    Range). Range requests are honoured (206) unless the mode says otherwise."""

    server: StateServer

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        state.hits[self.path] += 1
        mode, _, name = self.path.lstrip("/").partition("/")
        data = state.files.get(name)
        if data is None or mode == "missing":
            return self.send_error(404)
        if mode == "forbidden":
            return self.send_error(403)
        if mode in ("down", "flaky") and (mode == "down" or state.hits[self.path] == 1):
            return self.send_error(503)
        if mode == "escapes":  # a reason phrase that recolours a terminal and retitles it
            self.send_response(503, ESCAPES)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if mode == "slow":
            state.stop.wait(5 * TIMEOUT)
        if mode == "stall" and state.hits[self.path] == 1 and name == ARCHIVE_NAMES[0]:
            return self._stall(data)
        if mode == "corrupt":
            data = bytes(b ^ 0xFF for b in data)
        if mode == "truncated":
            data = data[: len(data) // 2]
        self._send(mode, data)

    def _send(self, mode: str, data: bytes) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and mode == "r416":
            return self.send_error(416)
        if not match or mode == "norange":
            return self._reply(200, data)
        start = int(match.group(1))
        if start >= len(data):
            return self.send_error(416)
        self._reply(206, data[start:], f"bytes {start}-{len(data) - 1}/{len(data)}")

    def _reply(self, status: int, body: bytes, content_range: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        self.wfile.write(body)

    def _stall(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.server.state.stop.wait(5 * TIMEOUT)

    def log_message(self, format: str, *args: object) -> None:
        pass


class StateServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and left is expected here


@contextmanager
def serve() -> Iterator[ServerState]:
    """A ``StateServer`` on a free port of 127.0.0.1, in a thread, until the block ends."""
    httpd = StateServer(("127.0.0.1", 0), Handler)
    httpd.state = ServerState(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.state.stop.set()
        httpd.shutdown()
        httpd.server_close()
