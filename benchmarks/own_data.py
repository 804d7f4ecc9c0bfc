"""How fast a 70,000-image PNG tree loads: first (decoded in parallel), then from the cache,
against the IDX archives the tree was made from.

    .venv/bin/python benchmarks/make_png_tree.py /tmp/fmnist-png      # once (~1 min)
    .venv/bin/python benchmarks/own_data.py /tmp/fmnist-png [--repeat 3] [--workers N]

Each measurement runs in a fresh Python process (so its peak memory is its own), through
``dlcli.data.local.load_local`` with ``model.input_shape`` [28, 28, 1] as a config gives it:

* ``first``: an empty cache folder, so every PNG is read, decoded and converted; the cache
  entry is written (counted);
* ``cached``: the same load again, served from the cache (the listing and every file's
  stat still happen: that is how a changed file is noticed);
* ``idx``: ``load_dataset("fashion-mnist")`` from the gz archives;
* ``threads``: the first load's decoding done by a thread pool instead of processes (no
  cache), to show why dlcli uses processes.

Prints the medians and the peak memory added by the load (peak RSS minus RSS before it), the
size of the final uint8 tensors, and the machine load (``/proc/loadavg``) before each run:
the development machine is shared, so the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import cpu_model

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

mode, tree, cache, data_dir, workers = sys.argv[1:6]
workers = int(workers) or None
import torch  # imported first, as `dlcli train` has it, so its memory is not counted
from dlcli.data.local import LocalData, load_local
from dlcli.data.dataset import load_dataset
before = rss_kib()
start = time.perf_counter()
if mode == "idx":
    data = load_dataset("fashion-mnist", data_dir)
elif mode == "threads":
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from dlcli.data import decode
    from dlcli.data.sources import list_folder
    from dlcli.data.images import Conversion
    conversion = Conversion(28, 28, 1)
    files = list_folder(Path(tree) / "train").paths + list_folder(Path(tree) / "test").paths
    names = [str(p) for p in files]
    size = 512
    with ThreadPoolExecutor(workers or decode.worker_count()) as pool:
        parts = list(pool.map(lambda s: decode._decode_chunk(names[s:s + size], conversion)[0],
                              range(0, len(names), size)))
    data = np.concatenate(parts)
else:
    data = load_local(LocalData(Path(tree) / "train", Path(tree) / "test",
                                input_shape=(28, 28, 1), cache_dir=cache, workers=workers))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = 0
nbytes = 0
if hasattr(data, "train"):
    count = len(data.train) + len(data.test)
    nbytes = data.train.images.numel() + data.test.images.numel()
else:
    count, nbytes = len(data), data.nbytes
print(json.dumps({"seconds": seconds, "added_mib": (peak - before) / 1024,
                  "images": count, "tensor_mib": nbytes / 2**20}))
"""


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def measure(mode: str, tree: Path, cache: Path, data_dir: Path, workers: int) -> dict[str, float]:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": str(here)}
    load = load_average()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tree), str(cache), str(data_dir), str(workers)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["load"] = float(load) if load != "?" else -1.0
    return result


def check_parity(tree: Path, data_dir: Path) -> bool:
    """The tree's tensors equal the IDX arrays sorted by (class, index in the archive)."""
    import numpy as np

    from dlcli.data.dataset import load_dataset
    from dlcli.data.local import LocalData, load_local

    own = load_local(LocalData(tree / "train", tree / "test", input_shape=(28, 28, 1)))
    idx = load_dataset("fashion-mnist", data_dir)
    same = True
    for mine, theirs in ((own.train, idx.train), (own.test, idx.test)):
        assert mine is not None and theirs is not None
        labels = theirs.labels.numpy()
        order = np.lexsort((np.arange(len(labels)), labels))
        same &= bool((mine.images.numpy() == theirs.images.numpy()[order]).all())
        same &= bool((mine.labels.numpy() == labels[order]).all())
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="0: every core")
    parser.add_argument("--threads", action="store_true", help="also time a thread pool")
    parser.add_argument("--parity", action="store_true", help="only check the pixels")
    args = parser.parse_args()
    if args.parity:
        same = check_parity(args.tree, args.data_dir)
        print(f"tree tensors identical to the IDX arrays (sorted by class, index): {same}")
        return 0 if same else 1
    modes = ["first", "cached", "idx"] + (["threads"] if args.threads else [])
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="dlcli-bench-cache-") as cache:
            for mode in modes:
                r = measure(mode, args.tree, Path(cache), args.data_dir, args.workers)
                results[mode].append(r)
                print(
                    f"{mode:8s} {r['seconds']:7.3f} s  +{r['added_mib']:6.1f} MiB peak  "
                    f"{int(r['images']):,} images ({r['tensor_mib']:.1f} MiB)  load {r['load']}",
                    flush=True,
                )
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; medians of {args.repeat}:")
    for mode, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        added = statistics.median(r["added_mib"] for r in runs)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        print(f"| {mode} | {seconds:.3f} s | +{added:.0f} MiB | load {loads} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
