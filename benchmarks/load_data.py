"""How long loading Fashion-MNIST (train + test, the four gz archives in data/) takes.

    .venv/bin/python benchmarks/load_data.py [--dataset NAME] [--data-dir DIR] [--repeat N]

Prints the median of N runs of ``load_dataset`` cold-ish (the archives dropped from the page
cache with ``posix_fadvise`` first, where the OS allows) and warm, and the time to read and
decompress each archive alone, which shows that loading is bound by the largest gunzip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dlcli.data.dataset import load_dataset
from dlcli.data.download import verify_dataset
from dlcli.data.idx import read_idx
from dlcli.data.registry import get_entry


def median_seconds(fn: Callable[[], object], repeat: int, before: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def drop_from_page_cache(paths: list[Path]) -> None:
    """Ask the OS to forget the files' cached pages (Linux; a no-op elsewhere)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    paths = list(verify_dataset(get_entry(args.dataset), Path(args.data_dir)).values())
    load = lambda: load_dataset(args.dataset, args.data_dir)  # noqa: E731
    print(
        f"{args.dataset}: median of {args.repeat}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"{'what':<40}{'seconds':>10}")
    cold = median_seconds(load, args.repeat, lambda: drop_from_page_cache(paths))
    warm = median_seconds(load, args.repeat, lambda: None)
    print(f"{'load_dataset, cold-ish':<40}{cold:>10.3f}")
    print(f"{'load_dataset, warm':<40}{warm:>10.3f}")
    total = 0.0
    for path in paths:
        seconds = median_seconds(lambda p=path: read_idx(p), args.repeat, lambda: None)
        total += seconds
        print(f"{'  read_idx ' + path.name:<40}{seconds:>10.3f}")
    print(f"{'  sum of the four, one after another':<40}{total:>10.3f}")
    data = load()
    print(
        f"train {tuple(data.train.images.shape)} {data.train.images.dtype}, "
        f"test {tuple(data.test.images.shape)}"
    )


if __name__ == "__main__":
    main()
