"""IDX archives (or CIFAR-10's binary records) → uint8 image and int64 label tensors, and a
seeded train/validation split.

Loading is gunzip bound, so the four archives are read in parallel threads (zlib and hashlib
release the GIL) and handed to torch without copies: images stay ``uint8`` (N×C×H×W) here;
scaling to floats is the model's business.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from dlcli.data.download import default_data_dir, file_digests, verify_dataset
from dlcli.data.idx import decode_idx, read_file
from dlcli.data.registry import ROLES, DatasetEntry, get_entry
from dlcli.errors import DataError, UsageError

StrPath = str | os.PathLike[str]
T = TypeVar("T")


@dataclass
class Split:
    """Images (``uint8``, N×C×H×W) and their labels (``int64``, N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"{self.images.shape[0]} images but {self.labels.shape[0]} labels in one split"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """A train and (unless the data has none) a test split, with what is needed to build and
    describe a classifier."""

    train: Split
    test: Split | None  # None: no test data given (every report says so)
    num_classes: int
    class_names: tuple[str, ...]
    name: str | None  # the registry name; None for explicit files
    checksums: dict[str, str]  # archive file name -> sha256 of the bytes read
    sources: dict[str, Path] = field(default_factory=dict)  # checksums' keys -> the file read
    # Explicit files: config key -> {"path": absolute path, "sha256": ...} (recorded in a run).
    files: dict[str, Any] = field(default_factory=dict)
    split_sources: dict[str, str] = field(default_factory=dict)  # split -> the path it came from
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable files left out
    validation: Split | None = None  # given validation data (else split off train)
    # what the data leaves out, one line each (an empty class folder): shown when training
    notes: list[str] = field(default_factory=list)
    # Own data: checksums' keys -> {file name: digest} (dlcli.data.local.split_digests)
    digests: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        _, c, h, w = self.train.images.shape
        return int(c), int(h), int(w)


def load_dataset(name: str, data_dir: StrPath | None = None) -> Dataset:
    """Load the registry dataset ``name`` from ``data_dir`` (default: $DLCLI_DATA_DIR or data/).

    Raises :class:`UsageError` for an unknown name and :class:`DataError` when the archives are
    missing (with the ``dlcli download`` command that fetches them), damaged or inconsistent.
    """
    entry = get_entry(name)
    paths = verify_dataset(entry, Path(data_dir) if data_dir is not None else default_data_dir())
    if entry.format == "cifar-binary":
        dataset = _load_cifar(paths["archive"], entry)
    else:
        published = {role: archive.sha256 for role, archive in entry.files.items()}
        dataset = _load(paths, entry.num_classes, entry.class_names, entry.name, published)
    h, w, c = entry.input_shape
    if dataset.image_shape != (c, h, w):
        raise DataError(
            f"{entry.name}: expected images of {c}×{h}×{w} (C×H×W), found {_chw(dataset.train)}"
        )
    return dataset


def load_archives(
    train_images: StrPath,
    train_labels: StrPath,
    test_images: StrPath,
    test_labels: StrPath,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Load four IDX files (gzip or raw) into a :class:`Dataset`, like KotlinDL's
    ``createTrainAndTestDatasets``.

    Images of shape (N, H, W) become N×1×H×W, (N, H, W, C) become N×C×H×W. ``class_names``
    defaults to ``"0"``, ``"1"``, … The files' SHA-256 are computed (in the reading threads, from
    the bytes read) for :attr:`Dataset.checksums`.
    """
    if num_classes < 1:
        raise UsageError(f"num_classes must be at least 1, got {num_classes}")
    names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
    if len(names) != num_classes:
        raise UsageError(
            f"expected {num_classes} class names (num_classes), got {len(names)}: {list(names)}"
        )
    given = (train_images, train_labels, test_images, test_labels)
    paths = {role: Path(path) for role, path in zip(ROLES, given, strict=True)}
    return _load(paths, num_classes, names, None, None)


def _load(
    paths: dict[str, Path],
    num_classes: int,
    class_names: tuple[str, ...],
    name: str | None,
    published: dict[str, str] | None,
) -> Dataset:
    """Read the four archives in parallel, check them against each other, wrap them.

    Each file's SHA-256 is computed from the very bytes decoded (so what ``metrics.json``
    records is what was read); with ``published`` (role -> SHA-256, a registry dataset) a file
    that differs is refused."""
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = {role: pool.submit(_read, path) for role, path in paths.items()}
        arrays = {role: future.result() for role, future in futures.items()}
    shas = {role: sha for role, (_, sha) in arrays.items()}
    if published is not None:
        _check_published(paths, shas, published, str(name))
    checksums = _by_file_name(paths, shas)
    sources = _by_file_name(paths, paths)
    train, test = (
        _split_from(
            arrays[f"{part}_images"][0], arrays[f"{part}_labels"][0], paths, part, num_classes
        )
        for part in ("train", "test")
    )
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"train images ({paths['train_images']}) are {_chw(train)} but test images "
            f"({paths['test_images']}) are {_chw(test)} (C×H×W)"
        )
    return Dataset(train, test, num_classes, class_names, name, checksums, sources)


def _load_cifar(path: Path, entry: DatasetEntry) -> Dataset:
    """CIFAR-10's binary archive: its SHA-256 checked against the published one *before* its
    tar stream is parsed (a registry archive is parsed only when it is the published file)."""
    from dlcli.data.cifar import read_cifar_binary

    _, sha, _ = file_digests(path, md5=False)
    _refuse_unpublished(path, sha, entry.files["archive"].sha256, entry.name)
    arrays = read_cifar_binary(path, entry.num_classes)
    train = Split(torch.from_numpy(arrays.train_images), torch.from_numpy(arrays.train_labels))
    test = Split(torch.from_numpy(arrays.test_images), torch.from_numpy(arrays.test_labels))
    checksums, sources = {path.name: sha}, {path.name: path}
    return Dataset(
        train, test, entry.num_classes, entry.class_names, entry.name, checksums, sources
    )


def _read(path: Path) -> tuple[np.ndarray, str]:
    """An archive's array and the SHA-256 of the bytes it was decoded from."""
    raw = read_file(path)
    sha = hashlib.sha256(raw).hexdigest()
    return decode_idx(raw, source=os.fspath(path)), sha


def _check_published(
    paths: dict[str, Path], shas: dict[str, str], published: dict[str, str], name: str
) -> None:
    """Refuse a registry archive whose SHA-256 is not the published one (same size or not)."""
    for role, path in paths.items():
        _refuse_unpublished(path, shas[role], published[role], name)


def _refuse_unpublished(path: Path, sha: str, published: str, name: str) -> None:
    if sha != published:
        raise DataError(
            f"{path}: checksum mismatch: its sha256 is {sha[:12]}…, the {name} "
            f"registry publishes {published[:12]}…; the file was altered or damaged. "
            f"Run `dlcli download {name} --force` to fetch it again"
        )


def _by_file_name(paths: dict[str, Path], shas: dict[str, T]) -> dict[str, T]:
    """File name -> sha256 (or another value by role); the full path instead where two files
    share a name."""
    names = [path.name for path in paths.values()]
    return {
        (path.name if names.count(path.name) == 1 else os.fspath(path)): shas[role]
        for role, path in paths.items()
    }


def _split_from(
    images: np.ndarray, labels: np.ndarray, paths: dict[str, Path], part: str, num_classes: int
) -> Split:
    image_path, label_path = paths[f"{part}_images"], paths[f"{part}_labels"]
    _check_images(images, image_path)
    _check_labels(labels, label_path, num_classes)
    for path, array, what in ((image_path, images, "images"), (label_path, labels, "labels")):
        if len(array) == 0:
            raise DataError(
                f"{path}: holds 0 {what}; the {part} split needs at least one (metrics of an "
                "empty split are not 0, they do not exist)"
            )
    if len(images) != len(labels):
        raise DataError(
            f"{part} images and labels differ in count: {image_path} has {len(images)} images, "
            f"{label_path} has {len(labels)} labels"
        )
    tensor = torch.from_numpy(images)
    tensor = tensor.unsqueeze(1) if images.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.from_numpy(labels.astype(np.int64)))


def _check_images(images: np.ndarray, path: Path) -> None:
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise DataError(
            f"{path}: expected images of shape (N, H, W) or (N, H, W, C) with uint8 values, "
            f"found shape {images.shape} of {images.dtype}"
        )


def _check_labels(labels: np.ndarray, path: Path, num_classes: int) -> None:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: expected labels of shape (N,) with integer values, "
            f"found shape {labels.shape} of {labels.dtype}"
        )
    bad = (labels < 0) | (labels >= num_classes)
    count = int(np.count_nonzero(bad))
    if count:
        values = np.unique(labels[bad])
        shown = ", ".join(map(str, values[:5])) + (", …" if len(values) > 5 else "")
        raise DataError(
            f"{path}: {count} of {len(labels)} labels are outside [0, {num_classes}) for "
            f"num_classes {num_classes} (found {shown})"
        )


def _chw(part: Split) -> str:
    return "×".join(str(d) for d in part.images.shape[1:])


# --- train / validation split ---------------------------------------------------------------


def split(
    part: Split,
    fraction: float,
    *,
    seed: int,
    shuffle: bool = True,
    stratify: bool = False,
    setting: str | None = None,
) -> tuple[Split, Split]:
    """Split ``part`` into (train, validation); train gets ``fraction`` of the samples
    (``floor(fraction × N)``, as KotlinDL's ``train.split(0.95)``).

    * ``shuffle`` (default): a permutation drawn from a ``torch.Generator`` seeded with ``seed``:
      the same seed gives the same split on any machine.
    * ``stratify``: every class is split in the same proportion (each class shuffled with the
      seed unless ``shuffle`` is False, when each class keeps its first samples for training).
    * ``shuffle=False``: the first samples train and the tail validates, exactly like KotlinDL.
      On a file sorted by label this leaves whole classes out of one side: shuffle or stratify.

    Raises :class:`UsageError` unless 0 < ``fraction`` < 1 and both sides get a sample;
    ``setting`` (``"data.validation_split: 0.9"``) names what set the fraction in the message.
    """
    n = len(part)
    if not 0 < fraction < 1:
        raise UsageError(f"the split fraction must be between 0 and 1 (exclusive), got {fraction}")
    n_train = math.floor(round(fraction * n, 6))  # round first: 0.57 × 100 gives 57, not 56
    if not 0 < n_train < n:
        how = (
            f"{setting} of {n} samples"
            if setting
            else f"splitting {n} samples with fraction {fraction}"
        )
        raise UsageError(
            f"{how} gives {n_train} for training and {n - n_train} for validation; both need at "
            "least one sample"
        )
    if stratify:
        train_idx, val_idx = _stratified(part.labels, n_train, seed, shuffle)
    elif shuffle:
        order = torch.randperm(n, generator=_generator(seed))
        train_idx, val_idx = order[:n_train], order[n_train:]
    else:  # views, no copies
        return (
            Split(part.images[:n_train], part.labels[:n_train]),
            Split(part.images[n_train:], part.labels[n_train:]),
        )
    return _take(part, train_idx), _take(part, val_idx)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _stratified(
    labels: torch.Tensor, n_train: int, seed: int, shuffle: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a split giving each class its share of ``n_train`` (largest remainder)."""
    generator = _generator(seed)
    groups = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    if shuffle:
        groups = [g[torch.randperm(len(g), generator=generator)] for g in groups]
    quotas = _quotas([len(g) for g in groups], n_train)
    train = torch.cat([g[:q] for g, q in zip(groups, quotas, strict=True)])
    val = torch.cat([g[q:] for g, q in zip(groups, quotas, strict=True)])
    if shuffle:  # mix the classes, reproducibly
        return (
            train[torch.randperm(len(train), generator=generator)],
            val[torch.randperm(len(val), generator=generator)],
        )
    return train.sort().values, val.sort().values


def _quotas(sizes: list[int], n_train: int) -> list[int]:
    """Per-class training counts summing to ``n_train``, each as close to its share as can be."""
    total = sum(sizes)
    shares = [Fraction(size * n_train, total) for size in sizes]
    quotas = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (quotas[i] - shares[i], i))
    for i in by_remainder[: n_train - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _take(part: Split, indices: torch.Tensor) -> Split:
    return Split(part.images.index_select(0, indices), part.labels.index_select(0, indices))
