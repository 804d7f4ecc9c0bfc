"""Data-parallel training: 2 workers (`dlcli train --nproc-per-node 2`) against 1 process, on
the seed model (configs/fashion-mnist-mlp.yaml: 57,000 Fashion-MNIST images, global batch 100).

    .venv/bin/python benchmarks/distributed.py                 # 3 rounds, 2 epochs a run
    .venv/bin/python benchmarks/distributed.py --rounds 1 --epochs 1 --no-write   # quick

Every run is a real `dlcli train` subprocess; the number compared is its own fit time per
epoch (``fit_seconds / epochs`` from metrics.json: the training steps and the validation pass
of each epoch, nothing before or after), plus the whole command's wall time (process start,
data loading and, for 2 workers, the launcher and rendezvous). Contenders:

* ``1 process, T threads``: plain `dlcli train` with OMP_NUM_THREADS=T (T = the cores).
* ``1 process, 1 thread``: the same with one thread, the per-worker budget of the next one.
* ``N workers x 1 thread``: `dlcli train --nproc-per-node N` (gloo on the CPU, 1 thread each:
  the launcher gives each worker cores / N).

They run A B C, then C B A, round after round, so a slow drift of a shared machine falls on
all of them alike; the table has medians. The section between this script's markers in
benchmarks/RESULTS.md is replaced; other sections are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CONFIG = ROOT / "configs" / "fashion-mnist-mlp.yaml"
BEGIN, END = "<!-- distributed:begin -->", "<!-- distributed:end -->"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")


@dataclass
class Contender:
    name: str
    workers: int
    threads: int
    epoch_seconds: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)

    def run(self, epochs: int, out: Path) -> None:
        argv = [sys.executable, "-m", "dlcli", "train", str(CONFIG), "--json", "--quiet"]
        argv += ["--set", f"training.epochs={epochs}", "--set", f"data.data_dir={ROOT / 'data'}"]
        argv += ["--output", str(out), "--overwrite"]
        if self.workers > 1:
            argv += ["--nproc-per-node", str(self.workers)]
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        env["OMP_NUM_THREADS"] = str(self.threads)
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{self.name} failed ({proc.returncode}):\n{proc.stderr}")
        doc = json.loads(proc.stdout)
        self.epoch_seconds.append(doc["fit_seconds"] / doc["epochs"])
        self.wall_seconds.append(wall)
        self.val_accuracy.append(doc["validation"]["accuracy"])


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def contenders(workers: int) -> list[Contender]:
    n = cores()
    per_worker = max(1, n // workers)
    return [
        Contender(f"1 process, {n} threads", 1, n),
        Contender("1 process, 1 thread", 1, 1),
        Contender(f"{workers} workers x {per_worker} thread(s)", workers, per_worker),
    ]


def measure(field_: list[float]) -> str:
    return f"{statistics.median(field_):.2f}"


def report(results: list[Contender], args: argparse.Namespace, loads: list[str]) -> str:
    singles = [c for c in results if c.workers == 1]
    best = min(singles, key=lambda c: statistics.median(c.epoch_seconds))
    base = statistics.median(best.epoch_seconds)
    lines = [
        BEGIN,
        "## Distributed: 2 workers vs 1 process (CPU)",
        "",
        f"`benchmarks/distributed.py` on {datetime.now(timezone.utc):%Y-%m-%d}: the seed MLP "
        f"(`configs/fashion-mnist-mlp.yaml`, 57,000 training images, global batch 100), "
        f"{args.epochs} epoch(s) per run, median of {args.rounds} interleaved round(s). "
        f"Machine: {cores()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {_torch_version()}, no GPU; load average before/after: {loads[0]} / {loads[1]}.",
        "",
        "| run | fit s/epoch | vs fastest 1 process | whole command s | val accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in results:
        ratio = statistics.median(c.epoch_seconds) / base
        lines.append(
            f"| {c.name} | {measure(c.epoch_seconds)} | {ratio:.2f}x | "
            f"{measure(c.wall_seconds)} | {statistics.median(c.val_accuracy):.4f} |"
        )
    multi = results[-1]
    ratio = statistics.median(multi.epoch_seconds) / base
    lines += [
        "",
        f"Here {multi.name} took {ratio:.2f}x the fit time per epoch of the fastest single "
        f"process ({best.name}). Validation accuracies differ in the third decimal: "
        "different thread counts and the all-reduce sum floats in different orders, and "
        "after 570 Adam steps an epoch such differences show.",
        "",
        args.note.strip(),
        "",
        END,
    ]
    return "\n".join(line for line in lines) + "\n"


NOTE = """\
Reading it: on a CPU-only machine, N workers split each global batch and the cores between
them, and add per step one gradient all-reduce (gloo, over the loopback) and a one-int stop
vote that overlaps the next step; with 2 cores, 2 workers of 1 thread do the same arithmetic
as 1 process of 2 threads, so they are not expected to be faster, and the launcher adds
seconds of start-up (two more Python processes importing torch, the rendezvous). On a shared
machine (see the load averages) whatever runs in lock step (the OpenMP threads of one
process, the workers of a job) waits whenever one of its parts loses its core, which is why
2 threads can be slower than 1 here. The point of `--nproc-per-node` is one worker per GPU,
or per node: the GPU case (NCCL) was not measured (no GPU in this session)."""


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_results(text: str) -> None:
    """Replace this script's section of RESULTS.md (between its markers), or append it."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--note", default=NOTE, help="the paragraph under the table")
    args = parser.parse_args()
    results = contenders(args.workers)
    loads = [_load()]
    with tempfile.TemporaryDirectory(prefix="dlcli-bench-") as tmp:
        for round_ in range(args.rounds):
            order = results if round_ % 2 == 0 else results[::-1]
            for c in order:
                c.run(args.epochs, Path(tmp) / f"run-{c.workers}-{c.threads}")
                print(
                    f"round {round_ + 1}: {c.name}: {c.epoch_seconds[-1]:.2f} s/epoch, "
                    f"{c.wall_seconds[-1]:.1f} s in all",
                    file=sys.stderr,
                )
    loads.append(_load())
    text = report(results, args, loads)
    print(text)
    if not args.no_write:
        write_results(text)
        print(f"written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
