"""Issue 18's measurements of ``dlcli tune``; appends a section to benchmarks/RESULTS.md.

1. **Overhead per trial beyond its training** (SQLite, one process, in-process so that start-up
   is not counted): a study of the seed MLP, 1 epoch a trial on Fashion-MNIST. For each trial,
   its cycle (from the previous trial's end to this one's) less the time spent in
   ``pipeline.prepare`` + ``pipeline.train`` (build, fit, evaluate), plus the run-dir save
   (``store.save_run``, inside train): claiming, sampling, the trial config, heartbeats,
   telling the study, saving.
2. **Two workers vs one**: ``dlcli tune`` (real subprocesses) on an 8-trial sweep of the seed
   MLP, 1 epoch each, full Fashion-MNIST, a learning-rate-only space (so every trial costs the
   same) and no pruner, with ``--workers 1`` and ``--workers 2``, interleaved over rounds.

    python benchmarks/tune.py [--rounds 3] [--trials 8] [--no-write]

The load average is printed with every figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "configs" / "fashion-mnist-mlp.yaml"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sweep_config(folder: Path, *, trials: int, validation_split: float) -> Path:
    raw = yaml.safe_load(SEED.read_text())
    raw["data"]["validation_split"] = validation_split
    raw["data"]["data_dir"] = str(ROOT / "data")
    raw["training"]["epochs"] = 1
    raw["tune"] = {
        "trials": trials,
        "pruner": "none",
        "space": {"training.optimizer.learning_rate": {"float": [3e-4, 3e-3], "log": True}},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Timer:
    """Seconds spent in a module function, by wrapping it (the benchmark's own stopwatch)."""

    def __init__(self, module: Any, name: str) -> None:
        self.seconds: list[float] = []
        original = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - start)

        setattr(module, name, timed)


def overhead(trials: int) -> dict[str, Any]:
    """Part 1, in this process: each trial's cycle, and how much of it was spent training
    (``pipeline.prepare`` + ``pipeline.train``, which evaluate validation and test and save the
    run dir) and saving (``store.save_run``)."""
    from dlcli import pipeline, store
    from dlcli import tune as tuning
    from dlcli.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = load_config(sweep_config(folder, trials=trials, validation_split=0.5))
        out = folder / "study"
        settings = tuning.Settings(
            config=cfg,
            directory=out,
            storage=tuning.default_storage(out),
            study="bench",
            trials=trials,
        )
        tuning.prepare_directory(settings)
        tuning.top_up(tuning.open_study(settings, create=True), trials)
        ends: list[float] = []

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "end":
                ends.append(time.perf_counter())

        worker = tuning.Worker(settings, on_event)
        worker.dataset(cfg)  # the data, loaded once per process, before the clock starts
        prepare, train = Timer(pipeline, "prepare"), Timer(pipeline, "train")
        save = Timer(store, "save_run")
        start = time.perf_counter()
        worker.run()
    cycles = [b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)]
    trained = [p + t for p, t in zip(prepare.seconds, train.seconds, strict=True)]
    # Beyond training: the cycle less prepare + train, plus the run-dir save inside train.
    beyond = [c - t + s for c, t, s in zip(cycles, trained, save.seconds, strict=True)]
    return {
        "trials": trials,
        "cycle": statistics.median(cycles),
        "trained": statistics.median(trained),
        "save": statistics.median(save.seconds),
        "beyond": statistics.median(beyond),
        "beyond_max": max(beyond),
        "load": load(),
    }


def sweep_wall(config: Path, workers: int, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlcli",
            "tune",
            str(config),
            "--output",
            str(out),
            "--workers",
            str(workers),
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"dlcli tune --workers {workers} failed:\n{proc.stderr}")
    return time.perf_counter() - start


def workers_race(rounds: int, trials: int, validation_split: float) -> dict[str, Any]:
    """Part 2: wall seconds of --workers 1 and --workers 2, interleaved."""
    times: dict[int, list[float]] = {1: [], 2: []}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = sweep_config(folder, trials=trials, validation_split=validation_split)
        for r in range(rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for workers in order:
                loads.append(load())
                seconds = sweep_wall(config, workers, folder / f"r{r}-w{workers}")
                times[workers].append(seconds)
                print(f"round {r + 1}: --workers {workers}: {seconds:.1f} s (load {loads[-1]})")
    ratios = [b / a for a, b in zip(times[1], times[2], strict=True)]
    return {"times": times, "ratio": statistics.median(ratios), "loads": loads}


def report(
    part1: dict[str, Any] | None, part2: dict[str, Any] | None, args: argparse.Namespace
) -> str:
    import torch

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"## dlcli tune (issue 18), {now}",
        "",
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__}; load averages (1, 5, 15 "
        "min) noted with each figure: the machine was shared with other work.",
        "",
    ]
    if part1 is not None:
        lines += [
            f"**Overhead per trial** (SQLite, {part1['trials']} trials of the seed MLP, 1 epoch "
            "on half of Fashion-MNIST's training set, one process; medians; load "
            f"{part1['load']}): a trial's cycle "
            f"took {part1['cycle']:.2f} s, of which {part1['trained']:.2f} s in "
            "`pipeline.prepare` + `pipeline.train` (build, fit, evaluate validation and test, "
            f"save). **Beyond training: {part1['beyond']:.3f} s** (worst trial "
            f"{part1['beyond_max']:.3f} s): claiming and sampling, the trial config, heartbeats, "
            f"telling the study, and the run-dir save ({part1['save']:.3f} s of it).",
            "",
        ]
    if part2 is not None:
        t = part2["times"]
        lines += [
            f"**Two workers vs one** (`dlcli tune --trials {args.trials}`, seed MLP, 1 epoch "
            f"each, validation_split {args.validation_split}, learning-rate space, no pruner; "
            "wall seconds of the whole "
            f"command, {args.rounds} round(s) interleaved): `--workers 1` "
            f"{', '.join(f'{x:.1f}' for x in t[1])} s; `--workers 2` "
            f"{', '.join(f'{x:.1f}' for x in t[2])} s; median ratio 2 workers / 1 worker "
            f"**{part2['ratio']:.2f}x**. Loads at each start: {'; '.join(part2['loads'])}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--overhead-trials", type=int, default=6)
    parser.add_argument("--no-write", action="store_true", help="Print, do not append.")
    parser.add_argument(
        "--validation-split",
        type=float,
        default=0.05,
        help="Of the workers race (0.05: the seed config's; more trains on less).",
    )
    parser.add_argument("--only", choices=["overhead", "workers"], help="Run one part.")
    args = parser.parse_args()
    part1 = part2 = None
    if args.only != "workers":
        part1 = overhead(args.overhead_trials)
        print(json.dumps(part1, indent=2))
    if args.only != "overhead":
        part2 = workers_race(args.rounds, args.trials, args.validation_split)
    text = report(part1, part2, args)
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
