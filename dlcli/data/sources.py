"""What a data path is, and what it lists: ``data.train``, ``data.test`` and
``data.validation`` each name one of

* a **folder of class folders**: ``<class>/<anything>.png|jpg|jpeg|bmp|gif|webp`` (also
  ``.tif``/``.tiff``: :data:`~dlcli.data.images.IMAGE_SUFFIXES`; nested folders allowed below
  the class folder; class names are the folder names, sorted). Hidden files and files of other
  types are ignored and listed;
* a **CSV file** with a header and the columns ``path,label`` (other columns ignored): paths
  relative to the CSV's folder, the label a class name or an index;
* an **.npz file** with arrays ``x`` and ``y``, or Keras' ``x_train``/``y_train``/``x_test``/
  ``y_test`` in one file (train takes the first pair, test the second);
* an **IDX images archive** (gzip or raw), its labels archive beside it
  (``train-images-idx3-ubyte.gz`` → ``train-labels-idx1-ubyte.gz``).

Listing is cheap (no image is opened); decoding is :mod:`dlcli.data.decode`'s. No torch here.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from dlcli import limits, untrusted
from dlcli.data.idx import looks_like_idx
from dlcli.data.images import CHANNEL_MODES, IMAGE_SUFFIXES, check_image_size, is_image_name
from dlcli.errors import DataError

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class FolderLink:
    """A folder link :func:`list_folder` did not follow: its path and the folder it leads to."""

    path: str
    target: str

    @property
    def reason(self) -> str:
        return f"folder link to {self.target}, not followed: it would count images twice"


@dataclass(frozen=True)
class EmptyFolder:
    """A class folder with no image in it: its path, its name and the other files it holds."""

    path: str
    name: str
    ignored: int  # files in it that are not images


@dataclass
class FileList:
    """Image files and their labels as written (a class folder's name, a CSV's label text)."""

    source: Path  # the folder or the CSV file
    kind: str  # folder | csv
    paths: list[str]  # strings, not Path objects: 70,000 of those cost a second to build
    labels: list[str]
    ignored: list[str] = field(default_factory=list)  # files that are not images (by name)
    # (N, 3) int64: each file's size, mtime_ns and ctime_ns as listed (folders: one pass over
    # the tree); None: not taken (the cache stats the files itself)
    stats: npt.NDArray[np.int64] | None = None
    # folders listed elsewhere (a link to the root, to a class folder, to a folder already
    # walked): not followed, each with where it leads (and why: :attr:`FolderLink.reason`)
    links: list[FolderLink] = field(default_factory=list)
    # class folders holding no image (only other files, or nothing): no class of their own
    empty: list[EmptyFolder] = field(default_factory=list)
    sha256: str = ""  # csv: the SHA-256 of the CSV file's bytes as read (folders: "")


@dataclass
class ArrayData:
    """Images already decoded: (N, H, W) or (N, H, W, C) ``uint8``, integer labels."""

    source: Path
    kind: str  # npz | idx
    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{self.source}: {len(self.images)} images but {len(self.labels)} labels; "
                "each image needs one label"
            )
        if not len(self.labels):
            raise DataError(f"{self.source}: holds no images (0 samples)")


Source = FileList | ArrayData


def kind_of(path: Path) -> str:
    """``folder``, ``csv``, ``npz`` or ``idx``: from what ``path`` is and its first bytes."""
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise DataError(
            f"{path}: not found (expected a folder of class folders, a CSV file, "
            "an .npz file or an IDX images archive)"
        )
    try:  # a FIFO or a device is refused, never opened: reading one blocked or never ended
        with untrusted.open_regular(path, DataError, "data file") as f:
            head = f.read(4)
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if head.startswith(_ZIP_MAGIC) or path.suffix.lower() == ".npz":
        return "npz"
    if path.suffix.lower() == ".csv":
        return "csv"
    if looks_like_idx(head):
        return "idx"
    raise DataError(
        f"{path}: not a data source dlcli reads: expected a folder of class folders, a CSV "
        f"file (path,label), an .npz file or an IDX images archive; found first bytes "
        f"{head.hex(' ') or '(empty file)'}"
    )


def open_source(path: Path, part: str) -> Source:
    """The files or arrays ``path`` holds for split ``part`` (train, test or validation)."""
    kind = kind_of(path)
    if kind == "folder":
        return list_folder(path)
    if kind == "csv":
        return list_csv(path)
    if kind == "npz":
        return read_npz(path, part)
    return read_idx_pair(path)


SPLIT_NAMES = ("train", "test", "validation")


def split_folders(path: Path) -> dict[str, Path] | None:
    """``{"train": path/train, "test": path/test, ...}`` when ``path`` is a folder whose only
    (non-hidden) entries are split folders including ``train``; else None."""
    if not path.is_dir():
        return None
    try:
        names = [e.name for e in os.scandir(path) if not e.name.startswith(".")]
    except OSError:
        return None
    if "train" not in names or not set(names) <= set(SPLIT_NAMES):
        return None
    return {name: path / name for name in SPLIT_NAMES if (path / name).is_dir()}


# --- folders and CSV files -------------------------------------------------------------------


def list_folder(root: Path) -> FileList:
    """Every image under ``root/<class>/``, sorted by class, then by path (compared folder by
    folder, as the parts of the path below the class folder).

    One ``listdir`` per folder and one ``stat`` per entry, with the size and modification
    time kept for the cache's key; 70,000 files list in about 0.3 s. A folder is listed once,
    under its own class: a link to a folder inside ``root`` (the root, a class folder, a folder
    of another class), or to one already listed, is not followed and goes to ``links``. A
    class folder holding no image is no class: it goes to ``empty``."""
    listing = _Listing(os.path.realpath(root))
    try:
        names = sorted(os.listdir(root))
        listing.seen.add(_folder_id(os.stat(root)))
    except OSError as err:
        raise DataError(f"{root}: cannot list the folder: {err.strerror or err}") from None
    top = os.fspath(root)
    classes: list[tuple[str, str]] = []  # (name, path), known before any is walked
    for name in names:
        if name.startswith("."):
            continue
        path = os.path.join(top, name)
        try:
            info: os.stat_result | None = os.stat(path)
        except OSError:
            info = None
        if info is None or not stat.S_ISDIR(info.st_mode):
            listing.ignored.append(path)  # not a folder
            continue
        if listing.listed_anyway(path, info):
            listing.skip_link(path)  # a link to a folder listed on its own
            continue
        listing.seen.add(_folder_id(info))
        classes.append((name, path))
    empty: list[EmptyFolder] = []
    for name, path in classes:
        before, ignored_before = len(listing.paths), len(listing.ignored)
        listing.walk(path)
        listing.labels += [name] * (len(listing.paths) - before)
        if len(listing.paths) == before:
            empty.append(EmptyFolder(path, name, len(listing.ignored) - ignored_before))
    if not listing.paths:
        loose = [path for path in listing.ignored if is_image_name(path)]
        skipped = [path for path in listing.ignored if not is_image_name(path)]
        skipped += [link.path for link in listing.links]
        hint = (
            f"; {len(loose)} images lie in it outside class folders ({_shown(loose)}): move "
            f"them into {root}/<class>/, or, if {root} is itself one class, give the folder "
            "that holds it"
            if loose
            else ""
        )
        suffixes = "|".join(suffix[1:] for suffix in IMAGE_SUFFIXES)
        raise DataError(
            f"{root}: no images found: expected class folders holding image files "
            f"(<class>/<name>.{suffixes}){hint}{_ignored_note(skipped)}"
        )
    stats = np.array([listing.sizes, listing.mtimes, listing.ctimes], dtype=np.int64).T
    return FileList(
        root,
        "folder",
        listing.paths,
        listing.labels,
        listing.ignored,
        stats,
        links=listing.links,
        empty=empty,
    )


class _Listing:
    """What :func:`list_folder` gathers: flat lists of strings and ints, no object per file
    (those would make the listing several times slower, mostly in the garbage collector)."""

    def __init__(self, root: str) -> None:
        self.root = root  # the root's real path
        self.paths: list[str] = []
        self.labels: list[str] = []
        self.sizes: list[int] = []
        self.mtimes: list[int] = []
        self.ctimes: list[int] = []
        self.ignored: list[str] = []
        self.links: list[FolderLink] = []
        # (device, inode) of the root, every class folder and every folder walked: filled
        # before the first class is walked, so a link to a later class is not taken in
        self.seen: set[tuple[int, int]] = set()

    def listed_anyway(self, folder: str, info: os.stat_result) -> bool:
        """Whether ``folder`` (``info``: its ``stat``) is listed elsewhere: in ``seen``, or a
        link to a non-hidden folder inside the root (one lstat per folder, not per file)."""
        if _folder_id(info) in self.seen:
            return True
        if not os.path.islink(folder):
            return False
        below = os.path.relpath(os.path.realpath(folder), self.root)
        if below == os.curdir:
            return True
        parts = below.split(os.sep)
        return parts[0] != os.pardir and not any(part.startswith(".") for part in parts)

    def skip_link(self, folder: str) -> None:
        """``folder`` (a link, or a folder reached twice) is not followed: kept in ``links``."""
        self.links.append(FolderLink(folder, os.path.realpath(folder)))

    def walk(self, folder: str) -> None:
        """Image files below ``folder``, in name order, each sub-folder's at its name's place;
        other files go to ``ignored``, sub-folders listed elsewhere (links) to ``links``;
        hidden ones are skipped. ``folder`` itself is in ``seen`` already."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise DataError(f"{folder}: cannot list the folder: {err.strerror or err}") from None
        try:
            try:
                names = sorted(os.listdir(fd))
            except OSError as err:
                raise DataError(
                    f"{folder}: cannot list the folder: {err.strerror or err}"
                ) from None
            prefix = folder + os.sep
            paths, sizes, mtimes, ctimes = self.paths, self.sizes, self.mtimes, self.ctimes
            for name in names:
                if name[0] == ".":
                    continue
                try:
                    info = os.stat(name, dir_fd=fd)
                except OSError:  # vanished, or a dangling link: decoding reports an image
                    if is_image_name(name):
                        paths.append(prefix + name)
                        sizes.append(-1)
                        mtimes.append(-1)
                        ctimes.append(-1)
                    else:
                        self.ignored.append(prefix + name)
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if self.listed_anyway(prefix + name, info):
                        self.skip_link(prefix + name)
                    else:
                        self.seen.add(_folder_id(info))
                        self.walk(prefix + name)
                elif is_image_name(name):
                    paths.append(prefix + name)
                    sizes.append(info.st_size)
                    mtimes.append(info.st_mtime_ns)
                    ctimes.append(info.st_ctime_ns)
                else:
                    self.ignored.append(prefix + name)
        finally:
            os.close(fd)


def class_folder_notes(parts: dict[str, Source]) -> list[str]:
    """What the class folders of each split (``{"train": ..., "test": ...}``) leave out,
    one line each: a class folder holding no image (in train: no class), and a class of
    train's folders with no image in a test or validation folder (its metrics leave it out).
    ``load_local`` shows these on the train output; ``data check`` lists them."""
    notes: list[str] = []
    for part, source in parts.items():
        if not isinstance(source, FileList):
            continue
        for folder in source.empty:
            notes.append(
                f"{part}: class folder {folder.path} holds no image{_holds(folder)}"
                + (f": '{folder.name}' is not a class" if part == "train" else "")
            )
    train = parts.get("train")
    if isinstance(train, FileList) and train.kind == "folder":
        for part, source in parts.items():
            if part == "train" or not isinstance(source, FileList) or source.kind != "folder":
                continue
            missing = sorted(set(train.labels) - set(source.labels))
            if missing:
                it = "them" if len(missing) > 1 else "it"
                notes.append(
                    f"{part}: no image of class{'es' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(m) for m in missing)} (train has {it}): "
                    f"the {part} metrics leave {it} out"
                )
    return [untrusted.printable(note) for note in notes]  # one line each, whatever a name holds


def check_named_classes(train: Source, class_names: Sequence[str]) -> None:
    """A :class:`DataError` naming each class that ``data.class_names`` lists but train's class
    folders hold no image of (an empty folder, or none): the model would have a class it never
    saw, and its metrics would not say so."""
    if not isinstance(train, FileList):
        return
    named = set(class_names)
    empty = [folder for folder in train.empty if folder.name in named]
    if empty:
        shown = "; ".join(f"{f.path}{_holds(f)}" for f in empty)
        raise DataError(
            f"data.class_names lists {', '.join(repr(f.name) for f in empty)} but "
            f"{'its class folder holds' if len(empty) == 1 else 'their class folders hold'} "
            f"no image: {shown}; add images, or remove the name from data.class_names"
        )
    if train.kind != "folder":  # a CSV's labels may be indices, not names
        return
    missing = [name for name in class_names if name not in set(train.labels)]
    if missing:
        it = "it" if len(missing) == 1 else "them"
        raise DataError(
            f"data.class_names lists {', '.join(repr(m) for m in missing)} but {train.source} "
            f"has no class folder of {it}; add one with images, or remove the "
            f"name{'s' if len(missing) > 1 else ''} from data.class_names"
        )


def check_csv_labels(train: Source) -> None:
    """A :class:`DataError` for a CSV whose labels mix class indices and names, without
    ``data.class_names``: "0" would be a class named "0" beside "cat" and "dog" (three
    classes where two were meant), "-1" among indices a class named "-1". The labels are all
    names or all indices."""
    if not isinstance(train, FileList) or train.kind != "csv":
        return
    found = dict.fromkeys(train.labels)
    numbers = [label for label in found if untrusted.is_number(label)]
    if not numbers or len(numbers) == len(found):
        return
    names = [repr(label) for label in found if not untrusted.is_number(label)]
    raise DataError(
        f"{train.source}: the labels mix class indices ({', '.join(numbers[:5])}"
        f"{', …' if len(numbers) > 5 else ''}) and class names ({', '.join(names[:5])}"
        f"{', …' if len(names) > 5 else ''}); use names, or indices 0, 1, …, or set "
        "data.class_names (an index then names its entry)"
    )


def _holds(folder: EmptyFolder) -> str:
    if not folder.ignored:
        return ""
    return f" (only {folder.ignored} other file{'s' if folder.ignored != 1 else ''})"


def _folder_id(info: os.stat_result) -> tuple[int, int]:
    """A folder's identity, the same through any link to it: (device, inode)."""
    return info.st_dev, info.st_ino


def _ignored_note(ignored: list[str]) -> str:
    if not ignored:
        return ""
    files = "file" if len(ignored) == 1 else "files"
    return f"; {len(ignored)} other {files} ignored ({_shown(ignored)})"


def _shown(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (", …" if len(paths) > 3 else "")


def list_csv(path: Path) -> FileList:
    """The rows of a ``path,label`` CSV file; paths are relative to the CSV's folder. The file
    is read within :data:`~dlcli.limits.DATA_MAX_BYTES`; a row the ``csv`` module cannot
    parse (a quote left open, a field beyond its 131,072 characters) or a path holding a NUL
    character is a :class:`DataError` naming the line."""
    raw = untrusted.read_bytes(path, limits.DATA_MAX_BYTES, DataError, "CSV file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: cannot read the CSV file: {err}") from None
    paths, labels = _csv_rows(untrusted.csv_lines(text, str(path), DataError), path)
    if not paths:
        raise DataError(f"{path}: the CSV file lists no images")
    return FileList(path, "csv", paths, labels, sha256=hashlib.sha256(raw).hexdigest())


def _csv_rows(lines: Iterator[tuple[int, list[str]]], path: Path) -> tuple[list[str], list[str]]:
    """The paths (joined to the CSV's folder) and labels of a CSV file's rows."""
    header = [h.strip().lower() for h in next(lines, (0, []))[1]]
    if "path" not in header or "label" not in header:
        raise DataError(
            f"{path}: expected a CSV header with the columns path,label; found "
            f"{untrusted.echo(header) if header else 'none'}"
        )
    for column in ("path", "label"):
        if header.count(column) > 1:
            raise DataError(
                f"{path}: the CSV header names the column {column} {header.count(column)} "
                f"times ({untrusted.echo(header)}); expected it once"
            )
    at_path, at_label = header.index("path"), header.index("label")
    paths: list[str] = []
    labels: list[str] = []
    folder = os.fspath(path.parent)
    first: dict[str, tuple[str, int]] = {}  # each file's first label and line
    for line, row in lines:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(at_path, at_label):
            raise DataError(
                f"{path}: line {line}: expected {len(header)} columns, found {untrusted.echo(row)}"
            )
        name, label = row[at_path].strip(), row[at_label].strip()
        if not name or not label:
            raise DataError(f"{path}: line {line}: empty path or label")
        if "\0" in name:
            raise DataError(
                f"{path}: line {line}: the path {untrusted.echo(name)} holds a NUL character, "
                "which no file name can"
            )
        if untrusted.is_number(label):
            check_label(int(label), f"{path}: line {line}")
        joined = os.path.join(folder, name)
        was, at = first.setdefault(os.path.normpath(joined), (label, line))
        if was != label:
            raise DataError(
                f"{path}: line {line}: {untrusted.echo(name)} is labelled {untrusted.echo(label)}"
                f", but {untrusted.echo(was)} on line {at}; one image has one class"
            )
        paths.append(joined)
        labels.append(label)
    return paths, labels


def check_label(label: int, where: str) -> None:
    """A :class:`DataError` for an integer label naming a class beyond
    :data:`~dlcli.limits.CLASSES_MAX`: the class names "0" … label are never built for it."""
    if label >= limits.CLASSES_MAX:
        raise DataError(
            f"{where}: label {label} is beyond the {limits.CLASSES_MAX:,} classes "
            "integer labels may number (labels are class indices 0, 1, …)"
        )


# --- arrays: .npz and IDX --------------------------------------------------------------------


def read_npz(path: Path, part: str) -> ArrayData:
    """``x``/``y``, or ``x_train``/``y_train`` (train, validation) / ``x_test``/``y_test``.
    Only the two members read are opened (each header checked before its array is
    allocated): an archive of 100,000 other members took 24 s, one open per member."""
    suffix = "_test" if part == "test" else "_train"
    try:
        with zipfile.ZipFile(path) as archive:
            members = {
                info.filename.removesuffix(".npy"): info
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
            for x_key, y_key in (("x", "y"), (f"x{suffix}", f"y{suffix}")):
                if x_key in members and y_key in members:
                    images = _npz_member(archive, members[x_key], path)
                    labels = _npz_member(archive, members[y_key], path)
                    break
            else:
                names = sorted(members)
                found = ", ".join(untrusted.shorten(n) for n in names[:10]) or "no arrays"
                raise DataError(
                    f"{path}: expected arrays x and y, or x_train, y_train, x_test, y_test "
                    f"(Keras' layout); found {found}"
                    + (f" and {len(names) - 10:,} more" if len(names) > 10 else "")
                )
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as err:
        raise DataError(f"{path}: not a readable .npz file: {err}") from None
    return ArrayData(path, "npz", _image_array(images, path), _label_array(labels, path))


def _npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> Any:
    """One ``.npy`` member's array, its header checked against the size the archive lists
    for it before numpy allocates what the header declares (a 710-byte file may claim
    93 GiB); object arrays are refused, never unpickled."""
    shown = f"{path}: member {untrusted.shorten(info.filename)}"
    with archive.open(info) as f:
        shape, _, dtype = npy_header(f, shown)
        check_npy_size(shape, dtype, info.file_size - f.tell(), shown)
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def npy_header(f: IO[bytes], shown: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The shape, Fortran order and dtype a ``.npy`` stream's header declares (only the header
    is read); a :class:`DataError` naming ``shown`` for no such header or an object array."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        raise DataError(
            f"{shown}: not a readable .npy array: {untrusted.shorten(str(err))}"
        ) from None
    if dtype.hasobject:
        raise DataError(f"{shown}: a .npy array of Python objects is refused (never unpickled)")
    return shape, fortran, dtype


def check_npy_size(shape: tuple[int, ...], dtype: np.dtype[Any], found: int, shown: str) -> None:
    """A :class:`DataError` unless the ``found`` bytes after a .npy header are exactly what
    its shape and dtype declare, and at most :data:`~dlcli.limits.DATA_MAX_BYTES`: nothing is
    allocated for a header that claims more than the file holds."""
    expected = math.prod(shape) * dtype.itemsize
    if found != expected or expected > limits.DATA_MAX_BYTES:
        dims = "×".join(map(str, shape))
        raise DataError(
            f"{shown}: the .npy header declares shape {untrusted.shorten(dims)} of {dtype} "
            f"({expected:,} bytes) but the file holds {found:,} bytes after it"
            + (
                f" (at most {limits.DATA_MAX_BYTES:,} bytes are read)"
                if expected > limits.DATA_MAX_BYTES
                else ""
            )
        )


def has_test_arrays(path: Path) -> bool:
    """Whether ``path`` is a Keras-style .npz holding a test split too."""
    if kind_of(path) != "npz":
        return False
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {"x_test", "y_test"} <= set(archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def labels_beside(images: Path) -> Path:
    """The labels archive that goes with an IDX images archive (MNIST's naming)."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    return images.with_name(name)


def read_idx_pair(path: Path) -> ArrayData:
    from dlcli.data.idx import read_idx

    labels_path = labels_beside(path)
    if labels_path == path or not labels_path.exists():
        raise DataError(
            f"{path}: an IDX images archive needs its labels archive beside it, "
            f"expected {labels_path}"
        )
    images, labels = read_idx(path), read_idx(labels_path)
    return ArrayData(path, "idx", _image_array(images, path), _label_array(labels, labels_path))


def _image_array(array: Any, path: Path) -> npt.NDArray[np.uint8]:
    if array.ndim not in (3, 4) or array.dtype != np.uint8:
        raise DataError(
            f"{path}: expected images of shape (N, H, W) or (N, H, W, C) with uint8 values, "
            f"found shape {array.shape} of {array.dtype}"
        )
    if 0 in array.shape[1:3] or (array.ndim == 4 and array.shape[3] not in CHANNEL_MODES):
        raise DataError(
            f"{path}: expected images of at least 1 × 1 pixels with 1 (greyscale), 3 (RGB) or "
            f"4 (RGBA) channels, found shape {array.shape} (N, H, W[, C])"
        )
    check_image_size(array.shape[1], array.shape[2], f"{path}: shape {array.shape}")
    return np.ascontiguousarray(array)


def _label_array(array: Any, path: Path) -> npt.NDArray[np.int64]:
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:  # Keras' CIFAR labels are (N, 1)
        array = array[:, 0]
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise DataError(
            f"{path}: expected labels of shape (N,) with integer values, "
            f"found shape {array.shape} of {array.dtype}"
        )
    if len(array):  # checked before the cast: a uint64 label above 2**63 would turn negative
        at = int(array.argmax())
        check_label(int(array[at]), f"{path}: labels[{at}]")
        at = int(array.argmin())
        if int(array[at]) < 0:
            raise DataError(
                f"{path}: labels[{at}]: label {int(array[at])} is negative; labels are class "
                "indices 0, 1, …"
            )
    labels: npt.NDArray[np.int64] = array.astype(np.int64)
    return labels
