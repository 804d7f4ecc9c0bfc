"""Read and write LeCun's IDX format (the MNIST files), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions, one big-endian ``uint32`` size per
dimension, then the values in C order, big-endian. numpy only: no torch here, so that
``dlcli download`` stays fast.

Reading is one pass over the file with no per-element Python: gzip data (recognised by its
``1f 8b`` magic, whatever the file is called) is inflated chunk by chunk into one
preallocated ``bytearray``, and ``np.frombuffer`` views it, so ``uint8`` arrays come back
writable and without a copy. zlib releases the GIL, so files read in threads decompress in
parallel.

The header is read first and nothing is allocated beyond what it declares: the payload size
it declares must be possible for the file (deflate expands at most 1032-fold) and within
:data:`~dlcli.limits.DATA_MAX_BYTES`, and inflating stops one byte past it, so a "zip bomb"
costs neither the memory nor the time of inflating it. Only regular files are read (a FIFO is
refused, never opened).
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import tempfile
import zlib
from pathlib import Path

import numpy as np

from dlcli import limits, untrusted
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
_OUT_CHUNK = 1 << 20  # inflated bytes produced per call


def looks_like_idx(head: bytes) -> bool:
    """Whether a file's first bytes can open an IDX archive: gzip's magic (a compressed one), or
    the two zero bytes every raw one starts with."""
    return head.startswith(_GZIP_MAGIC) or head.startswith(b"\0\0")


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
    """The bytes of ``path`` in a writable buffer; a :class:`DataError` when it cannot be read,
    is not a regular file (a FIFO, a device, a directory) or is larger than
    :data:`~dlcli.limits.DATA_MAX_BYTES`."""
    shown = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"file not found: {shown}") from None
    except OSError as err:
        raise DataError(f"cannot read {shown}: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{shown} is a directory, expected an IDX file")
    with untrusted.open_regular(path, DataError, "data file") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.DATA_MAX_BYTES:
            raise DataError(
                f"{shown}: {size:,} bytes, more than the {limits.DATA_MAX_BYTES:,} a data file "
                "may have"
            )
        try:
            buf = bytearray(size)
            view, done = memoryview(buf), 0
            while done < len(buf):
                n = f.readinto(view[done:])
                if not n:  # the file shrank while we read it
                    break
                done += n
            view.release()
        except OSError as err:
            raise DataError(f"cannot read {shown}: {err.strerror or err}") from None
        except MemoryError:
            raise DataError(f"{shown}: not enough memory to read its {size:,} bytes") from None
        del buf[done:]
        return buf


def decode_idx(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX ``data`` (gzip-compressed or raw); ``source`` names it in error messages.

    The result is a view of ``data`` (or of the decompressed buffer) when no byte swap is needed.
    """
    if len(data) == 0:
        raise DataError(f"{source} is empty (0 bytes), expected an IDX file")
    if bytes(data[:2]) == _GZIP_MAGIC:
        data = _gunzip(data, source)
    return _parse(data, source)


class _GzipStream:
    """The inflated bytes of gzip ``data`` (every member), read a bounded amount at a time."""

    def __init__(self, data: bytes | bytearray | memoryview, source: str) -> None:
        self.src = memoryview(data)
        self.source = source
        self.pos = 0  # the next compressed byte not yet given to the inflater
        self.inflater = zlib.decompressobj(wbits=31)

    def read(self, n: int) -> bytes:
        """Up to ``n`` inflated bytes (fewer only at the end of the data)."""
        out = bytearray()
        while len(out) < n:
            if self.inflater.eof and not self._next_member():
                break
            chunk: bytes | memoryview = self.inflater.unconsumed_tail
            if not chunk:
                if self.pos >= len(self.src):
                    raise DataError(
                        f"{self.source} is a truncated gzip file: its {len(self.src)} bytes end "
                        "before the end of the compressed stream (an interrupted download?)"
                    )
                chunk = self.src[self.pos : self.pos + _CHUNK]
                self.pos += len(chunk)
            try:
                out += self.inflater.decompress(chunk, n - len(out))
            except zlib.error as err:
                raise DataError(
                    f"{self.source} starts like a gzip file (1f 8b) but is not valid gzip "
                    f"data: {err}"
                ) from None
        return bytes(out)

    def _next_member(self) -> bool:
        """After the end of one gzip member: start the next one, if any."""
        start = self.pos - len(self.inflater.unused_data)
        if start >= len(self.src):
            return False
        if bytes(self.src[start : start + 2]) != _GZIP_MAGIC:
            raise DataError(
                f"{self.source}: {len(self.src) - start} unexpected bytes after the end of the "
                "gzip stream"
            )
        self.pos = start
        self.inflater = zlib.decompressobj(wbits=31)
        return True


def _gunzip(data: bytes | bytearray | memoryview, source: str) -> bytearray:
    """Inflate gzip IDX ``data``: the header first, then exactly the payload it declares (one
    byte more is an error), into one buffer of the declared size."""
    stream = _GzipStream(data, source)
    head = stream.read(4)
    _check_head(head, source)
    header = head + stream.read(4 * head[3])
    dtype, shape, header_len = _header(header, source)
    expected = header_len + math.prod(shape) * dtype.itemsize
    possible = min(limits.DATA_MAX_BYTES, _MAX_DEFLATE_RATIO * len(data))
    if expected > possible:
        dims = "×".join(map(str, shape))
        raise DataError(
            f"{source}: its IDX header declares shape {dims} of "
            f"{dtype.newbyteorder('=').name} ({expected:,} bytes), more than a gzip file of "
            f"{len(data):,} bytes can hold or than the {limits.DATA_MAX_BYTES:,} bytes a data "
            "file may have"
        )
    try:
        out = bytearray(expected)
    except MemoryError:
        raise DataError(
            f"{source}: not enough memory for the {expected:,} bytes it declares"
        ) from None
    out[:header_len] = header
    done = header_len
    while done < expected:
        part = stream.read(min(_OUT_CHUNK, expected - done))
        if not part:
            _check_payload(done - header_len, shape, dtype, source)
        out[done : done + len(part)] = part
        done += len(part)
    if stream.read(1):
        _check_payload(-1, shape, dtype, source)
    return out


def _parse(data: bytes | bytearray | memoryview, source: str) -> np.ndarray:
    """Check the IDX header against the payload size and view the payload as an array."""
    _check_head(bytes(data[:4]), source)
    dtype, shape, header_len = _header(data, source)
    _check_payload(len(data) - header_len, shape, dtype, source)
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_len)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def _check_head(head: bytes, source: str) -> None:
    """The first four bytes: two zeros, a known type code, 1 to ``IDX_MAX_DIMS`` dimensions."""
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
    if code not in TYPE_CODES:
        raise DataError(
            f"{source}: unknown IDX type code 0x{code:02X}; expected one of {valid_type_codes()}"
        )
    if ndim == 0:
        raise DataError(f"{source}: IDX header has 0 dimensions, expected at least 1")
    if ndim > limits.IDX_MAX_DIMS:
        raise DataError(
            f"{source}: IDX header has {ndim} dimensions, more than the {limits.IDX_MAX_DIMS} "
            "dlcli reads"
        )


def _header(
    data: bytes | bytearray | memoryview, source: str
) -> tuple[np.dtype[np.generic], tuple[int, ...], int]:
    """(dtype, shape, header length) of IDX ``data`` whose first 4 bytes were checked."""
    dtype, ndim = TYPE_CODES[data[2]], data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source}: IDX header is truncated: {ndim} dimensions need a {header_len}-byte "
            f"header, found {len(data)} bytes"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return dtype, shape, header_len


def _check_payload(
    found: int, shape: tuple[int, ...], dtype: np.dtype[np.generic], source: str
) -> None:
    """``found`` payload bytes (-1: more than expected, how many more not counted) against
    what the header declares."""
    expected = math.prod(shape) * dtype.itemsize
    if found != expected:
        relation = "shorter" if 0 <= found < expected else "longer"
        dims = "×".join(map(str, shape))
        raise DataError(
            f"{source}: IDX payload is {relation} than its header says: shape {dims} of "
            f"{dtype.newbyteorder('=').name} needs {expected} bytes, found "
            f"{found if found >= 0 else 'more'}"
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
