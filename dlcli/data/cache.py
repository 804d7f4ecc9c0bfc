"""The decoded-image cache: an image folder or CSV is decoded once, then loads as fast as an
IDX archive.

An entry is one safetensors file (never a pickle) holding the ``uint8`` N×C×H×W pixels, the
index of each kept file in the listing, each kept file's content digest (what a run's data
fingerprint is made of: :func:`dlcli.data.local.fingerprint`), and, as metadata, the conversion
used and the files that could not be read. Its name is a hash of everything the pixels depend
on: the source's absolute path, every file's path, size, modification time and status-change
time (nanoseconds), the conversion settings (the input shape, or "inferred"; ``resize``,
``background``) and the cache format. Change any of them and the key changes: the old entry is
not read again, and it is deleted when the new one for the same source and settings is written,
whichever earlier cache format wrote it (only a file named as an entry whose header says dlcli
wrote it: nothing else in the folder is touched). The status-change time (ctime) is what
notices a file rewritten with its size and modification time kept (``touch -r``, ``cp -p``, an
archive extracted over the folder): every write sets it to the current time, and no tool sets
it back. A ``chmod`` or a new hard link sets it too: the folder is decoded again.

Where: ``data.cache_dir``, else ``$DLCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlcli``, else
``~/.cache/dlcli``; entries live in its ``images/`` folder. ``data.cache: false`` turns the
cache off. An entry is written to a temporary name (``.tmp-xxxxxxxx.safetensors``) and renamed
into place; a temporary file a killed process left there is deleted by a later write once it
is an hour old (:func:`dlcli.atomic.remove_abandoned`: a fresher one may be another process's
entry on its way). An entry that does not match what its name promises (shape, count), or
whose tensors' bytes no longer match the CRC-32 written with them, is ignored and rewritten.
No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dlcli import atomic
from dlcli.data.decode import Decoded
from dlcli.data.images import DIGEST_BYTES, Conversion
from dlcli.errors import DataError
from dlcli.untrusted import open_regular

# 2: with the files' digests; 3: float images from [0, 1]; 4: each tensor's CRC-32
FORMAT = "dlcli-image-cache-4"
# The formats before it: their entries are never read again, so writing an entry removes the
# ones of the same source and settings they left (see save). Bump FORMAT: add the old one here.
EARLIER_FORMATS = ("dlcli-image-cache-1", "dlcli-image-cache-2", "dlcli-image-cache-3")
ENTRY_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{32}\.safetensors")  # what entry_path names
TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".safetensors"  # an entry being written (save)
TEMP_NAME = atomic.mkstemp_names(TEMP_PREFIX, TEMP_SUFFIX)


@dataclass(frozen=True)
class Inferred:
    """The settings of a conversion whose input shape is inferred from the files: the entry
    depends on ``resize`` and ``background`` as much as on the shape."""

    resize: str
    background: int

    def to_dict(self) -> dict[str, Any]:
        return {"inferred": True, "resize": self.resize, "background": self.background}

    def matches(self, stored: Conversion) -> bool:
        return (stored.resize, stored.background) == (self.resize, self.background)


def cache_dir(configured: str | None = None) -> Path:
    """The cache's root folder (see the module doc for the order)."""
    if configured:
        return Path(configured)
    if os.environ.get("DLCLI_CACHE_DIR"):
        return Path(os.environ["DLCLI_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "dlcli"
    return Path.home() / ".cache" / "dlcli"


def entry_path(
    root: Path,
    source: Path,
    paths: Sequence[str],
    conversion: Conversion | Inferred,
    stats: npt.NDArray[np.int64] | None = None,
) -> Path:
    """The entry for these files and settings: ``images/<settings>-<files>.safetensors``.
    ``stats`` is each file's (size, mtime_ns, ctime_ns) when the listing took them."""
    prefix = _prefix(FORMAT, source, conversion.to_dict())
    files = _fingerprint(paths, stats if stats is not None else _file_stats(paths))
    return root / "images" / f"{prefix}-{files[:32]}.safetensors"


def _prefix(format: str, source: Path, conversion: dict[str, Any] | str) -> str:
    """The first part of an entry's name: a hash of the format, source and settings."""
    settings = {"format": format, "source": os.path.abspath(source), "conversion": conversion}
    return _hash(json.dumps(settings, sort_keys=True).encode())[:16]


def _replaced_prefixes(source: Path, key: Conversion | Inferred) -> set[str]:
    """The name prefixes of the entries an entry of ``source`` and ``key`` replaces: this
    format's (the files changed since) and every earlier format's. Format 1 first keyed an
    inferred shape as just ``"inferred"``."""
    settings: list[dict[str, Any] | str] = [key.to_dict()]
    if isinstance(key, Inferred):
        settings.append("inferred")
    earlier = {_prefix(f, source, s) for f in EARLIER_FORMATS for s in settings}
    return earlier | {_prefix(FORMAT, source, key.to_dict())}


def _file_stats(paths: Sequence[str]) -> npt.NDArray[np.int64]:
    """(N, 3): every file's size, mtime_ns and ctime_ns; -1s for one that cannot be stat'ed."""
    stats = np.full((len(paths), 3), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            info = os.stat(path)
        except OSError:
            continue
        stats[i] = info.st_size, info.st_mtime_ns, info.st_ctime_ns
    return stats


def _fingerprint(paths: Sequence[str], stats: npt.NDArray[np.int64]) -> str:
    """A hash of every file's path, size, modification time and status-change time."""
    digest = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogateescape"))
    digest.update(b"\0" + np.ascontiguousarray(stats, dtype="<i8").tobytes())
    return digest.hexdigest()


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(
    entry: Path, count: int, conversion: Conversion | Inferred
) -> tuple[Decoded, Conversion] | None:
    """The cached pixels of ``count`` listed files, or None (absent, unreadable, or not what the
    key promised: such an entry is simply decoded again and replaced)."""
    if not entry.is_file():
        return None
    try:
        meta, tensors = _read_entry(entry)
        images, kept, digests = tensors["images"], tensors["kept"], tensors["digests"]
        stored = Conversion(**json.loads(meta["conversion"]))
        bad = [tuple(item) for item in json.loads(meta["bad"])]
        intact = json.loads(meta["crc32"]) == _crc32s(tensors)
    except Exception:  # a damaged entry is a cache miss, never an error
        return None
    if meta.get("format") != FORMAT or not intact or not conversion.matches(stored):
        return None
    ok = (
        images.dtype == np.uint8
        and images.shape[1:] == stored.chw
        and kept.dtype == np.int64
        and kept.shape == (images.shape[0],)
        and digests.dtype == np.uint8
        and digests.shape == (images.shape[0], DIGEST_BYTES)
        and images.shape[0] + len(bad) == count
        and (count == 0 or (kept.size == 0 or (kept.min() >= 0 and kept.max() < count)))
    )
    if not ok:
        return None
    return Decoded(images, kept, [(str(p), str(r)) for p, r in bad], digests), stored


def save(
    entry: Path, decoded: Decoded, conversion: Conversion, source: Path, key: Conversion | Inferred
) -> str | None:
    """Write an entry atomically and drop older entries of the same source and settings
    (``source`` and ``key``, as :func:`entry_path` took them; ``conversion`` is the one used),
    this format's and earlier formats', and the temporary files killed writers left. None
    when written; else why the cache folder cannot be written (the cache is an optimisation
    only: the caller notes it)."""
    tensors: dict[str, Any] = {
        "images": np.ascontiguousarray(decoded.images),
        "kept": np.ascontiguousarray(decoded.kept),
        "digests": np.ascontiguousarray(decoded.digests),
    }
    metadata = {
        "format": FORMAT,
        "conversion": json.dumps(conversion.to_dict()),
        "bad": json.dumps(decoded.bad),
        "crc32": json.dumps(_crc32s(tensors)),
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=entry.parent)
        os.close(fd)
        try:
            _write_entry(tmp, tensors, metadata)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        return err.strerror or str(err)
    _remove_replaced(entry, _replaced_prefixes(source, key))
    atomic.remove_abandoned(entry.parent, TEMP_NAME)
    return None


def _crc32s(tensors: dict[str, npt.NDArray[Any]]) -> dict[str, int]:
    """Each tensor's CRC-32 (a 50 MiB entry in about 0.03 s): an entry whose bytes changed
    on disk since it was written (a flipped bit keeps its size and its header) is a miss, not
    pixels trained on."""
    return {name: zlib.crc32(np.ascontiguousarray(a).data) for name, a in tensors.items()}


def _remove_replaced(entry: Path, prefixes: set[str]) -> None:
    """Delete the entries beside ``entry`` whose names start with one of ``prefixes``: only
    files named as dlcli names its entries and whose header says dlcli wrote them (a file of
    another name, or another content, put in the cache folder is left as it is)."""
    with contextlib.suppress(OSError):
        for old in os.scandir(entry.parent):
            if old.name == entry.name or not ENTRY_NAME.fullmatch(old.name):
                continue
            if old.name.split("-", 1)[0] in prefixes and _written_by_dlcli(Path(old.path)):
                with contextlib.suppress(OSError):
                    os.unlink(old.path)


def _written_by_dlcli(path: Path) -> bool:
    """A regular file (not a link) whose safetensors header names a dlcli image-cache format."""
    try:
        if path.is_symlink():
            return False
        with open_regular(path, DataError, "cache entry") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= _HEADER_MAX:
                return False
            meta = json.loads(f.read(size)).get("__metadata__")
    except (OSError, ValueError, AttributeError, DataError):
        return False
    found = meta.get("format") if isinstance(meta, dict) else None
    return found == FORMAT or found in EARLIER_FORMATS


# --- the entry file ----------------------------------------------------------------------------
# The safetensors layout (8-byte little-endian header size, a JSON header naming each tensor's
# dtype, shape and byte range, then the bytes), written and read here directly: the
# safetensors library copies every tensor through a bytes object on save and reads through a
# memory map on load, which would double the peak memory of a 50 MiB entry. An entry stays
# readable by ``safetensors.safe_open`` (a test checks both ways).

_DTYPES: dict[str, np.dtype[Any]] = {"U8": np.dtype(np.uint8), "I64": np.dtype("<i8")}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_HEADER_MAX = 256 * 2**20  # the "bad" files' list lives in the header


def _write_entry(path: str, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        header[name] = {
            "dtype": _CODES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


def _read_entry(path: Path) -> tuple[dict[str, str], dict[str, npt.NDArray[Any]]]:
    """The metadata and tensors of an entry, each tensor read straight into its array; a
    ValueError when the file is not a well-formed entry."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= _HEADER_MAX:
            raise ValueError("bad header size")
        header = json.loads(f.read(size))
        start = 8 + size
        total = os.fstat(f.fileno()).st_size - start
        tensors: dict[str, npt.NDArray[Any]] = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES[spec["dtype"]]
            shape = tuple(int(n) for n in spec["shape"])
            begin, end = (int(n) for n in spec["data_offsets"])
            count = int(np.prod(shape, dtype=np.int64))
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= total:
                raise ValueError(f"{name}: bad shape or range")
            if end - begin != count * dtype.itemsize:
                raise ValueError(f"{name}: size does not match its shape")
            array = np.empty(shape, dtype=dtype)
            f.seek(start + begin)
            if f.readinto(array.reshape(-1).view(np.uint8).data) != end - begin:
                raise ValueError(f"{name}: truncated")
            tensors[name] = array
    return dict(header.get("__metadata__") or {}), tensors
