"""Downloads over real HTTP from a local server that misbehaves on request, local mirrors, and
the ``dlcli download`` command (CliRunner and real subprocesses)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from io import StringIO
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import REPO_DATA, REPO_ROOT, write_tiny_archives
from http_mirror import ARCHIVE_NAMES, TIMEOUT, ServerState, serve
from rich.console import Console

from dlcli.cli import cli
from dlcli.data import download as download_module
from dlcli.data import registry
from dlcli.data.download import (
    DownloadEvent,
    default_data_dir,
    download_dataset,
    resolve_mirrors,
    verify_dataset,
)
from dlcli.data.registry import ROLES, ArchiveFile, DatasetEntry
from dlcli.download_display import DownloadDisplay
from dlcli.errors import EXIT_DATA, EXIT_USAGE, DataError, DownloadError
from dlcli.report import Reporter


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait 10 ms here instead of a quarter of a second."""
    monkeypatch.setattr(download_module, "_BACKOFF_S", 0.01)


# --- a local HTTP server with one path prefix per behaviour (tests/http_mirror.py) --------------


@pytest.fixture
def server() -> Iterator[ServerState]:
    with serve() as state:
        yield state


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A folder holding the tiny archives: what the server serves, and a local mirror."""
    write_tiny_archives(tmp_path / "source")
    return tmp_path / "source"


@pytest.fixture
def entry(source: Path, server: ServerState) -> DatasetEntry:
    """A registry entry for the tiny archives, with no mirrors of its own."""
    files = {}
    for role, name in zip(ROLES, ARCHIVE_NAMES, strict=True):
        path = source / name
        data = path.read_bytes()
        server.files[path.name] = data
        md5 = hashlib.md5(data).hexdigest()
        files[role] = ArchiveFile(path.name, len(data), hashlib.sha256(data).hexdigest(), md5)
    return DatasetEntry(
        name="tiny",
        description="test data",
        files=files,
        num_classes=10,
        class_names=tuple("0123456789"),
        mirrors=(),
        license="none",
        homepage="",
    )


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DLCLI_MIRROR", raising=False)
    return tmp_path / "data"


def assert_complete(entry: DatasetEntry, data_dir: Path, source: Path) -> None:
    folder = data_dir / entry.name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        a.filename for a in entry.files.values()
    )  # no .part files
    for archive in entry.files.values():
        assert (folder / archive.filename).read_bytes() == (source / archive.filename).read_bytes()


def first_file(entry: DatasetEntry) -> ArchiveFile:
    return entry.files["train_images"]


# --- downloads --------------------------------------------------------------------------------


def test_good_download(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    statuses = download_dataset(entry, data_dir, mirrors=[server.url("good")])
    assert [s.status for s in statuses] == ["downloaded"] * 4
    assert [s.role for s in statuses] == list(ROLES)
    assert statuses[0].url == server.url("good") + "train-images-idx3-ubyte.gz"
    assert statuses[0].path == data_dir / "tiny" / "train-images-idx3-ubyte.gz"
    assert statuses[0].sha256 == first_file(entry).sha256
    assert statuses[0].size == first_file(entry).size
    assert_complete(entry, data_dir, source)
    assert all(rng is None for _, rng in server.requests)


def test_events_describe_the_download(
    entry: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    events: list[DownloadEvent] = []
    download_dataset(entry, data_dir, mirrors=[server.url("good")], on_event=events.append)
    mine = [e for e in events if e.filename == "train-images-idx3-ubyte.gz"]
    size = first_file(entry).size
    assert mine[0].kind == "start" and mine[0].done == 0 and mine[0].total == size
    assert mine[-1] == DownloadEvent(
        "done", "train-images-idx3-ubyte.gz", mine[0].url, done=size, total=size
    )
    progress = [e.done for e in mine if e.kind == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == size


def test_present_files_are_verified_and_kept(
    entry: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    download_dataset(entry, data_dir, mirrors=[server.url("good")])
    before = len(server.requests)
    events: list[DownloadEvent] = []
    statuses = download_dataset(
        entry, data_dir, mirrors=[server.url("good")], on_event=events.append
    )
    assert [s.status for s in statuses] == ["present"] * 4
    assert all(s.url is None for s in statuses)
    assert len(server.requests) == before
    assert [e.kind for e in events] == ["checking", "present"] * 4


def test_force_downloads_again(entry: DatasetEntry, data_dir: Path, server: ServerState) -> None:
    download_dataset(entry, data_dir, mirrors=[server.url("good")])
    statuses = download_dataset(entry, data_dir, mirrors=[server.url("good")], force=True)
    assert [s.status for s in statuses] == ["downloaded"] * 4
    assert len(server.requests) == 8


def test_a_file_that_fails_its_check_is_kept_unless_forced(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    """A file under an archive's name that dlcli did not verify is the user's: it was deleted
    before the download, and stayed lost when every mirror then failed."""
    download_dataset(entry, data_dir, mirrors=[server.url("good")])
    mine = data_dir / "tiny" / "t10k-labels-idx1-ubyte.gz"
    mine.write_bytes(b"my own labels")
    server.requests.clear()
    with pytest.raises(DataError) as err:
        download_dataset(entry, data_dir, mirrors=[server.url("good")])
    assert err.value.message == (
        f"{mine}: is not tiny's t10k-labels-idx1-ubyte.gz (size mismatch: expected "
        f"{entry.files['test_labels'].size} bytes, got 13); dlcli did not write it (only "
        "verified files get that name), so it is kept: move it away, or pass --force to "
        "replace it with the download"
    )
    assert mine.read_bytes() == b"my own labels"
    assert not [p for p in server.requests if p[0].endswith(mine.name)]  # nothing fetched
    with pytest.raises(DownloadError):  # forced, but no mirror has it: still kept
        download_dataset(entry, data_dir, mirrors=[server.url("missing")], force=True)
    assert mine.read_bytes() == b"my own labels"
    statuses = download_dataset(entry, data_dir, mirrors=[server.url("good")], force=True)
    assert [s.status for s in statuses] == ["downloaded"] * 4
    assert_complete(entry, data_dir, source)


def test_cli_keeps_a_file_that_fails_its_check(
    entry: DatasetEntry, data_dir: Path, server: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.REGISTRY, "tiny", entry)
    (data_dir / "tiny").mkdir(parents=True)
    mine = data_dir / "tiny" / "train-images-idx3-ubyte.gz"
    mine.write_text("notes")
    args = ["download", "tiny", "--data-dir", str(data_dir), "--mirror", server.url("good")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == EXIT_DATA, result.output
    assert f"Error: {mine}: is not tiny's train-images-idx3-ubyte.gz" in result.output
    assert "pass --force to replace it" in result.output and mine.read_text() == "notes"
    assert CliRunner().invoke(cli, [*args, "--force", "-q"]).exit_code == 0
    assert mine.stat().st_size == entry.files["train_images"].size


def test_a_file_where_the_dataset_folder_goes_is_named(
    entry: DatasetEntry, data_dir: Path, server: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It read "cannot create the folder: File exists".
    monkeypatch.setitem(registry.REGISTRY, "tiny", entry)
    data_dir.mkdir()
    mine = data_dir / "tiny"
    mine.write_text("notes")

    def download(folder: Path) -> Result:
        args = ["download", "tiny", "--data-dir", str(folder), "--mirror", server.url("good")]
        return CliRunner().invoke(cli, args)

    result = download(data_dir)
    assert result.exit_code == EXIT_DATA
    assert f"Error: {mine}: is a file, not a folder" in result.stderr
    assert "File exists" not in result.output
    # The data directory given lies under a file: a usage error, as --data-dir AFILE is.
    result = download(mine / "sub")
    assert result.exit_code == EXIT_USAGE
    assert f"{mine / 'sub'}: cannot keep datasets there: {mine} is a file" in result.stderr
    assert download(mine).exit_code == EXIT_USAGE
    assert mine.read_text() == "notes"


def test_an_empty_data_dir_is_a_usage_error(
    entry: DatasetEntry,
    tmp_path: Path,
    server: ServerState,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Path("") is ".": the dataset was downloaded into ./tiny.
    monkeypatch.setitem(registry.REGISTRY, "tiny", entry)
    monkeypatch.chdir(tmp_path)
    args = ["download", "tiny", "--data-dir", "", "--mirror", server.url("good")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == EXIT_USAGE
    assert "'--data-dir': an empty path" in result.stderr
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("mirror", ["", "  "])
def test_an_empty_mirror_is_a_usage_error(
    entry: DatasetEntry,
    tmp_path: Path,
    server: ServerState,
    monkeypatch: pytest.MonkeyPatch,
    mirror: str,
) -> None:
    # It was dropped silently: the download went on from the registry's own mirrors.
    monkeypatch.setitem(registry.REGISTRY, "tiny", replace(entry, mirrors=(server.url("good"),)))
    args = ["download", "tiny", "--data-dir", str(tmp_path), "--mirror", mirror]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"'--mirror': expected a mirror: a URL or a directory, found {mirror!r}" in (
        result.stderr
    )
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize(
    ("mode", "answer"), [("missing", "404 Not Found"), ("forbidden", "403 Forbidden")]
)
def test_falls_back_to_the_next_mirror_at_once(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState, mode: str, answer: str
) -> None:
    events: list[DownloadEvent] = []
    statuses = download_dataset(
        entry, data_dir, mirrors=[server.url(mode), server.url("good")], on_event=events.append
    )
    assert all(s.url and s.url.startswith(server.url("good")) for s in statuses)
    assert len(server.ranges(mode)) == 4  # one request per file: no retries on a 4xx
    failed = [e for e in events if e.kind == "failed"]
    assert len(failed) == 4 and failed[0].reason == f"HTTP {answer}"
    assert failed[0].url == server.url(mode) + "train-images-idx3-ubyte.gz"
    assert_complete(entry, data_dir, source)


def test_checksum_mismatch_on_every_mirror(
    entry: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    mirrors = [server.url("corrupt"), server.url("truncated"), server.url("missing")]
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=mirrors, retries=2)
    archive = first_file(entry)
    corrupt_sha = hashlib.sha256(bytes(b ^ 0xFF for b in server.files[archive.filename]))
    assert err.value.exit_code == EXIT_DATA
    assert str(err.value) == "\n".join(
        [
            "could not download train-images-idx3-ubyte.gz of tiny from any of 3 mirror(s) "
            "(a local copy can be used with --mirror DIR); tried:",
            f"  - {mirrors[0]}{archive.filename}: checksum mismatch: expected sha256 "
            f"{archive.sha256[:12]}…, got {corrupt_sha.hexdigest()[:12]}…",
            f"  - {mirrors[1]}{archive.filename}: size mismatch: expected {archive.size} bytes, "
            f"got {archive.size // 2}",
            f"  - {mirrors[2]}{archive.filename}: HTTP 404 Not Found",
        ]
    )
    assert list((data_dir / "tiny").iterdir()) == []  # nothing under the final name, no .part
    assert len(server.requests) == 3  # a checksum failure is not retried


def test_resume_from_a_partial_part_file(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    archive = first_file(entry)
    part = data_dir / "tiny" / (archive.filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[archive.filename][:1000])
    events: list[DownloadEvent] = []
    download_dataset(entry, data_dir, mirrors=[server.url("good")], on_event=events.append)
    assert server.ranges("good")[0] == "bytes=1000-"
    start = next(e for e in events if e.kind == "start")
    assert (start.filename, start.done) == (archive.filename, 1000)
    assert_complete(entry, data_dir, source)


def test_a_server_that_ignores_range_restarts_cleanly(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    archive = first_file(entry)
    part = data_dir / "tiny" / (archive.filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not stay in front" * 10)
    download_dataset(entry, data_dir, mirrors=[server.url("norange")])
    assert server.ranges("norange")[0] == "bytes=350-"
    assert len(server.ranges("norange")) == 4  # answered 200 at once: no second request
    assert_complete(entry, data_dir, source)


def test_a_resumed_file_failing_its_checksum_restarts_from_zero(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    archive = first_file(entry)
    part = data_dir / "tiny" / (archive.filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(bytes(500))  # the wrong first 500 bytes
    download_dataset(entry, data_dir, mirrors=[server.url("good")])
    assert server.ranges("good")[:2] == ["bytes=500-", None]
    assert_complete(entry, data_dir, source)


def test_http_416_restarts_from_zero(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    archive = first_file(entry)
    part = data_dir / "tiny" / (archive.filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[archive.filename][:100])
    download_dataset(entry, data_dir, mirrors=[server.url("r416")])
    assert server.ranges("r416")[:2] == ["bytes=100-", None]
    assert_complete(entry, data_dir, source)


def test_a_slow_server_times_out(entry: DatasetEntry, data_dir: Path, server: ServerState) -> None:
    began = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=[server.url("slow")], timeout=TIMEOUT, retries=0)
    assert time.monotonic() - began < 4 * TIMEOUT
    assert err.value.details == [
        f"{server.url('slow')}train-images-idx3-ubyte.gz: timed out after 0.5 s"
    ]


def test_a_stalled_transfer_is_retried_and_resumed(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    events: list[DownloadEvent] = []
    download_dataset(
        entry, data_dir, mirrors=[server.url("stall")], timeout=TIMEOUT, on_event=events.append
    )
    half = first_file(entry).size // 2
    path = server.url("stall") + "train-images-idx3-ubyte.gz"
    assert server.ranges("stall")[:2] == [None, f"bytes={half}-"]
    retry = next(e for e in events if e.kind == "retry")
    assert (retry.url, retry.reason) == (path, "timed out after 0.5 s")
    assert_complete(entry, data_dir, source)


def test_5xx_is_retried(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState
) -> None:
    events: list[DownloadEvent] = []
    download_dataset(
        entry, data_dir, mirrors=[server.url("flaky")], retries=1, on_event=events.append
    )
    assert len(server.ranges("flaky")) == 8  # each file: a 503, then the file
    retries = [e for e in events if e.kind == "retry"]
    assert [e.reason for e in retries] == ["HTTP 503 Service Unavailable"] * 4
    assert all(e.delay == 0.01 for e in retries)  # the (shortened) backoff
    assert_complete(entry, data_dir, source)


def test_retries_run_out(entry: DatasetEntry, data_dir: Path, server: ServerState) -> None:
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=[server.url("down")], retries=2)
    url = server.url("down") + "train-images-idx3-ubyte.gz"
    assert err.value.details == [
        f"{url}: HTTP 503 Service Unavailable (attempt {n} of 3)" for n in (1, 2, 3)
    ]


def test_connection_refused(entry: DatasetEntry, data_dir: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=[f"http://127.0.0.1:{port}"], retries=0)
    assert err.value.details == [
        f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz: connection refused"
    ]


def test_no_mirror_at_all(entry: DatasetEntry, data_dir: Path) -> None:
    with pytest.raises(DownloadError, match=r"no mirror to download train-images-idx3-ubyte\.gz"):
        download_dataset(entry, data_dir)


# --- local mirrors and mirror order -----------------------------------------------------------


@pytest.mark.parametrize("form", ["directory", "file-url"])
def test_local_mirror(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState, form: str
) -> None:
    mirror = str(source) if form == "directory" else source.as_uri()
    statuses = download_dataset(entry, data_dir, mirrors=[mirror])
    assert [s.status for s in statuses] == ["downloaded"] * 4
    expected = str(source / "train-images-idx3-ubyte.gz")
    assert statuses[0].url == (
        expected if form == "directory" else mirror + "/train-images-idx3-ubyte.gz"
    )
    assert server.requests == []
    assert_complete(entry, data_dir, source)


def test_a_fifo_or_device_in_a_local_mirror_is_refused_not_read(
    entry: DatasetEntry, data_dir: Path, source: Path, tmp_path: Path
) -> None:
    """A FIFO named like an archive hung the download for ever (open() waits for a writer);
    a link to /dev/zero was read to the end of the file's size."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for archive in entry.files.values():
        (mirror / archive.filename).symlink_to(source / archive.filename)
    first = first_file(entry).filename
    (mirror / first).unlink()
    os.mkfifo(mirror / first)
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    (mirror / "t10k-labels-idx1-ubyte.gz").symlink_to("/dev/zero")
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=[str(mirror)], timeout=1)
    assert err.value.details == [
        f"{mirror / first}: is a FIFO (named pipe), expected a regular file"
    ]
    (mirror / first).unlink()
    (mirror / first).symlink_to(source / first)  # a link to a regular file is fine
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=[str(mirror)])
    assert err.value.details == [
        f"{mirror / 't10k-labels-idx1-ubyte.gz'}: is a character device, expected a regular file"
    ]
    assert sorted(p.name for p in (data_dir / "tiny").iterdir()) == sorted(
        a.filename for a in entry.files.values() if a.filename != "t10k-labels-idx1-ubyte.gz"
    )


def test_a_part_file_that_is_no_file_is_kept_and_named(
    entry: DatasetEntry, data_dir: Path, source: Path, server: ServerState, tmp_path: Path
) -> None:
    """A FIFO named like the .part hung the download for ever; a link would be written
    through, into whatever it points to."""
    folder = data_dir / "tiny"
    folder.mkdir(parents=True)
    part = folder / (first_file(entry).filename + ".part")
    os.mkfifo(part)
    with pytest.raises(DataError) as err:
        download_dataset(entry, data_dir, mirrors=[server.url("good")], timeout=1)
    assert err.value.message == (
        f"{part}: is a FIFO (named pipe), not a partial download dlcli wrote; it is kept: move "
        "it away, or pass --force to replace it"
    )
    part.unlink()
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    part.symlink_to(precious)
    with pytest.raises(DataError, match="is a symbolic link, not a partial download"):
        download_dataset(entry, data_dir, mirrors=[str(source)])
    assert precious.read_text() == "mine"
    download_dataset(entry, data_dir, mirrors=[str(source)], force=True)
    assert precious.read_text() == "mine"
    assert_complete(entry, data_dir, source)


def test_a_local_mirror_is_checksummed_too(
    entry: DatasetEntry, data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-copy"
    bad.mkdir()
    archive = first_file(entry)
    (bad / archive.filename).write_bytes(bytes(archive.size))
    with pytest.raises(DownloadError) as err:
        download_dataset(entry, data_dir, mirrors=[str(bad), str(tmp_path / "nowhere")])
    assert err.value.details[0].startswith(
        f"{bad / archive.filename}: checksum mismatch: expected sha256 {archive.sha256[:12]}…"
    )
    assert err.value.details[1] == f"{tmp_path / 'nowhere' / archive.filename}: no such file"
    assert list((data_dir / "tiny").iterdir()) == []


def test_dlcli_mirror_variable(
    entry: DatasetEntry,
    data_dir: Path,
    source: Path,
    server: ServerState,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DLCLI_MIRROR", f"{server.url('missing')}, {server.url('good')}")
    statuses = download_dataset(entry, data_dir)
    assert all(s.url and s.url.startswith(server.url("good")) for s in statuses)
    assert len(server.ranges("missing")) == 4
    assert_complete(entry, data_dir, source)


def test_mirror_order(entry: DatasetEntry, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = replace(entry, mirrors=("https://registry/a/", "https://registry/b"))
    monkeypatch.setenv("DLCLI_MIRROR", "https://env/1\nhttps://env/2,https://registry/b")
    assert resolve_mirrors(entry) == [
        "https://env/1",
        "https://env/2",
        "https://registry/b",
        "https://registry/a/",
    ]
    assert resolve_mirrors(entry, ["/local/copy"]) == [
        "/local/copy",
        "https://registry/a/",
        "https://registry/b",
    ]
    monkeypatch.delenv("DLCLI_MIRROR")
    assert resolve_mirrors(entry) == ["https://registry/a/", "https://registry/b"]


def test_registry_mirrors_come_after_explicit_ones(
    entry: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    entry = replace(entry, mirrors=(server.url("good").rstrip("/"),))  # no trailing slash
    statuses = download_dataset(entry, data_dir, mirrors=[server.url("missing")])
    assert statuses[0].url == server.url("good") + "train-images-idx3-ubyte.gz"
    assert [path.split("/")[1] for path, _ in server.requests[:2]] == ["missing", "good"]


def test_real_registry_mirrors_are_ordered_as_documented() -> None:
    mnist = registry.get_entry("mnist").mirrors
    assert mnist[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert mnist[-1] == "http://yann.lecun.com/exdb/mnist/"
    fashion = registry.get_entry("fashion-mnist").mirrors
    assert fashion[0] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


# --- verify_dataset and the data dir ----------------------------------------------------------


def test_verify_dataset(entry: DatasetEntry, data_dir: Path, source: Path) -> None:
    download_dataset(entry, data_dir, mirrors=[str(source)])
    paths = verify_dataset(entry, data_dir, check_sha256=True)
    assert paths == {r: data_dir / "tiny" / a.filename for r, a in entry.files.items()}
    target = paths["test_images"]
    target.write_bytes(bytes(target.stat().st_size))  # same size, other bytes
    assert verify_dataset(entry, data_dir) == paths  # the cheap check only looks at sizes
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        verify_dataset(entry, data_dir, check_sha256=True)
    paths["train_labels"].unlink()
    with pytest.raises(
        DataError, match=r"missing train-labels-idx1-ubyte\.gz\. Run `dlcli download tiny"
    ):
        verify_dataset(entry, data_dir)


def test_registry_datasets_are_verified_in_the_repository() -> None:
    for name in ("mnist", "fashion-mnist"):  # committed in data/ (KMNIST and CIFAR-10 are not)
        verify_dataset(registry.get_entry(name), REPO_DATA, check_sha256=True)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DLCLI_DATA_DIR", raising=False)
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("DLCLI_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_missing_dataset_in_default_dir_suggests_plain_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DLCLI_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:
        verify_dataset(registry.get_entry("fashion-mnist"), Path("data"))
    assert str(err.value) == (
        "fashion-mnist is not in data/: missing train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz. "
        "Run `dlcli download fashion-mnist` first."
    )


# --- the display ------------------------------------------------------------------------------


def test_live_display_draws_bars(entry: DatasetEntry, data_dir: Path, server: ServerState) -> None:
    reporter = Reporter()
    buffer = StringIO()
    reporter.err = Console(file=buffer, force_terminal=True, width=120)
    assert reporter.live
    with DownloadDisplay(reporter) as display:
        download_dataset(
            entry, data_dir, mirrors=[server.url("missing"), server.url("good")], on_event=display
        )
    text = buffer.getvalue()
    assert "train-images-idx3-ubyte.gz" in text and "HTTP 404 Not Found" in text
    assert len(display.tasks) == 4


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def tiny_registered(entry: DatasetEntry, monkeypatch: pytest.MonkeyPatch) -> DatasetEntry:
    monkeypatch.setitem(registry.REGISTRY, "tiny", entry)
    monkeypatch.delenv("DLCLI_MIRROR", raising=False)
    return entry


def test_cli_download_then_present(
    tiny_registered: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    args = ["tiny", "--data-dir", str(data_dir), "--mirror", server.url("good")]
    first = CliRunner().invoke(cli, ["download", *args])
    assert first.exit_code == 0, first.output
    good = server.url("good")
    assert (
        f"downloading train-images-idx3-ubyte.gz from {good}train-images-idx3-ubyte.gz"
        in first.stderr
    )
    size = first_file(tiny_registered).size
    assert f"train-images-idx3-ubyte.gz: {size} bytes, sha256 ok" in first.stderr
    assert first.stdout.strip() == (
        f"tiny: 4 files verified in {data_dir / 'tiny'} (4 downloaded, 0 already present)"
    )
    second = CliRunner().invoke(cli, ["download", *args])
    assert second.exit_code == 0
    assert second.stderr.count(": present, verified") == 4
    assert "(0 downloaded, 4 already present)" in second.stdout


def test_cli_json_lists_the_files(
    tiny_registered: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    result = CliRunner().invoke(
        cli,
        ["download", "tiny", "--data-dir", str(data_dir), "--mirror", server.url("good"), "--json"],
    )
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["dataset"] == "tiny"
    assert document["path"] == str(data_dir / "tiny")
    first = document["files"][0]
    archive = first_file(tiny_registered)
    assert first == {
        "role": "train_images",
        "filename": archive.filename,
        "path": str(data_dir / "tiny" / archive.filename),
        "size": archive.size,
        "sha256": archive.sha256,
        "status": "downloaded",
        "url": server.url("good") + archive.filename,
    }
    assert [f["role"] for f in document["files"]] == list(ROLES)


def test_cli_failure_lists_every_url(
    tiny_registered: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    args = ["tiny", "--data-dir", str(data_dir), "--retries", "0", "--timeout", "0.5"]
    result = CliRunner().invoke(
        cli,
        ["download", *args, "--mirror", server.url("missing"), "--mirror", server.url("corrupt")],
    )
    assert result.exit_code == 3
    assert f"{server.url('missing')}train-images-idx3-ubyte.gz: HTTP 404 Not Found" in result.stderr
    assert f"{server.url('corrupt')}train-images-idx3-ubyte.gz: checksum mismatch" in result.stderr
    assert "Error: could not download train-images-idx3-ubyte.gz of tiny" in result.stderr
    as_json = CliRunner().invoke(
        cli, ["download", *args, "--json", "--mirror", server.url("missing")]
    )
    assert as_json.exit_code == 3
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == 3 and error["kind"] == "network"
    assert "HTTP 404 Not Found" in error["message"]


def test_cli_quiet_prints_no_progress(
    tiny_registered: DatasetEntry, data_dir: Path, source: Path
) -> None:
    result = CliRunner().invoke(
        cli, ["download", "tiny", "--data-dir", str(data_dir), "--mirror", str(source), "--quiet"]
    )
    assert result.exit_code == 0
    assert result.stderr == ""


def test_cli_usage_errors() -> None:
    unknown = CliRunner().invoke(cli, ["download", "fashon-mnist"])
    assert unknown.exit_code == 2
    assert "unknown dataset 'fashon-mnist' (did you mean 'fashion-mnist'?)" in unknown.stderr
    missing = CliRunner().invoke(cli, ["download"])
    assert missing.exit_code == 2 and "missing the dataset NAME" in missing.stderr
    bad_timeout = CliRunner().invoke(cli, ["download", "mnist", "--timeout", "0"])
    assert bad_timeout.exit_code == 2


def test_what_a_server_says_reaches_the_terminal_escaped(
    entry: DatasetEntry, data_dir: Path, server: ServerState
) -> None:
    events: list[DownloadEvent] = []
    with pytest.raises(DownloadError) as err:
        download_dataset(
            entry, data_dir, mirrors=[server.url("escapes")], retries=0, on_event=events.append
        )
    reason = "HTTP 503 \\x1b[31mred\\x1b]0;pwned\\x07"
    assert err.value.details == [f"{server.url('escapes')}{ARCHIVE_NAMES[0]}: {reason}"]
    assert [e.reason for e in events if e.kind == "failed"] == [reason]


@pytest.mark.parametrize(
    ("mirror", "problem"),
    [("http://[::1", "Invalid IPv6 URL"), ("http://127.0.0.1:99999/", "Port out of range")],
)
def test_cli_a_mirror_that_is_no_url_is_a_usage_error(
    mirror: str, problem: str, data_dir: Path
) -> None:
    """'http://[::1' was 'internal error: ValueError: Invalid IPv6 URL', exit 1."""
    result = CliRunner().invoke(
        cli, ["download", "mnist", "--data-dir", str(data_dir), "--mirror", mirror]
    )
    assert result.exit_code == 2, result.output
    assert f"Error: mirror {mirror!r} is not a valid URL: {problem}" in result.stderr
    assert not (data_dir / "mnist").exists() or not any((data_dir / "mnist").iterdir())


def test_cli_list() -> None:
    result = CliRunner().invoke(cli, ["download", "--list", "--json"])
    assert result.exit_code == 0
    names = [d["name"] for d in json.loads(result.stdout)["datasets"]]
    assert names == ["mnist", "fashion-mnist", "kmnist", "cifar-10"]
    assert json.loads(result.stdout)["datasets"][1]["class_names"][0] == "T-shirt/top"


def test_cli_list_with_a_name_is_a_usage_error() -> None:
    """download mnist --list listed the datasets and exited 0: a script asking for mnist
    went on without it."""
    result = CliRunner().invoke(cli, ["download", "mnist", "--list"])
    assert result.exit_code == 2
    assert "--list lists the datasets and downloads nothing: give it without a NAME" in (
        result.stderr
    )


# --- real subprocesses ------------------------------------------------------------------------


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLCLI_")}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_committed_archives_are_present_and_verified() -> None:
    result = run_python("-m", "dlcli", "download", "fashion-mnist", "--data-dir", "data")
    assert result.returncode == 0, result.stderr
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert f"{name}: present, verified" in result.stderr
    assert "(0 downloaded, 4 already present)" in result.stdout


def test_download_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from dlcli.cli import cli\n"
        "assert 'torch' not in sys.modules, 'import dlcli.cli imported torch'\n"
        "try:\n"
        "    cli(['download', 'mnist', '--data-dir', 'data', '--json'], prog_name='dlcli')\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('torch' in sys.modules)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert json.loads("\n".join(result.stdout.strip().splitlines()[:-1]))["dataset"] == "mnist"


def test_two_downloads_into_one_folder_at_once_both_succeed(
    entry: DatasetEntry, data_dir: Path, source: Path
) -> None:
    """Two downloads of one dataset into one folder at once (two CI jobs, two terminals) wrote
    the same .part files: the first saw its .part vanish ("cannot write: the directory vanished
    while writing", exit 3), others blamed a good mirror for a checksum mismatch. The second
    now waits for the first (saying so) and finds its files present."""
    import threading

    first_started = threading.Event()
    first_events: list[DownloadEvent] = []
    second_events: list[DownloadEvent] = []

    def slow(event: DownloadEvent) -> None:
        first_events.append(event)
        if event.kind == "progress" and not first_started.is_set():
            first_started.set()  # its .part holds its first bytes: let the second one start
            time.sleep(1.0)

    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            outcome["first"] = download_dataset(
                entry, data_dir, mirrors=[str(source)], on_event=slow
            )
        except Exception as err:  # reported by the assertions below
            outcome["first"] = err

    thread = threading.Thread(target=first)
    thread.start()
    assert first_started.wait(30)
    second = download_dataset(entry, data_dir, mirrors=[str(source)], on_event=second_events.append)
    thread.join(30)
    statuses = outcome["first"]
    assert isinstance(statuses, list), statuses
    assert [s.status for s in statuses] == ["downloaded"] * 4
    assert [s.status for s in second] == ["present"] * 4
    assert second_events[0].kind == "waiting"
    assert f"another dlcli process is downloading into {data_dir / 'tiny'}" in (
        second_events[0].reason
    )
    assert_complete(entry, data_dir, source)
