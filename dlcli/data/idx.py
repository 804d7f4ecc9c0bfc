"""Read and write LeCun's IDX format (the MNIST files), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian ``uint32`` size per
dimension, then the values in C order, big-endian. numpy only: no torch here, so that
``dlcli download`` stays fast.

Reading is one pass over the file with no per-element Python: gzip data (recognised by its
``1f 8b`` magic, whatever the file is called) is inflated chunk by chunk straight into one
preallocated ``bytearray``, and ``np.frombuffer`` views it, so ``uint8`` arrays come back
writable and without a copy. zlib releases the GIL, so files read in threads decompress in
parallel.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from dlcli.errors import DataError

# IDX type code -> big-endian numpy dtype.
TYPE_CODES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in TYPE_CODES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16  # compressed bytes fed to zlib per call
_MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this


def valid_type_codes() -> str:
    """``"0x08 (uint8), 0x09 (int8), …"``: the codes for error messages."""
    return ", ".join(
        f"0x{code:02X} ({dt.newbyteorder('=').name})" for code, dt in TYPE_CODES.items()
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a native-endian array of its shape.

    Raises :class:`DataError` naming ``path`` when the file is missing, empty, a corrupt or
    truncated gzip file, not IDX, or holds more or fewer bytes than its header says.
    """
    return decode_idx(read_file(path), source=os.fspath(path))


def read_file(path: str | os.PathLike[str]) -> bytearray:
    """The bytes of ``path`` in a writable buffer; a :class:`DataError` when it cannot be read."""
    try:
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            view, done = memoryview(buf), 0
            while done < len(buf):
                n = f.readinto(view[done:])
                if not n:  # the file shrank while we read it
                    break
                done += n
            view.release()
            del buf[done:]
            return buf
    except FileNotFoundError:
        raise DataError(f"file not found: {os.fspath(path)}") from None
    except IsADirectoryError:
        raise DataError(f"{os.fspath(path)} is a directory, expected an IDX file") from None
    except OSError as err:
        raise DataError(f"cannot read {os.fspath(path)}: {err.strerror or err}") from None


def decode_idx(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX ``data`` (gzip-compressed or raw); ``source`` names it in error messages.

    The result is a view of ``data`` (or of the decompressed buffer) when no byte swap is needed.
    """
    if len(data) == 0:
        raise DataError(f"{source} is empty (0 bytes), expected an IDX file")
    if bytes(data[:2]) == _GZIP_MAGIC:
        data = _gunzip(data, source)
    return _parse(data, source)


def _gunzip(data: bytes | bytearray | memoryview, source: str) -> bytearray:
    """Inflate every gzip member of ``data`` into one buffer sized from the gzip trailer."""
    src = memoryview(data)
    out = bytearray(_size_hint(src))
    written = start = 0
    while start < len(src):
        inflater = zlib.decompressobj(wbits=31)
        pos = start
        try:
            while not inflater.eof and pos < len(src):
                chunk = inflater.decompress(src[pos : pos + _CHUNK])
                out[written : written + len(chunk)] = chunk  # grows `out` only if the hint was low
                written += len(chunk)
                pos += _CHUNK
        except zlib.error as err:
            raise DataError(
                f"{source} starts like a gzip file (1f 8b) but is not valid gzip data: {err}"
            ) from None
        if not inflater.eof:
            raise DataError(
                f"{source} is a truncated gzip file: its {len(src)} bytes end before the end of "
                "the compressed stream (an interrupted download?)"
            )
        start = min(pos, len(src)) - len(inflater.unused_data)
        if start < len(src) and bytes(src[start : start + 2]) != _GZIP_MAGIC:
            raise DataError(
                f"{source}: {len(src) - start} unexpected bytes after the end of the gzip stream"
            )
    del out[written:]
    return out


def _size_hint(src: memoryview) -> int:
    """The uncompressed size stored in the gzip trailer (mod 2**32), bounded by what is possible."""
    if len(src) < 18:
        return 0
    isize = int.from_bytes(src[-4:], "little")
    return min(isize, _MAX_DEFLATE_RATIO * len(src))


def _parse(data: bytes | bytearray | memoryview, source: str) -> np.ndarray:
    """Check the IDX header against the payload size and view the payload as an array."""
    head = bytes(data[:4])
    if head[:2] != b"\0\0"[: len(head)]:
        found = " ".join(f"{b:02x}" for b in head)
        raise DataError(
            f"{source} is not an IDX file: expected it to start with 00 00, found {found}"
        )
    if len(head) < 4:
        raise DataError(
            f"{source}: IDX header is truncated: expected at least 4 bytes, found {len(head)}"
        )
    code, ndim = head[2], head[3]
    dtype = TYPE_CODES.get(code)
    if dtype is None:
        raise DataError(
            f"{source}: unknown IDX type code 0x{code:02X}; expected one of {valid_type_codes()}"
        )
    if ndim == 0:
        raise DataError(f"{source}: IDX header has 0 dimensions, expected at least 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source}: IDX header is truncated: {ndim} dimensions need a {header_len}-byte "
            f"header, found {len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    _check_payload(len(data) - header_len, shape, dtype, source)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_len)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def _check_payload(
    found: int, shape: tuple[int, ...], dtype: np.dtype[np.generic], source: str
) -> None:
    expected = math.prod(shape) * dtype.itemsize
    if found != expected:
        relation = "shorter" if found < expected else "longer"
        dims = "×".join(map(str, shape))
        raise DataError(
            f"{source}: IDX payload is {relation} than its header says: shape {dims} of "
            f"{dtype.newbyteorder('=').name} needs {expected} bytes, found {found}"
        )


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as IDX to ``path``, gzip-compressed when the name ends in ``.gz``.

    Atomic: the file appears complete or not at all (temporary file, then ``os.replace``).
    Raises ``ValueError`` for a dtype IDX cannot hold (see :data:`TYPE_CODES`), no dimensions, or
    more than 255 of them.
    """
    target = Path(path)
    header, payload = _encode(np.asarray(array))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            if target.name.endswith(".gz"):
                with gzip.GzipFile(
                    filename=target.name[:-3], mode="wb", fileobj=raw, compresslevel=6, mtime=0
                ) as gz:
                    gz.write(header)
                    gz.write(payload)
            else:
                raw.write(header)
                raw.write(payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encode(array: np.ndarray) -> tuple[bytes, memoryview]:
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(
            f"IDX cannot hold dtype {array.dtype}; expected one of {valid_type_codes()}"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got an array of shape {array.shape}")
    if max(array.shape) > 0xFFFFFFFF:
        raise ValueError(f"IDX sizes are 32-bit, got an array of shape {array.shape}")
    big = np.ascontiguousarray(array, dtype=TYPE_CODES[code])
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header, big.reshape(-1).view(np.uint8).data
