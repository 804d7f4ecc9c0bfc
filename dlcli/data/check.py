"""``dlcli data check``: what a dataset holds before anything trains on it.

For each split (train, and test / validation when given): images per class, the image sizes
and modes found, every file that could not be read (by path, with the reason), files that
are not images, folder links not followed, class folders holding no image (and train's
classes a test or validation folder lacks), duplicate files (same bytes) and files present
in both train and test (by content hash), and a note when the classes are imbalanced.
Images are fully decoded (a truncated file is found) in worker processes, but not
converted. No torch unless a registry dataset is checked.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlcli import untrusted
from dlcli.data.decode import inspect_files
from dlcli.data.images import CHANNEL_MODES
from dlcli.data.sources import (
    ArrayData,
    FileList,
    Source,
    check_csv_labels,
    check_named_classes,
    class_folder_notes,
    has_test_arrays,
    open_source,
    split_folders,
)

IMBALANCE_RATIO = 2.0  # largest / smallest class at or above this gets a note


@dataclass
class SplitCheck:
    """What one split holds."""

    name: str
    source: str
    kind: str
    images: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> count
    modes: dict[str, int] = field(default_factory=dict)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)  # folder links not followed
    empty_folders: list[str] = field(default_factory=list)  # class folders with no image
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical files
    digests: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "images": self.images,
            "per_class": self.per_class,
            "sizes": self.sizes,
            "modes": self.modes,
            "unreadable": self.unreadable,
            "ignored": self.ignored,
            "links": self.links,
            "empty_class_folders": self.empty_folders,
            "duplicates": self.duplicates,
        }


@dataclass
class CheckReport:
    splits: dict[str, SplitCheck]
    in_train_and_test: list[list[str]]
    notes: list[str]

    @property
    def unreadable(self) -> int:
        return sum(len(s.unreadable) for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": {name: s.to_dict() for name, s in self.splits.items()},
            "unreadable_count": self.unreadable,
            "in_train_and_test": self.in_train_and_test,
            "notes": self.notes,
            "ok": self.unreadable == 0,
        }


def check_target(
    target: Path, overrides: Sequence[str] = (), *, workers: int | None = None
) -> CheckReport:
    """Check a data path (a folder holding ``train/`` and ``test/`` is taken as both splits)
    or the data a YAML config names."""
    if target.suffix.lower() in (".yaml", ".yml") and target.is_file():
        return _check_config(target, overrides, workers)
    return check_paths(split_folders(target) or {"train": target}, workers=workers)


def _check_config(path: Path, overrides: Sequence[str], workers: int | None) -> CheckReport:
    from dlcli.config import load_config

    cfg = load_config(path, overrides)
    data = cfg.data
    if data.train is not None:
        given = {"train": data.train, "test": data.test, "validation": data.validation}
        paths = {name: Path(p) for name, p in given.items() if p is not None}
        return check_paths(
            paths, workers=workers or data.workers, class_names=data.class_names or ()
        )
    from dlcli.data.load import load_data

    dataset = load_data(data)
    splits = {"train": (dataset.train.images.numpy(), dataset.train.labels.numpy())}
    if dataset.test is not None:
        splits["test"] = (dataset.test.images.numpy(), dataset.test.labels.numpy())
    return check_arrays(splits, dataset.class_names, data.dataset or str(data.train_images))


def check_paths(
    paths: dict[str, Path], *, workers: int | None = None, class_names: Sequence[str] = ()
) -> CheckReport:
    """Check the data of each split (``{"train": PATH, "test": PATH, ...}``); a class folder
    ``class_names`` (a config's ``data.class_names``) lists with no image is an error, as
    in training."""
    sources: dict[str, Source] = {}
    for name, path in paths.items():
        sources[name] = open_source(path, name)
    if class_names and "train" in sources:
        check_named_classes(sources["train"], class_names)
    elif "train" in sources:
        check_csv_labels(sources["train"])
    if "test" not in paths and "train" in paths and has_test_arrays(paths["train"]):
        sources["test"] = open_source(paths["train"], "test")
    splits = {name: _check_source(name, s, workers) for name, s in sources.items()}
    report = _report(splits)
    report.notes[:0] = class_folder_notes(sources)
    return report


def check_arrays(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str], source: str
) -> CheckReport:
    """Check decoded splits (N×C×H×W images, labels): a registry dataset."""
    checked = {}
    for name, (images, labels) in splits.items():
        array = ArrayData(Path(source), "registry", images, labels)
        checked[name] = _check_arrays(name, array, channels_first=True, names=class_names)
    return _report(checked)


def _report(splits: dict[str, SplitCheck]) -> CheckReport:
    overlap = _overlap(splits)
    return CheckReport(splits, overlap, _notes(splits, overlap))


def _check_source(name: str, source: Source, workers: int | None) -> SplitCheck:
    if isinstance(source, ArrayData):
        return _check_arrays(name, source, channels_first=False, names=None)
    return _check_files(name, source, workers)


def _check_files(name: str, files: FileList, workers: int | None) -> SplitCheck:
    check = SplitCheck(name, str(files.source), files.kind, ignored=list(files.ignored))
    check.links = [
        {"path": link.path, "target": link.target, "reason": link.reason} for link in files.links
    ]
    check.empty_folders = [folder.path for folder in files.empty]
    infos, bad = inspect_files(files.paths, workers=workers)
    check.unreadable = [{"path": p, "reason": r} for p, r in bad]
    per_class: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    by_digest: dict[str, list[str]] = defaultdict(list)
    for path, label, info in zip(files.paths, files.labels, infos, strict=True):
        if info is None:
            continue
        per_class[label] += 1
        sizes[f"{info.height}x{info.width}"] += 1
        modes[info.mode] += 1
        by_digest[info.digest].append(str(path))
    check.images = sum(per_class.values())
    check.per_class = _sorted_classes(per_class, files.labels)
    check.sizes, check.modes = dict(sizes.most_common()), dict(modes.most_common())
    check.digests = dict(by_digest)
    check.duplicates = [group for group in by_digest.values() if len(group) > 1]
    return check


def _check_arrays(
    name: str, data: ArrayData, *, channels_first: bool, names: Sequence[str] | None
) -> SplitCheck:
    images = data.images
    check = SplitCheck(name, str(data.source), data.kind, images=len(images))
    labels = data.labels
    counts: list[int] = []
    if len(labels):
        counts = np.bincount(labels, minlength=len(names) if names else 0).tolist()
    label_names = list(names) if names else [str(i) for i in range(len(counts))]
    check.per_class = {label_names[i]: c for i, c in enumerate(counts)}
    if images.ndim == 3:
        h, w, c = images.shape[1], images.shape[2], 1
    elif channels_first:
        c, h, w = images.shape[1:]
    else:
        h, w, c = images.shape[1:]
    check.sizes = {f"{h}x{w}": len(images)}
    check.modes = {CHANNEL_MODES.get(int(c), f"{c} channels"): len(images)}
    by_digest: dict[str, list[str]] = defaultdict(list)
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    for i, row in enumerate(flat):
        by_digest[hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()].append(
            f"{data.source}[{i}]"
        )
    check.digests = dict(by_digest)
    check.duplicates = [group for group in by_digest.values() if len(group) > 1]
    return check


def _sorted_classes(counts: Counter[str], labels: Sequence[str]) -> dict[str, int]:
    names = list(dict.fromkeys(labels))
    numeric = all(untrusted.is_number(n) for n in names)
    names.sort(key=lambda n: (int(n), n) if numeric else (0, n))
    return {n: counts.get(n, 0) for n in names}


def _overlap(splits: dict[str, SplitCheck]) -> list[list[str]]:
    train, test = splits.get("train"), splits.get("test")
    if train is None or test is None:
        return []
    return [
        [*train.digests[digest], *test.digests[digest]]
        for digest in sorted(train.digests.keys() & test.digests.keys())
    ]


def _notes(splits: dict[str, SplitCheck], overlap: list[list[str]]) -> list[str]:
    notes: list[str] = []
    for split in splits.values():
        counts = dict(split.per_class)
        empty = [k for k, v in counts.items() if v == 0]
        if empty:
            notes.append(f"{split.name}: no readable image in class {', '.join(empty)}")
        present = {k: v for k, v in counts.items() if v}
        if len(present) > 1:
            big = max(present, key=lambda k: present[k])
            small = min(present, key=lambda k: present[k])
            ratio = present[big] / present[small]
            if ratio >= IMBALANCE_RATIO:
                notes.append(
                    f"{split.name}: classes are imbalanced: '{big}' has {present[big]} images, "
                    f"'{small}' {present[small]} ({ratio:.1f}x); consider more images of the "
                    "small classes, or data.stratify: true for the validation split"
                )
        if len(split.sizes) > 1:
            notes.append(
                f"{split.name}: {len(split.sizes)} different image sizes: they are resized "
                "to model.input_shape (data.resize)"
            )
        if split.duplicates:
            copies = sum(len(g) - 1 for g in split.duplicates)
            notes.append(f"{split.name}: {copies} duplicate files (same bytes as another)")
    train_classes = set(splits["train"].per_class) if "train" in splits else set()
    for split in splits.values():
        missing = set(split.per_class) - train_classes
        if split.name != "train" and missing and split.kind in ("folder", "csv"):
            notes.append(f"{split.name}: classes not in train: {', '.join(sorted(missing))}")
    if overlap:
        notes.append(f"{len(overlap)} images are in both train and test (same bytes)")
    return [untrusted.printable(note) for note in notes]  # one line each, whatever a name holds
