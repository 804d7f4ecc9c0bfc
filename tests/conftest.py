"""Shared fixtures. Tests make their own tiny data; only tests marked as using the committed
archives read data/ (REPO_DATA)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from dlcli.data.idx import write_idx

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_DATA = REPO_ROOT / "data"


# --- data: a tiny IDX dataset -----------------------------------------------------------------


class TinyArchives(NamedTuple):
    """Paths of four gzip IDX archives: 32 train and 16 test 28×28 images, labels 0-9."""

    train_images: Path
    train_labels: Path
    test_images: Path
    test_labels: Path

    num_classes: int = 10


TINY_TRAIN, TINY_TEST = 32, 16


def tiny_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random uint8 28×28 images and labels cycling through 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return images, labels


def write_tiny_archives(folder: Path) -> TinyArchives:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, count, seed in (("train", TINY_TRAIN, 0), ("t10k", TINY_TEST, 1)):
        images, labels = tiny_arrays(count, seed)
        paths += [folder / f"{part}-images-idx3-ubyte.gz", folder / f"{part}-labels-idx1-ubyte.gz"]
        write_idx(paths[-2], images)
        write_idx(paths[-1], labels)
    return TinyArchives(*paths)


@pytest.fixture
def tiny_archives(tmp_path: Path) -> TinyArchives:
    """A tiny gzip IDX dataset in ``tmp_path/tiny`` (see :class:`TinyArchives`)."""
    return write_tiny_archives(tmp_path / "tiny")
