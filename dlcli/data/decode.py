"""Image files → one N×C×H×W ``uint8`` array, decoded in parallel on every core.

Small images decode in tens of microseconds, most of it Pillow's Python code, so threads
would queue on the GIL: files are decoded in chunks by a pool of processes (``forkserver``
on Linux, ``spawn`` elsewhere; none of them imports torch). Each worker returns its chunk's
pixels and the files it could not read; the parent copies the chunk into the one preallocated
array. A file that cannot be read never stops the others: it is reported with its reason (the
caller decides whether that stops training, see ``data.skip_bad_files``). Fewer than
:data:`PARALLEL_MIN` files are decoded in this process (starting workers costs more).

The decoded array is cached by :mod:`dlcli.data.cache`. No torch here.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dlcli.data.images import (
    DIGEST_BYTES,
    GREY_MODES,
    Conversion,
    ImageInfo,
    inspect_image,
    peek_image,
    read_image,
)
from dlcli.errors import DataError

BAD_SHOWN = 20  # unreadable files named in an error message (all are counted)
PARALLEL_MIN = 512  # fewer files are decoded in this process
CHUNK_MAX = 512  # files per task handed to a worker
IN_FLIGHT = 3  # tasks per worker submitted ahead of the one being collected


@dataclass
class Decoded:
    """The pixels of the files that could be read, in the order given, and the others."""

    images: npt.NDArray[np.uint8]  # (kept, C, H, W)
    kept: npt.NDArray[np.int64]  # index into the file list of each image
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # (kept, DIGEST_BYTES): each kept file's ImageInfo.digest, from the bytes decoded
    digests: npt.NDArray[np.uint8] = field(
        default_factory=lambda: np.zeros((0, DIGEST_BYTES), dtype=np.uint8)
    )


def worker_count(requested: int | None = None) -> int:
    """``requested``, or every core this process may run on."""
    if requested:
        return requested
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_files(
    paths: Sequence[str | Path], conversion: Conversion, *, workers: int | None = None
) -> Decoded:
    """Decode and convert every file (see :mod:`dlcli.data.images`); bad files are left out.
    Each kept file's content digest comes from the bytes decoded (no second read)."""
    c, h, w = conversion.chw
    try:
        out = np.empty((len(paths), c, h, w), dtype=np.uint8)
    except MemoryError:
        raise DataError(
            f"not enough memory for {len(paths):,} images of {h} × {w} × {c} "
            f"({len(paths) * c * h * w:,} bytes); use smaller images (model.input_shape) "
            f"or fewer files"
        ) from None
    ok = np.ones(len(paths), dtype=bool)
    digests = np.zeros((len(paths), DIGEST_BYTES), dtype=np.uint8)
    bad: list[tuple[str, str]] = []
    for start, (pixels, errors, found) in _run(_decode_chunk, paths, conversion, workers):
        out[start : start + len(pixels)] = pixels
        digests[start : start + len(found)] = found
        for i, reason in errors:
            ok[start + i] = False
            bad.append((str(paths[start + i]), reason))
    kept = np.flatnonzero(ok).astype(np.int64)
    if bad:  # compact: the bad files' slots go
        out, digests = out[kept], digests[kept]
    return Decoded(out, kept, bad, digests)


def inspect_files(
    paths: Sequence[str | Path], *, workers: int | None = None
) -> tuple[list[ImageInfo | None], list[tuple[str, str]]]:
    """Decode every file without converting it: what it holds, or why it cannot be read."""
    return _all_infos(_inspect_chunk, paths, workers)


def peek_files(
    paths: Sequence[str | Path], *, workers: int | None = None
) -> tuple[list[ImageInfo | None], list[tuple[str, str]]]:
    """Every file's mode and size from its header (None where it cannot be read), and why
    each unreadable one cannot be."""
    return _all_infos(_peek_chunk, paths, workers)


def _all_infos(
    chunk: Callable[
        [list[str], Conversion | None], tuple[list[ImageInfo | None], list[tuple[int, str]]]
    ],
    paths: Sequence[str | Path],
    workers: int | None,
) -> tuple[list[ImageInfo | None], list[tuple[str, str]]]:
    """``chunk`` (:func:`_inspect_chunk` or :func:`_peek_chunk`) over every file, in worker
    processes: each file's info (None where it cannot be read), and each failure by path."""
    infos: list[ImageInfo | None] = [None] * len(paths)
    bad: list[tuple[str, str]] = []
    for start, (chunk_infos, errors) in _run(chunk, paths, None, workers):
        infos[start : start + len(chunk_infos)] = chunk_infos
        bad += [(str(paths[start + i]), reason) for i, reason in errors]
    return infos, bad


def infer_conversion(
    infos: Sequence[ImageInfo | None],
    bad: Sequence[tuple[str, str]] = (),
    *,
    resize: str = "stretch",
    background: int = 0,
) -> Conversion:
    """The input shape a set of images suggests: 1 channel when every image is greyscale
    (else 3), and the most common height × width (the larger one on a tie). With no readable
    image, a :class:`DataError` naming the ``bad`` files (path, reason) :func:`peek_files`
    found."""
    found = [i for i in infos if i is not None]
    if not found:
        raise bad_files_error(
            bad,
            "Fix or remove them, or set model.input_shape",
            "no readable image to infer model.input_shape from: ",
        )
    channels = 1 if all(i.mode in GREY_MODES for i in found) else 3
    sizes = Counter((i.height, i.width) for i in found)
    (height, width), _ = max(sizes.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1]))
    return Conversion(height, width, channels, resize, background)


def bad_files_error(bad: Sequence[tuple[str, str]], remedy: str, lead: str = "") -> DataError:
    """The files that could not be read (the first :data:`BAD_SHOWN`, and the count), each a
    detail of its own (a file name holding a line break stays on its line), and ``remedy``."""
    named = [f"{path}: {reason}" for path, reason in bad[:BAD_SHOWN]]
    more = [f"… and {len(bad) - BAD_SHOWN} more"] if len(bad) > BAD_SHOWN else []
    plural = "s" if len(bad) != 1 else ""
    message = f"{lead}{len(bad)} image file{plural} could not be read"
    return DataError(message + (f". {remedy}" if remedy else ""), details=named + more)


# --- the pool ------------------------------------------------------------------------------


def _run(
    fn: Any, paths: Sequence[str | Path], conversion: Conversion | None, workers: int | None
) -> Any:
    """Yield (start, fn(chunk)) over chunks of ``paths``, in order, in worker processes."""
    names = [os.fspath(p) for p in paths]
    count = worker_count(workers)
    if count == 1 or len(names) < PARALLEL_MIN:
        yield 0, fn(names, conversion)
        return
    size = max(32, min(CHUNK_MAX, -(-len(names) // (count * 4))))
    starts = range(0, len(names), size)
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=count, mp_context=_context()) as pool:
            # a window of chunks in flight, not all of them: finished chunks waiting for
            # their turn would otherwise hold up to a second copy of the pixels
            pending: deque[Future[Any]] = deque()
            ahead = iter(starts)
            for start in starts:
                while len(pending) < IN_FLIGHT * count:
                    following = next(ahead, None)
                    if following is None:
                        break
                    pending.append(pool.submit(fn, names[following : following + size], conversion))
                result = pending.popleft().result()
                done = start + size
                yield start, result
    except BrokenProcessPool:  # a worker could not start or was killed: finish here
        for start in range(done, len(names), size):
            yield start, fn(names[start : start + size], conversion)


def _context() -> multiprocessing.context.BaseContext:
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["dlcli.data.decode"])
        return ctx
    return multiprocessing.get_context("spawn")


def _decode_chunk(
    names: list[str], conversion: Conversion
) -> tuple[npt.NDArray[np.uint8], list[tuple[int, str]], npt.NDArray[np.uint8]]:
    c, h, w = conversion.chw
    pixels = np.zeros((len(names), c, h, w), dtype=np.uint8)
    digests = np.zeros((len(names), DIGEST_BYTES), dtype=np.uint8)
    errors: list[tuple[int, str]] = []
    for i, name in enumerate(names):
        try:
            array, info = read_image(name, conversion)
        except DataError as err:
            errors.append((i, _without_path(err.message, name)))
            continue
        pixels[i] = array.transpose(2, 0, 1)
        digests[i] = np.frombuffer(bytes.fromhex(info.digest), dtype=np.uint8)
    return pixels, errors, digests


def _inspect_chunk(
    names: list[str], _: Conversion | None
) -> tuple[list[ImageInfo | None], list[tuple[int, str]]]:
    return _infos(inspect_image, names)


def _peek_chunk(
    names: list[str], _: Conversion | None
) -> tuple[list[ImageInfo | None], list[tuple[int, str]]]:
    return _infos(peek_image, names)


def _infos(
    read: Callable[[str], ImageInfo], names: list[str]
) -> tuple[list[ImageInfo | None], list[tuple[int, str]]]:
    """``read`` of each file (None where it fails) and the failures, by index."""
    infos: list[ImageInfo | None] = []
    errors: list[tuple[int, str]] = []
    for i, name in enumerate(names):
        try:
            infos.append(read(name))
        except DataError as err:
            errors.append((i, _without_path(err.message, name)))
            infos.append(None)
    return infos, errors


def _without_path(message: str, name: str) -> str:
    return message.removeprefix(f"{name}: ")
