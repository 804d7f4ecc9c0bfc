"""Hostile and faulty data files (issue 14): decompression bombs, headers that lie about their
size, FIFOs and devices, tampered registry archives, data changed after training, empty
splits. One row per case: the command, the exit code and a fragment of the message. Cases
marked ``bomb`` run a real ``dlcli`` subprocess under ``ulimit -v 2000000`` and must end
within seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_process import run_real
from click.testing import CliRunner
from conftest import REPO_DATA, write_tiny_config

from dlcli.cli import cli
from dlcli.data.idx import write_idx


@dataclass
class World:
    root: Path
    config: Path
    run_dir: Path

    def file(self, name: str, data: bytes) -> Path:
        path = self.root / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path

    @property
    def raw(self) -> dict[str, object]:
        return dict(yaml.safe_load(self.config.read_text()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("hostile-data")
    config = write_tiny_config(root)
    run_dir = root / "trained"
    result = CliRunner().invoke(cli, ["train", str(config), "--quiet", "--output", str(run_dir)])
    assert result.exit_code == 0, result.output
    return World(root, config, run_dir)


# --- the bombs --------------------------------------------------------------------------------


def idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def gzip_bomb(header: bytes, gigabytes: int = 3) -> bytes:
    """A ~3 MB gzip file that inflates to ``gigabytes`` GB of zeros after ``header``: one
    member of 100 MB of zeros compressed once and repeated (gzip allows many members)."""
    zeros = gzip.compress(bytes(100 << 20), compresslevel=1, mtime=0)
    first = gzip.compress(header + bytes(100 << 20), compresslevel=1, mtime=0)
    return first + zeros * (gigabytes * 10 - 1)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width × height (its pixel data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(100)))
        + chunk(b"IEND", b"")
    )


def npy_claiming(count: int) -> bytes:
    header = {"descr": "|u1", "fortran_order": False, "shape": (count, 8, 8)}
    text = repr(header).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(64)


Args = Callable[[World], list[str]]


def predict(name: str, data: Callable[[], bytes]) -> Args:
    return lambda w: ["predict", str(w.run_dir), str(w.file(name, data()))]


def train_with(key: str, name: str, data: Callable[[], bytes]) -> Args:
    return lambda w: ["train", str(w.config), "--set", f"data.{key}={w.file(name, data())}"]


def empty_folder(w: World) -> str:
    """A folder of its own: the shared root gains other cases' files (one may be an image)."""
    path = w.root / "empty-folder"
    path.mkdir(exist_ok=True)
    return str(path)


def fifo(w: World, name: str) -> str:
    path = w.root / "files" / name
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def sparse_image(w: World) -> str:
    """A 3 GB sparse file named .png: read whole, an internal MemoryError under ulimit -v (and
    3 GB for each process decoding a folder holding such files, without it)."""
    path = w.root / "files" / "sparse.png"
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(3 << 30)
    return str(path)


def tiny_idx(count: int, images: bool) -> bytes:
    shape = (count, 8, 8) if images else (count,)
    return gzip.compress(idx_header(8, shape) + bytes(int(np.prod(shape))))


@dataclass
class Case:
    id: str
    args: Args
    code: int
    fragment: str
    bomb: bool = False


CASES = [
    Case("predict-gzip-bomb", predict("bomb.gz", lambda: gzip_bomb(idx_header(8, (10, 8, 8)))),
         3, "IDX payload is longer than its header says", bomb=True),
    Case("train-gzip-bomb", train_with("train_images", "tbomb.gz",
         lambda: gzip_bomb(idx_header(8, (400, 8, 8)))), 3, "longer than its header says",
         bomb=True),
    Case("idx-header-claims-a-terabyte",
         predict("tera.gz", lambda: gzip.compress(idx_header(8, (10**6, 1000, 1000)))), 3,
         "more than a gzip file of", bomb=True),
    Case("idx-255-dimensions",
         predict("dims.idx", lambda: idx_header(8, (1,) * 255) + b"\0"), 3,
         "IDX header has 255 dimensions, more than the 8 dlcli reads"),
    Case("npy-claims-10-to-12-images", predict("big.npy", lambda: npy_claiming(10**12)), 3,
         "the .npy header declares shape 1000000000000×8×8", bomb=True),
    Case("npy-of-objects", predict("obj.npy", lambda: _npy_objects()), 3,
         "a .npy array of Python objects is refused"),
    Case("png-20000-by-20000", predict("huge.png", lambda: png_header_only(20000, 20000)), 3,
         "more than the 50,000,000 pixels dlcli decodes", bomb=True),
    Case("png-above-pillows-warning", predict("warn.png", lambda: png_header_only(10000, 9000)),
         3, "more than the 50,000,000 pixels dlcli decodes"),
    Case("png-just-above-the-limit", predict("above.png", lambda: png_header_only(8000, 7000)),
         3, "dlcli decodes: the image declares 56,000,000 (a decompression bomb?)"),
    Case("predict-a-fifo", lambda w: ["predict", str(w.run_dir), fifo(w, "in.fifo")], 3,
         "is a FIFO (named pipe), expected a regular input file", bomb=True),
    Case("train-images-a-fifo",
         lambda w: ["train", str(w.config), "--set", f"data.train_images={fifo(w, 'tr.fifo')}"],
         3, "is a FIFO (named pipe), expected a regular data file", bomb=True),
    Case("predict-a-device", lambda w: ["predict", str(w.run_dir), "/dev/zero"], 3,
         "/dev/zero: is a character device, expected a regular input file", bomb=True),
    Case("predict-a-directory", lambda w: ["predict", str(w.run_dir), empty_folder(w)], 3,
         "no image files in the folder"),  # a folder is read for its images (issue 15)
    Case("train-images-a-device",
         lambda w: ["train", str(w.config), "--set", "data.train_images=/dev/zero"], 3,
         "/dev/zero: is a character device", bomb=True),
    # a CSV is read within DATA_MAX_BYTES (8 GiB) without asking for 8 GiB (read(n) does)
    Case("csv-read-under-a-memory-limit", lambda w: ["data", "check", str(w.file("nul.csv",
         b"path,label\nx.png,a\ny\0.png,b\n"))], 3, "nul.csv: line 3: the path", bomb=True),
    Case("a-3-gb-file-named-png", lambda w: ["predict", str(w.run_dir), sparse_image(w)], 3,
         "sparse.png: the image file is 3,221,225,472 bytes, more than the 1,073,741,824",
         bomb=True),
    Case("empty-test-split", lambda w: ["train", str(w.config), "--output", str(w.root / "e1"),
         "--set", f"data.test_images={w.file('ti0.gz', tiny_idx(0, True))}",
         "--set", f"data.test_labels={w.file('tl0.gz', tiny_idx(0, False))}"], 3,
         "ti0.gz: holds 0 images"),
    Case("empty-train-split", lambda w: ["train", str(w.config), "--output", str(w.root / "e2"),
         "--set", f"data.train_images={w.file('i0.gz', tiny_idx(0, True))}",
         "--set", f"data.train_labels={w.file('l0.gz', tiny_idx(0, False))}"], 3,
         "i0.gz: holds 0 images"),
]  # fmt: skip


def _npy_objects() -> bytes:
    header = {"descr": "|O", "fortran_order": False, "shape": (2,)}
    text = repr(header).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(16)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_data(case: Case, world: World) -> None:
    args = case.args(world)
    start = time.monotonic()
    if case.bomb:
        code, _, err = run_real([*args, "--quiet"], bomb=True, timeout=120)
    else:
        result = CliRunner().invoke(cli, args)
        code, err = result.exit_code, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), err
    seconds = time.monotonic() - start
    assert code == case.code, err
    assert case.fragment in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert "Warning" not in err, err  # Pillow's DecompressionBombWarning, numpy's, ...
    assert len(err) < 1000, f"the message is {len(err)} characters"
    if case.bomb:
        assert seconds < 120, f"took {seconds:.1f} s"


# --- data verified, not assumed -------------------------------------------------------------


def _same_size_gzip(content: bytes, size: int) -> bytes:
    """``content`` gzip-compressed into exactly ``size`` bytes (padded in the header's FEXTRA
    field, which readers skip)."""
    deflated = zlib.compress(content, 9)[2:-4]  # the raw deflate stream
    trailer = struct.pack("<II", zlib.crc32(content) & 0xFFFFFFFF, len(content) & 0xFFFFFFFF)
    padding = size - (10 + 2 + len(deflated) + len(trailer))
    assert padding >= 0, "the tampered file compresses larger than the original"
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + struct.pack("<H", padding)
    return header + bytes(padding) + deflated + trailer


def test_a_same_size_tampered_registry_archive_is_refused(
    fashion_run: Path, tmp_path: Path
) -> None:
    """Every test label +1, in a file of the very size the registry publishes: the size check
    passes, the SHA-256 computed while reading does not."""
    data_dir = tmp_path / "data"
    shutil.copytree(REPO_DATA / "fashion-mnist", data_dir / "fashion-mnist")
    labels_path = data_dir / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    original = labels_path.read_bytes()
    content = bytearray(gzip.decompress(original))
    content[8:] = bytes((b + 1) % 10 for b in content[8:])
    labels_path.write_bytes(_same_size_gzip(bytes(content), len(original)))
    assert gzip.decompress(labels_path.read_bytes()) == bytes(content)
    args = ["evaluate", str(fashion_run), "--split", "test", "--data-dir", str(data_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert "t10k-labels-idx1-ubyte.gz: checksum mismatch" in result.stderr
    assert "dlcli download fashion-mnist --force" in result.stderr


def test_metrics_record_the_sha256_of_the_files_read(fashion_run: Path) -> None:
    import hashlib

    recorded = json.loads((fashion_run / "metrics.json").read_text())["dataset"]["checksums"]
    for name, digest in recorded.items():
        actual = hashlib.sha256((REPO_DATA / "fashion-mnist" / name).read_bytes()).hexdigest()
        assert digest == actual, name


def test_evaluate_refuses_changed_data_unless_told(world: World, tmp_path: Path) -> None:
    """Explicit files replaced after training: exit 3 naming the file; with
    --accept-changed-data the metrics are computed and the document says which changed."""
    raw = world.raw
    data = dict(raw["data"])  # type: ignore[arg-type]
    run_dir = tmp_path / "run"
    shutil.copytree(world.run_dir, run_dir)
    labels = Path(data["test_labels"])
    original = labels.read_bytes()
    try:
        array = np.frombuffer(gzip.decompress(original)[8:], dtype=np.uint8)
        write_idx(labels, ((array + 1) % 4).astype(np.uint8))
        result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--split", "test"])
        assert result.exit_code == 3, result.output
        assert f"{labels}: changed since the model was trained" in result.stderr
        assert "--accept-changed-data" in result.stderr
        args = ["evaluate", str(run_dir), "--split", "test", "--accept-changed-data", "--json"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        assert document["data_changed"] == [str(labels)]
        assert "changed since the model was trained" in result.stderr
    finally:
        labels.write_bytes(original)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data_changed"] == []
