"""Issue 18's measurements of ``dlcli tune``; appends a section to benchmarks/RESULTS.md.

1. **Overhead per trial beyond its training** (SQLite, one process, in-process so that start-up
   is not counted): a study of the seed MLP whose trials train 1 epoch on a slice of
   Fashion-MNIST. For each trial, its cycle (from the previous trial's end to this one's:
   claiming, sampling, the trial config, model build, training, evaluation, the run-dir save,
   telling the study) minus its ``fit_seconds`` (the training loop, checkpoints included).
   Alongside, the same config trained the same number of times by ``pipeline.prepare`` +
   ``pipeline.train`` with the data preloaded: cycle minus that is what tune alone adds
   (sampling, storage, heartbeats).
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


def overhead(trials: int) -> dict[str, Any]:
    """Part 1, in this process."""
    from dlcli import pipeline
    from dlcli import tune as tuning
    from dlcli.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = load_config(sweep_config(folder, trials=trials, validation_split=0.8))
        out = folder / "study"
        settings = tuning.Settings(
            config=cfg,
            directory=out,
            storage=tuning.default_storage(out),
            study="bench",
            trials=trials,
        )
        ends: list[float] = []
        tuning.prepare_directory(settings)
        tuning.top_up(tuning.open_study(settings, create=True), trials)
        worker = tuning.Worker(
            settings, lambda e: ends.append(time.perf_counter()) if e["event"] == "end" else None
        )
        worker.dataset(cfg)  # the data, loaded once per process, before the clock starts
        start = time.perf_counter()
        worker.run()
        cycles = [b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)]
        fits = []
        for number in range(trials):
            metrics = json.loads((tuning.trial_dir(out, number) / "metrics.json").read_text())
            fits.append(metrics["fit_seconds"])
        # The same training without tune: prepare + train, data preloaded.
        dataset = worker.dataset(cfg)
        direct = []
        for i in range(trials):
            cfg.output.dir = str(folder / f"direct-{i}")
            t0 = time.perf_counter()
            pipeline.train(pipeline.prepare(cfg, dataset=dataset))
            direct.append(time.perf_counter() - t0)
    beyond_fit = [c - f for c, f in zip(cycles, fits, strict=True)]
    return {
        "trials": trials,
        "cycle": statistics.median(cycles),
        "fit": statistics.median(fits),
        "beyond_fit": statistics.median(beyond_fit),
        "beyond_fit_max": max(beyond_fit),
        "direct": statistics.median(direct),
        "tune_only": statistics.median(cycles) - statistics.median(direct),
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


def workers_race(rounds: int, trials: int) -> dict[str, Any]:
    """Part 2: wall seconds of --workers 1 and --workers 2, interleaved."""
    times: dict[int, list[float]] = {1: [], 2: []}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = sweep_config(folder, trials=trials, validation_split=0.05)
        for r in range(rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for workers in order:
                loads.append(load())
                seconds = sweep_wall(config, workers, folder / f"r{r}-w{workers}")
                times[workers].append(seconds)
                print(f"round {r + 1}: --workers {workers}: {seconds:.1f} s (load {loads[-1]})")
    ratios = [b / a for a, b in zip(times[1], times[2], strict=True)]
    return {"times": times, "ratio": statistics.median(ratios), "loads": loads}


def report(part1: dict[str, Any], part2: dict[str, Any], args: argparse.Namespace) -> str:
    import torch

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t = part2["times"]
    lines = [
        "",
        f"## dlcli tune (issue 18), {now}",
        "",
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__}; load averages (1, 5, 15 min)",
        "noted with each figure: the machine was shared with other work.",
        "",
        f"**Overhead per trial** (SQLite, {part1['trials']} trials of the seed MLP, 1 epoch on "
        "20% of Fashion-MNIST's training set, one process; medians; load "
        f"{part1['load']}): trial cycle {part1['cycle']:.2f} s, of which `fit_seconds` "
        f"{part1['fit']:.2f} s. **Beyond training: {part1['beyond_fit']:.2f} s** (worst trial "
        f"{part1['beyond_fit_max']:.2f} s) — claiming and sampling, the trial config, building "
        "the model, evaluating validation and the 10,000 test images, saving the run dir, "
        f"telling the study. The same config through `pipeline.prepare` + `pipeline.train` "
        f"alone took {part1['direct']:.2f} s: what tune itself adds is "
        f"{part1['tune_only']:.2f} s a trial.",
        "",
        f"**Two workers vs one** (`dlcli tune --trials {args.trials}`, seed MLP, 1 epoch each, "
        "full Fashion-MNIST, learning-rate space, no pruner; wall seconds of the whole command, "
        f"{args.rounds} round(s) interleaved): `--workers 1` "
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
    args = parser.parse_args()
    part1 = overhead(args.overhead_trials)
    print(json.dumps(part1, indent=2))
    part2 = workers_race(args.rounds, args.trials)
    text = report(part1, part2, args)
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
