"""CIFAR-10's binary version (``cifar-10-binary.tar.gz``) → uint8 images and labels.

The archive holds ``cifar-10-batches-bin/data_batch_1.bin`` … ``data_batch_5.bin`` (train) and
``test_batch.bin`` (test), each a run of 3,073-byte records: one label byte, then 3,072 pixel
bytes (the 1,024 red values of a 32×32 image row by row, then green, then blue). So a batch is
read with ``np.frombuffer``: no unpickling (the "python version" of CIFAR is pickles, which can
run code), no extraction to disk.

The tar is streamed and trusted for nothing: every member must be a regular file or a folder
with a plain relative name (a link, a device, an absolute name or a ``..`` is refused, whatever
its name), there are at most :data:`~dlcli.limits.TAR_MAX_MEMBERS` of them, each at most
:data:`~dlcli.limits.TAR_MEMBER_MAX_BYTES` (checked from the header, before reading), a batch
must be whole records and its labels in range. (A registry archive is also checked against its
published SHA-256 before it is parsed: :func:`dlcli.data.dataset.load_dataset`.) numpy only, no
torch.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import numpy.typing as npt

from dlcli import limits, untrusted
from dlcli.errors import DataError

FOLDER = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"{FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBERS = (f"{FOLDER}/test_batch.bin",)
HEIGHT = WIDTH = 32
CHANNELS = 3
RECORD_BYTES = 1 + CHANNELS * HEIGHT * WIDTH  # a label byte, then the planes R, G, B


@dataclass
class CifarArrays:
    """Both splits as read: images ``uint8`` N×3×32×32, labels ``int64`` N."""

    train_images: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.int64]
    test_images: npt.NDArray[np.uint8]
    test_labels: npt.NDArray[np.int64]


def read_cifar_binary(path: str | os.PathLike[str], num_classes: int = 10) -> CifarArrays:
    """Read a CIFAR-10 binary archive (tar.gz); a :class:`DataError` naming the file (and the
    member) for anything but a well-formed one."""
    shown = os.fspath(path)
    with untrusted.open_regular(path, DataError, "data file") as raw:
        try:
            batches = _read_members(raw, shown)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DataError(
                f"{shown}: not a readable tar.gz archive ({_reason(err)}); expected CIFAR-10's "
                "binary version (cifar-10-binary.tar.gz)"
            ) from None
    missing = [name for name in (*TRAIN_MEMBERS, *TEST_MEMBERS) if name not in batches]
    if missing:
        raise DataError(
            f"{shown}: missing {', '.join(missing)}; expected CIFAR-10's binary version "
            f"({len(TRAIN_MEMBERS)} train batches and a test batch in {FOLDER}/)"
        )
    # pop: each batch's bytes are freed once decoded (the archive is 180 MB inflated)
    train = [_decode(batches.pop(name), shown, name, num_classes) for name in TRAIN_MEMBERS]
    test = [_decode(batches.pop(name), shown, name, num_classes) for name in TEST_MEMBERS]
    return CifarArrays(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        np.concatenate([images for images, _ in test]),
        np.concatenate([labels for _, labels in test]),
    )


def _read_members(raw: io.BufferedReader, shown: str) -> dict[str, bytes]:
    """The batch members' bytes, by name, after checking every member of the stream."""
    wanted = {*TRAIN_MEMBERS, *TEST_MEMBERS}
    found: dict[str, bytes] = {}
    count = 0
    with tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            count += 1
            if count > limits.TAR_MAX_MEMBERS:
                raise DataError(
                    f"{shown}: more than {limits.TAR_MAX_MEMBERS} members (TAR_MAX_MEMBERS); "
                    "not CIFAR-10's binary archive"
                )
            _check_member(member, shown)
            if member.name in wanted and member.isfile():
                if member.name in found:
                    raise DataError(f"{shown}: {_show(member.name)} appears twice")
                found[member.name] = _member_bytes(tar, member, shown)
    return found


def _check_member(member: tarfile.TarInfo, shown: str) -> None:
    """A regular file or folder with a plain relative name, within the size limit."""
    name = _show(member.name)
    if not (member.isfile() or member.isdir()):
        kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else None
        raise DataError(
            f"{shown}: member {name} is {kind or 'not a regular file'}; a dataset archive may "
            "hold only regular files and folders"
        )
    parts = PurePosixPath(member.name).parts
    if not parts or member.name.startswith("/") or ".." in parts or "\\" in member.name:
        raise DataError(
            f"{shown}: member {name} has an unsafe name (absolute, or with '..'); refused"
        )
    if member.size > limits.TAR_MEMBER_MAX_BYTES:
        raise DataError(
            f"{shown}: member {name} is {member.size} bytes, over the "
            f"{limits.TAR_MEMBER_MAX_BYTES}-byte limit for one member (TAR_MEMBER_MAX_BYTES)"
        )


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, shown: str) -> bytes:
    source = tar.extractfile(member)
    if source is None:  # not a regular file: refused by _check_member already
        raise DataError(f"{shown}: member {_show(member.name)} cannot be read")
    data = source.read(member.size)
    if len(data) != member.size:
        raise DataError(
            f"{shown}: member {_show(member.name)} is cut short: {len(data)} of "
            f"{member.size} bytes (the archive is truncated)"
        )
    return data


def _decode(
    data: bytes, shown: str, name: str, num_classes: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """One batch's records as (images N×3×32×32, labels N)."""
    count, rest = divmod(len(data), RECORD_BYTES)
    if rest or not count:
        raise DataError(
            f"{shown}: {name} holds {len(data)} bytes, not a whole, non-zero number of "
            f"{RECORD_BYTES}-byte records (1 label byte + {RECORD_BYTES - 1} pixel bytes): "
            "truncated or not CIFAR-10"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(count, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    bad = int(np.count_nonzero(labels >= num_classes))
    if bad:
        raise DataError(
            f"{shown}: {name}: {bad} of {count} labels are outside [0, {num_classes}) "
            f"(found {int(labels.max())})"
        )
    # The pixels of a record are already C×H×W; reshaping the strided slice copies them out.
    images = np.ascontiguousarray(records[:, 1:]).reshape(count, CHANNELS, HEIGHT, WIDTH)
    return images, labels


def _show(name: str) -> str:
    """A member name for a message: repr'd (control characters visible), bounded."""
    text = repr(name)
    return text if len(text) <= limits.ECHO_MAX_CHARS else text[: limits.ECHO_MAX_CHARS] + "…"


def _reason(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "it ends early"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[: limits.ECHO_MAX_CHARS]
