"""Time to accuracy: the shipped speedrun configs, and the seed Fashion-MNIST MLP on the
MNIST speedrun's one-cycle schedule, trained through the real ``dlcli train`` (one fresh
process per run).

    .venv/bin/python benchmarks/time_to_accuracy.py                   # 3 seeds, both parts
    .venv/bin/python benchmarks/time_to_accuracy.py --configs mnist-speedrun \
        fashion-mnist-speedrun --no-fashion                           # issue 17's speedruns
    .venv/bin/python benchmarks/time_to_accuracy.py --configs fashion-mnist-best --seeds 0
    .venv/bin/python benchmarks/time_to_accuracy.py --seeds 0 1 2 3 4 --threads 2
    .venv/bin/python benchmarks/time_to_accuracy.py --no-fashion --no-write

Part 1 trains each of ``--configs`` (default: ``configs/mnist-speedrun.yaml``) once per seed
and reports its fit seconds (``fit_seconds`` in metrics.json: the whole fit, validation and
checkpoints included; data loading and the final test evaluation not), the thread count dlcli
used, and the t10k test accuracy, with the median and the worst, against the config's goals
(GOALS: issue 17's, on a 2-core CPU): mnist-speedrun median >= 0.990 in <= 3.5 s, every seed
>= 0.989; fashion-mnist-speedrun median >= 0.920 in <= 60 s, every seed >= 0.918;
fashion-mnist-best >= 0.940 in <= 30 minutes.

Part 2 trains the seed Fashion-MNIST MLP (``configs/fashion-mnist-mlp.yaml``) with the
speedrun's ``lr_schedule`` and, for comparison, as shipped (constant learning rate), both with
``training.target: {metric: val_accuracy, value: 0.89}`` and ``stop_at_target: true``: the
seconds and epoch at which validation accuracy first reached 0.89.

The result is appended to ``benchmarks/RESULTS.md`` (a new dated section; earlier sections,
this script's or others', are left as they are). dlcli's processes inherit the environment, so
``OMP_WAIT_POLICY=PASSIVE python benchmarks/time_to_accuracy.py`` measures that setting (on a
busy machine, OpenMP's spin-waiting threads can make a 2-thread run many times slower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from _common import cpu_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SPEEDRUN = ROOT / "configs" / "mnist-speedrun.yaml"
FASHION = ROOT / "configs" / "fashion-mnist-mlp.yaml"


@dataclass(frozen=True)
class Goal:
    median: float  # median test accuracy at least
    worst: float | None  # every seed at least
    seconds: float  # median fit seconds at most


GOALS = {
    "mnist-speedrun": Goal(0.990, 0.989, 3.5),
    "fashion-mnist-speedrun": Goal(0.920, 0.918, 60.0),
    "fashion-mnist-best": Goal(0.940, None, 1800.0),
}
FASHION_TARGET = 0.89
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


@dataclass
class Run:
    seed: int
    fit_seconds: float
    epochs: int
    test_accuracy: float
    validation_accuracy: float
    target: dict[str, Any] | None
    threads: int | None


def train(config: Path, seed: int, out: Path, sets: list[str], threads: int | None) -> Run:
    env = {**os.environ, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "dlcli", "train", str(config), "--json", "--quiet"]
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command += ["--threads", str(threads)]
    command += ["--seed", str(seed), "--output", str(out / f"{config.stem}-{seed}")]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    doc = json.loads(done.stdout)
    return Run(
        seed,
        doc["fit_seconds"],
        doc["epochs"],
        doc["test"]["accuracy"],
        doc["validation"]["accuracy"],
        doc.get("target"),
        doc.get("threads", {}).get("count"),
    )


def speedrun(config: Path, seeds: list[int], out: Path, threads: int | None) -> list[Run]:
    runs = []
    for seed in seeds:
        run = train(config, seed, out, [], threads)
        print(
            f"{config.stem} seed {seed}: fit {run.fit_seconds:.2f} s, {run.epochs} epochs, "
            f"test accuracy {run.test_accuracy:.4f}",
            file=sys.stderr,
        )
        runs.append(run)
    return runs


def fashion(seeds: list[int], out: Path, threads: int | None) -> dict[str, list[Run]]:
    schedule = yaml.safe_load(SPEEDRUN.read_text())["training"]["lr_schedule"]
    target = [
        f"training.target={{metric: val_accuracy, value: {FASHION_TARGET}}}",
        "training.stop_at_target=true",
    ]
    variants = {
        f"one_cycle as in the speedrun ({json.dumps(schedule)}; peak: the MLP's own rate)": [
            *target,
            f"training.lr_schedule={json.dumps(schedule)}",
        ],
        "as shipped (constant learning rate)": target,
    }
    results: dict[str, list[Run]] = {}
    for label, sets in variants.items():
        results[label] = []
        for seed in seeds:
            run = train(FASHION, seed, out / f"fashion-{len(results)}", sets, threads)
            reached = run.target or {}
            print(
                f"fashion-mnist-mlp {label} seed {seed}: 0.89 reached at epoch "
                f"{reached.get('epoch')}, {reached.get('seconds')} s",
                file=sys.stderr,
            )
            results[label].append(run)
    return results


# --- the report -------------------------------------------------------------------------------


def machine(threads: int | None) -> list[str]:
    import torch

    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; GPU: {gpu}",
        f"- Python {platform.python_version()}, torch {torch.__version__}",
        f"- threads: {threads or 'auto (dlcli picks the free cores; see the threads column)'}",
        "- environment: "
        + (", ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ) or "-"),
    ]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def speedrun_lines(runs: list[Run], goal: Goal | None) -> list[str]:
    seconds = [r.fit_seconds for r in runs]
    accuracy = [r.test_accuracy for r in runs]
    med_s, med_a, worst = (
        statistics.median(seconds),
        statistics.median(accuracy),
        min(accuracy),
    )
    lines = [
        "| seed | fit seconds | threads | epochs | test accuracy | validation accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.seed} | {r.fit_seconds:.2f} | {r.threads} | {r.epochs} | "
            f"{r.test_accuracy:.4f} | {r.validation_accuracy:.4f} |"
            for r in runs
        ),
        f"| **median** | **{med_s:.2f}** | | | **{med_a:.4f}** | |",
        f"| worst | {max(seconds):.2f} | | | {worst:.4f} | |",
    ]
    if goal is None:
        return lines
    lines += [
        "",
        f"- goal median test accuracy >= {goal.median} in <= {goal.seconds:g} s median fit: "
        f"{verdict(med_a >= goal.median and med_s <= goal.seconds)} "
        f"({med_a:.4f} in {med_s:.2f} s)",
    ]
    if goal.worst is not None:
        lines.append(
            f"- goal every seed >= {goal.worst}: {verdict(worst >= goal.worst)} (worst {worst:.4f})"
        )
    return lines


def fashion_lines(results: dict[str, list[Run]]) -> list[str]:
    lines = [
        f"| schedule | seed | epoch reaching {FASHION_TARGET} | seconds to {FASHION_TARGET} | "
        "final validation accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, runs in results.items():
        for r in runs:
            target = r.target or {}
            epoch = target.get("epoch")
            seconds = target.get("seconds")
            lines.append(
                f"| {label} | {r.seed} | {epoch if epoch is not None else 'never'} | "
                f"{f'{seconds:.2f}' if seconds is not None else '-'} | "
                f"{r.validation_accuracy:.4f} |"
            )
    return lines


def section(
    args: argparse.Namespace, runs: dict[str, list[Run]], fash: dict[str, list[Run]]
) -> str:
    after = os.getloadavg()
    load = ", ".join(f"{a:.1f} → {b:.1f}" for a, b in zip(args.load_before, after, strict=True))
    command = "python benchmarks/time_to_accuracy.py --configs " + " ".join(args.configs)
    command += " --seeds " + " ".join(map(str, args.seeds))
    if args.threads:
        command += f" --threads {args.threads}"
    names = ", ".join(f"configs/{name}.yaml" for name in args.configs)
    lines = [
        f"## Time to accuracy: {names}",
        "",
        f"`{command}`: one fresh `dlcli train` process per seed; fit seconds are `fit_seconds` "
        "from metrics.json (the whole fit: every epoch's validation and checkpoint included; "
        "loading the archives and the final test evaluation not).",
        "",
        *machine(args.threads),
        f"- load average (1, 5, 15 min) before → after: {load} (other work on the machine "
        "slows the runs)",
    ]
    for name, config_runs in runs.items():
        lines += [
            "",
            f"### configs/{name}.yaml",
            "",
            *speedrun_lines(config_runs, GOALS.get(name)),
        ]
    if fash:
        lines += [
            "",
            f"### The seed Fashion-MNIST MLP: time to {FASHION_TARGET} validation accuracy",
            "",
            "configs/fashion-mnist-mlp.yaml (10 epochs, Adam 0.001, batch 100) with "
            f"`training.target: {{metric: val_accuracy, value: {FASHION_TARGET}}}` and "
            "`stop_at_target: true`, with the speedrun's one_cycle schedule and as shipped:",
            "",
            *fashion_lines(fash),
        ]
    return "\n".join(lines) + "\n"


def append_results(text: str) -> None:
    """Append a section to RESULTS.md (created with its title if missing); never rewrite."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write("\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["mnist-speedrun"],
        help="names in configs/ to measure",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fashion-seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--threads", type=int, help="--threads for dlcli (default: its auto choice)"
    )
    parser.add_argument("--no-fashion", action="store_true", help="skip the Fashion-MNIST part")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    args.load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dlcli-tta-") as tmp:
        out = Path(tmp)
        runs = {
            name: speedrun(ROOT / "configs" / f"{name}.yaml", args.seeds, out, args.threads)
            for name in args.configs
        }
        fash = {} if args.no_fashion else fashion(args.fashion_seeds, out, args.threads)
    text = section(args, runs, fash)
    print(text)
    if not args.no_write:
        append_results(text)
        print(f"appended to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
