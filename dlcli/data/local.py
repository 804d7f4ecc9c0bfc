"""Your own data → a :class:`~dlcli.data.dataset.Dataset`: ``data.train`` (and optionally
``data.test`` and ``data.validation``) as class folders, CSV files, .npz files or IDX archives
(:mod:`dlcli.data.sources`), image files decoded in parallel and cached
(:mod:`dlcli.data.decode`, :mod:`dlcli.data.cache`).

**Class names.** With ``data.class_names``, labels are those names (or indices into them).
Otherwise: class folders and CSV name labels give the sorted names of train's classes
(numerically sorted when every name is a number); integer labels (CSV, .npz, IDX) give
``"0"``, ``"1"``, … up to ``data.num_classes`` or the largest label. A test or validation
class that train lacks is an error. A class folder holding no image is no class: an error
when ``data.class_names`` lists it, else a note (:attr:`Dataset.notes`), as is a class of
train with no image in a test or validation folder.

**Fingerprints.** Each split's data as loaded gets a SHA-256 (:func:`fingerprint`), recorded
by a run in ``metrics.json`` under ``dataset.checksums`` as ``"<split>: <absolute path>"``
(``evaluate`` compares it as it compares a registry dataset's archives), and the digest of
each of its files (:func:`split_digests`, the run's ``data-digests.json``: what names the
files that changed).

**Unreadable images** stop loading with a :class:`DataError` listing the first 20 and the
count, unless ``skip_bad_files`` (they are then left out and listed in
:attr:`Dataset.skipped`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlcli.config import DataConfig
from dlcli.data import cache
from dlcli.data.dataset import Dataset, Split
from dlcli.data.decode import Decoded, bad_files_error, decode_files, infer_conversion, peek_files
from dlcli.data.download import file_digests
from dlcli.data.images import Conversion
from dlcli.data.sources import (
    ArrayData,
    FileList,
    Source,
    check_csv_labels,
    check_named_classes,
    class_folder_notes,
    has_test_arrays,
    labels_beside,
    open_source,
)
from dlcli.errors import DataError
from dlcli.untrusted import is_number, printable

SKIP_HINT = (
    "Fix or remove them, or set data.skip_bad_files: true to train without them "
    "(`dlcli data check` lists every one)"
)


def _evaluate_skip_hint(path: Path) -> str:
    """The remedy for unreadable files given to ``evaluate --data``: it has no option to
    leave files out (the run's ``data.skip_bad_files`` decides, and it did not)."""
    return f"Fix or remove them, then evaluate again (`dlcli data check {path}` lists every one)"


@dataclass(frozen=True)
class LocalData:
    """Where the data is and how images are turned into the model's input."""

    train: Path
    test: Path | None = None
    validation: Path | None = None
    input_shape: tuple[int, int, int] | None = None  # (height, width, channels); None: infer
    resize: str = "stretch"
    background: int = 0
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None
    skip_bad_files: bool = False
    # True: ``train`` is labelled data a trained model is scored on (``evaluate --data``), its
    # classes the model's: messages say so, and name no config key that cannot change there.
    evaluating: bool = False
    cache: bool = True
    cache_dir: str | None = None
    workers: int | None = None

    @classmethod
    def from_config(cls, data: DataConfig, input_shape: Sequence[int] | None) -> LocalData:
        """The ``data`` section's keys (``data.train`` must be set) and ``model.input_shape``."""
        assert data.train is not None
        return cls(
            train=Path(data.train),
            test=Path(data.test) if data.test is not None else None,
            validation=Path(data.validation) if data.validation is not None else None,
            input_shape=(
                (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
                if input_shape is not None and len(input_shape) == 3
                else None
            ),
            resize=data.resize,
            background=data.background,
            class_names=tuple(data.class_names) if data.class_names else None,
            num_classes=data.num_classes,
            skip_bad_files=data.skip_bad_files,
            cache=data.cache,
            cache_dir=data.cache_dir,
            workers=data.workers,
        )


def load_local(spec: LocalData) -> Dataset:
    """Read, decode and label every split ``spec`` names (see the module doc)."""
    parts = _sources(spec)
    names, encoders = _classes(parts, spec)
    conversion = _given_conversion(spec)
    splits: dict[str, Split] = {}
    digests: dict[str, dict[str, str]] = {}
    bad: list[tuple[str, str]] = []
    notes = class_folder_notes(parts)
    for part, source in parts.items():  # train first: its images may set the input shape
        split, conversion, part_bad, found = _load_split(
            source, conversion, encoders[part], spec, notes
        )
        splits[part] = split
        digests[f"{part}: {os.path.abspath(source.source)}"] = found
        bad += part_bad
    if bad and not spec.skip_bad_files:
        hint = _evaluate_skip_hint(spec.train) if spec.evaluating else SKIP_HINT
        raise bad_files_error(bad, hint)
    if len(names) < 2:  # every prediction right by construction: a metric that says nothing
        raise DataError(
            f"{spec.train}: holds {len(names)} class ({', '.join(names) or 'none'}); a "
            "classifier needs at least 2"
        )
    return Dataset(
        train=splits["train"],
        test=splits.get("test"),
        num_classes=len(names),
        class_names=names,
        name=None,
        checksums={key: fingerprint(found) for key, found in digests.items()},
        split_sources={part: str(source.source) for part, source in parts.items()},
        skipped=[{"path": p, "reason": r} for p, r in bad],
        validation=splits.get("validation"),
        notes=notes,
        digests=digests,
    )


def describe(spec: LocalData) -> tuple[tuple[str, ...], Conversion]:
    """The class names and the conversion ``spec`` gives, from the listing and the train
    images' headers (no pixel decoded): what ``config validate`` and ``init --from`` need."""
    parts = _sources(spec)
    names, _ = _classes(parts, spec)
    conversion = _given_conversion(spec)
    if conversion is not None:
        return names, conversion
    train = parts["train"]
    if isinstance(train, ArrayData):
        return names, _array_conversion(train, spec)
    infos, bad = peek_files(train.paths, workers=spec.workers)
    return names, infer_conversion(infos, bad, resize=spec.resize, background=spec.background)


def _sources(spec: LocalData) -> dict[str, Source]:
    parts: dict[str, Source] = {"train": open_source(spec.train, "train")}
    test = spec.test
    if test is None and has_test_arrays(spec.train):  # Keras' x_test/y_test in train's .npz
        test = spec.train
    if test is not None:
        parts["test"] = open_source(test, "test")
    if spec.validation is not None:
        parts["validation"] = open_source(spec.validation, "validation")
    return parts


def _given_conversion(spec: LocalData) -> Conversion | None:
    if spec.input_shape is None:
        return None
    height, width, channels = spec.input_shape
    return Conversion(height, width, channels, spec.resize, spec.background)


# --- class names -----------------------------------------------------------------------------

Encoder = dict[str, int]  # label text → class index


def _classes(
    parts: dict[str, Source], spec: LocalData
) -> tuple[tuple[str, ...], dict[str, Encoder]]:
    """The class names, and for each split of files, its label text → index."""
    names = _class_names(parts, spec)
    if spec.class_names and not spec.evaluating:  # data to score may hold fewer classes
        check_named_classes(parts["train"], spec.class_names)
    index = {name: i for i, name in enumerate(names)}
    encoders: dict[str, Encoder] = {}
    for part, source in parts.items():
        if isinstance(source, ArrayData):
            _check_array_labels(source, len(names), spec.evaluating)
            encoders[part] = {}
            continue
        encoder: Encoder = {}
        for label in dict.fromkeys(source.labels):
            if label in index:
                encoder[label] = index[label]
            elif is_number(label) and int(label) < len(names) and source.kind == "csv":
                encoder[label] = int(label)
            elif spec.evaluating:
                raise DataError(
                    f"{source.source}: class {label!r} is not one of the {len(names)} classes "
                    f"the model was trained on ({_shown(names)})"
                )
            else:
                raise DataError(
                    f"{source.source}: class {label!r} of the {part} data is not one of the "
                    f"{len(names)} classes ({_shown(names)})"
                )
        encoders[part] = encoder
    return names, encoders


def _class_names(parts: dict[str, Source], spec: LocalData) -> tuple[str, ...]:
    if spec.class_names:
        return tuple(spec.class_names)
    train = parts["train"]
    check_csv_labels(train)
    if isinstance(train, FileList) and not (
        train.kind == "csv" and all(is_number(label) for label in train.labels)
    ):
        found = set(train.labels)
        numeric = all(is_number(name) for name in found)
        return tuple(sorted(found, key=lambda n: (int(n), n) if numeric else (0, n)))
    count = spec.num_classes or _largest_label(parts) + 1
    return tuple(str(i) for i in range(count))


def _largest_label(parts: dict[str, Source]) -> int:
    largest = 0
    for source in parts.values():
        if isinstance(source, ArrayData):
            if len(source.labels):
                largest = max(largest, int(source.labels.max()))
        else:
            numbers = [int(label) for label in source.labels if is_number(label)]
            largest = max([largest, *numbers])
    return largest


def _check_array_labels(source: ArrayData, num_classes: int, evaluating: bool) -> None:
    labels = source.labels
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        found = ", ".join(map(str, np.unique(labels[bad])[:5]))
        remedy = (
            f"the model was trained on {num_classes} classes"
            if evaluating
            else "set data.num_classes or data.class_names"
        )
        raise DataError(
            f"{source.source}: {int(bad.sum())} of {len(labels)} labels are outside "
            f"[0, {num_classes}) (found {found}); {remedy}"
        )


def _shown(names: tuple[str, ...]) -> str:
    return ", ".join(names[:10]) + (", …" if len(names) > 10 else "")


# --- one split -------------------------------------------------------------------------------


def _load_split(
    source: Source,
    conversion: Conversion | None,
    encoder: Encoder,
    spec: LocalData,
    notes: list[str],
) -> tuple[Split, Conversion, list[tuple[str, str]], dict[str, str]]:
    """The split, its conversion, its unreadable files and its :func:`file_digests`; a note
    for the user added to ``notes``."""
    if isinstance(source, ArrayData):
        split = _array_split(source, conversion, spec)
        return split, _array_conversion(source, spec), [], split_digests(source)
    decoded, conversion = decode_cached(source, conversion, spec, notes)
    codes = np.array([encoder[label] for label in source.labels], dtype=np.int64)
    labels = torch.from_numpy(codes[decoded.kept])
    split = Split(torch.from_numpy(decoded.images), labels)
    return split, conversion, decoded.bad, split_digests(source, decoded)


def split_digests(source: Source, decoded: Decoded | None = None) -> dict[str, str]:
    """What one split's data is made of, as loaded: file name → hex digest, names relative to
    the folder (or to the CSV's, .npz's or archive's folder), in the listing's order.

    * a folder: every image used (``decoded``'s kept files), its content digest (BLAKE2b,
      :attr:`~dlcli.data.images.ImageInfo.digest`) taken from the bytes decoded or cached
      with the pixels: no image is read again;
    * a CSV file: the same for the images it names, and the CSV file's own SHA-256 (from the
      bytes its labels were read from);
    * an .npz file: its SHA-256; an IDX pair: both archives' SHA-256.
    """
    if isinstance(source, ArrayData):
        paths = [source.source] + ([labels_beside(source.source)] if source.kind == "idx" else [])
        try:
            return {path.name: file_digests(path, md5=False)[1] for path in paths}
        except OSError as err:  # read a moment ago: replaced or removed since
            raise DataError(f"{err.filename}: cannot read: {err.strerror or err}") from None
    assert decoded is not None, "the images' digests come from decoding them"
    folder = source.source if source.kind == "folder" else source.source.parent
    prefix = os.path.join(os.fspath(folder), "")
    cut, listed = len(prefix), source.paths
    names = [
        listed[i][cut:] if listed[i].startswith(prefix) else listed[i]
        for i in decoded.kept.tolist()
    ]
    hexed = decoded.digests.tobytes().hex()  # one call, then slices: 70,000 files in 0.1 s
    size = 2 * decoded.digests.shape[1]
    found = dict(
        zip(names, (hexed[at : at + size] for at in range(0, len(hexed), size)), strict=True)
    )
    if source.kind == "csv":
        found[source.source.name] = source.sha256
    return found


def fingerprint(digests: dict[str, str]) -> str:
    """The SHA-256 a run records for one split (``dataset.checksums``): over its
    :func:`split_digests`, name by name. An image added, removed, renamed, moved to another
    class or rewritten, an edited CSV or a replaced .npz changes it."""
    text = "".join(f"{name}\0{digest}\n" for name, digest in sorted(digests.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def decode_cached(
    files: FileList, conversion: Conversion | None, spec: LocalData, notes: list[str]
) -> tuple[Decoded, Conversion]:
    """The files' pixels from the cache, else decoded (and cached). Without a conversion,
    the input shape is inferred from the files' headers first. A cache folder that cannot
    be written adds one note to ``notes`` (once, however many splits miss it)."""
    entry = None
    if spec.cache:
        root = cache.cache_dir(spec.cache_dir)
        settings = conversion or cache.Inferred(spec.resize, spec.background)
        entry = cache.entry_path(root, files.source, files.paths, settings, files.stats)
        hit = cache.load(entry, len(files.paths), settings)
        if hit is not None:
            return hit
    if conversion is None:
        infos, bad = peek_files(files.paths, workers=spec.workers)
        conversion = infer_conversion(infos, bad, resize=spec.resize, background=spec.background)
    decoded = decode_files(files.paths, conversion, workers=spec.workers)
    if entry is not None:
        why = cache.save(entry, decoded, conversion, files.source, settings)
        if why is not None:
            note = f"image cache {root} is not writable ({why}): images are decoded each time"
            if printable(note) not in notes:
                notes.append(printable(note))
    return decoded, conversion


def _array_conversion(source: ArrayData, spec: LocalData) -> Conversion:
    images = source.images
    channels = 1 if images.ndim == 3 else int(images.shape[3])
    return Conversion(
        int(images.shape[1]), int(images.shape[2]), channels, spec.resize, spec.background
    )


def _array_split(source: ArrayData, conversion: Conversion | None, spec: LocalData) -> Split:
    found = _array_conversion(source, spec)
    if conversion is not None and found.chw != conversion.chw:
        h, w, c = conversion.height, conversion.width, conversion.channels
        raise DataError(
            f"{source.source}: its images are {found.height}×{found.width}×{found.channels} "
            f"but the model takes {h}×{w}×{c} (height×width×channels); arrays are not "
            + ("resized" if spec.evaluating else "resized: set model.input_shape to match")
        )
    tensor = torch.from_numpy(source.images)
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    return Split(tensor, torch.from_numpy(source.labels))
