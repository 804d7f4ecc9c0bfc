"""Write Fashion-MNIST (or any IDX dataset) as a tree of PNG files in class folders:

    .venv/bin/python benchmarks/make_png_tree.py OUT [--data-dir data/fashion-mnist]

gives ``OUT/train/<label>/<index>.png`` (60,000 files) and ``OUT/test/<label>/<index>.png``
(10,000), 8-bit greyscale, the pixels exactly those of the IDX archives; ``<index>`` is the
image's position in its archive, zero-padded, so sorting a class folder by name keeps the
archive's order. The tree ``benchmarks/own_data.py`` loads and ``tests/data/test_own_data.py``
checks pixel for pixel (on a small slice). Written in parallel processes; an existing OUT is
refused.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from dlcli.data.idx import read_idx

PARTS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def write_tree(root: Path, images: np.ndarray, labels: np.ndarray, workers: int = 1) -> None:
    """``images[i]`` as ``root/<labels[i]>/<i>.png`` (five digits at least)."""
    for label in np.unique(labels):
        (root / str(int(label))).mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(images))))
    chunks = np.array_split(np.arange(len(images)), max(workers * 8, 1))
    jobs = [(root, images[c], labels[c], c, width) for c in chunks if len(c)]
    if workers == 1:
        for job in jobs:
            _write_chunk(*job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_chunk, *zip(*jobs, strict=True)))


def _write_chunk(
    root: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, width: int
) -> None:
    for image, label, index in zip(images, labels, indices, strict=True):
        Image.fromarray(image, mode="L").save(root / str(int(label)) / f"{index:0{width}d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("data/fashion-mnist"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists():
        print(f"{args.out} exists: give a new folder", file=sys.stderr)
        return 2
    for part, (images_name, labels_name) in PARTS.items():
        images = read_idx(args.data_dir / images_name)
        labels = read_idx(args.data_dir / labels_name)
        write_tree(args.out / part, images, labels, workers=args.workers)
        print(f"{args.out / part}: {len(images):,} PNG files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
