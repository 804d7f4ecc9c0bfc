"""The decoded-image cache: an image folder or CSV is decoded once, then loads as fast as an
IDX archive.

An entry is one safetensors file (never a pickle) holding the ``uint8`` N×C×H×W pixels, the
index of each kept file in the listing, and, as metadata, the conversion used and the files
that could not be read. Its name is a hash of everything the pixels depend on: the source's
absolute path, every file's path, size and modification time (nanoseconds), the conversion
settings (input shape or "inferred", ``resize``, ``background``) and the cache format.
Change any of them and the key changes: the old entry is not read again, and it is deleted
when the new one for the same source and settings is written.

Where: ``data.cache_dir``, else ``$DLCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/dlcli``, else
``~/.cache/dlcli``; entries live in its ``images/`` folder. ``data.cache: false`` turns the
cache off. An entry is written to a temporary name and renamed into place; an entry that does
not match what its name promises (shape, count) is ignored and rewritten. No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlcli.data.decode import Decoded
from dlcli.data.images import Conversion

FORMAT = "dlcli-image-cache-1"


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
    paths: Sequence[str | Path],
    conversion: Conversion | None,
    stats: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """The entry for these files and settings: ``images/<settings>-<files>.safetensors``."""
    settings = {
        "format": FORMAT,
        "source": os.path.abspath(source),
        "conversion": conversion.to_dict() if conversion else "inferred",
    }
    prefix = _hash(json.dumps(settings, sort_keys=True).encode())[:16]
    files = _fingerprint(paths, stats if stats is not None else _stats(paths))
    return root / "images" / f"{prefix}-{files[:32]}.safetensors"


def _stats(paths: Sequence[str | Path]) -> list[tuple[int, int]]:
    """(size, mtime_ns) of every file; (-1, -1) for one that cannot be stat'ed."""
    stats = []
    for path in paths:
        try:
            info = os.stat(path)
            stats.append((info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    return stats


def _fingerprint(paths: Sequence[str | Path], stats: Sequence[tuple[int, int]]) -> str:
    """A hash of every file's path, size and modification time."""
    text = "\n".join(
        f"{path}\0{size}\0{mtime}" for path, (size, mtime) in zip(paths, stats, strict=True)
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(
    entry: Path, count: int, conversion: Conversion | None
) -> tuple[Decoded, Conversion] | None:
    """The cached pixels of ``count`` listed files, or None (absent, unreadable, or not what the
    key promised: such an entry is simply decoded again and replaced)."""
    if not entry.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(os.fspath(entry), framework="np") as f:
            meta = f.metadata() or {}
            images, kept = f.get_tensor("images"), f.get_tensor("kept")
        stored = Conversion(**json.loads(meta["conversion"]))
        bad = [tuple(item) for item in json.loads(meta["bad"])]
    except Exception:  # a damaged entry is a cache miss, never an error
        return None
    if meta.get("format") != FORMAT or (conversion is not None and stored != conversion):
        return None
    ok = (
        images.dtype == np.uint8
        and images.shape[1:] == stored.chw
        and kept.dtype == np.int64
        and kept.shape == (images.shape[0],)
        and images.shape[0] + len(bad) == count
        and (count == 0 or (kept.size == 0 or (kept.min() >= 0 and kept.max() < count)))
    )
    if not ok:
        return None
    return Decoded(images, kept, [(str(p), str(r)) for p, r in bad]), stored


def save(entry: Path, decoded: Decoded, conversion: Conversion) -> bool:
    """Write an entry atomically and drop older entries of the same source and settings.
    False when the cache folder cannot be written (the cache is an optimisation only)."""
    from safetensors.numpy import save_file

    metadata = {
        "format": FORMAT,
        "conversion": json.dumps(conversion.to_dict()),
        "bad": json.dumps(decoded.bad),
    }
    tensors: dict[str, Any] = {
        "images": np.ascontiguousarray(decoded.images),
        "kept": np.ascontiguousarray(decoded.kept),
    }
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=entry.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return False
    prefix = entry.name.split("-", 1)[0] + "-"
    for old in entry.parent.glob(f"{prefix}*.safetensors"):
        if old != entry:
            with contextlib.suppress(OSError):
                old.unlink()
    return True
