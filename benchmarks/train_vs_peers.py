"""dlcli's training loop against a hand-written PyTorch loop, DataLoader code, Lightning and
Keras: the same models, data, batch size and threads, interleaved, medians of several rounds.

    .venv/bin/python benchmarks/train_vs_peers.py                     # the full run (slow)
    .venv/bin/python benchmarks/train_vs_peers.py --rounds 1 --epochs 1 --models mlp   # quick
    .venv/bin/python benchmarks/train_vs_peers.py --no-write          # print, leave RESULTS.md

Every contender trains in a fresh subprocess (so a warm-up or a leak of one cannot help or hurt
another, and each one's peak RSS is its own); dlcli runs through the real ``dlcli train`` and
reports the fit's own wall time (``fit_seconds`` in metrics.json: the epochs and the validation
pass at the end of each, nothing before or after). Every other contender times the same span:
it trains on the same 57,000 images (dlcli's seeded 95/5 split of Fashion-MNIST's train set),
evaluates the 3,000 validation images after each epoch, and tracks loss and accuracy.
Contenders run A B C … then … C B A, round after round, so slow drifts of a shared machine
fall on all of them alike. The table (medians, ratios to the hand-written loop with default
Adam) is printed and written into benchmarks/RESULTS.md between this script's markers; other
sections of that file are left alone.

Lightning and Keras are optional (``pip install -r benchmarks/requirements.txt``); a contender
whose package is missing is reported as "not installed", not silently dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import cpu_model, write_section  # run as a script: benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MARKER = "<!-- train_vs_peers:{tag}:{edge} -->"  # one section per device and thread count
CONFIGS = {
    "mlp": ROOT / "configs" / "fashion-mnist-mlp.yaml",
    "cnn": ROOT / "configs" / "fashion-mnist-cnn.yaml",
}
BATCH, EVAL_BATCH, LR, SEED = 100, 1000, 1e-3, 0

CONTENDERS: dict[str, str] = {
    "dlcli": "dlcli train (the real CLI, shipped config: a checkpoint every epoch; fit_seconds)",
    "dlcli_no_ckpt": "the same with --set training.checkpoint.every=0 (the others' work)",
    "hand": "hand-written loop, one tensor + index slicing, Adam",
    "hand_fused": "the same loop with Adam(fused=True)",
    "tensor_dataloader": "TensorDataset + DataLoader, Adam",
    "sample_dataloader": "per-sample Dataset + DataLoader, Adam",
    "lightning": "PyTorch Lightning Trainer, Adam",
    "keras": "Keras 3 on the torch backend, Adam",
}
REFERENCE = "hand"
OPTIONAL = {"lightning": "lightning", "keras": "keras"}


# --- the workers: one contender, one model, in its own process ------------------------------


class Clock:
    """Wall and CPU seconds (all of the process's threads) of a ``with`` block. CPU time is
    what a shared machine disturbs least: another process's load stretches wall time, but
    with one thread it barely changes the CPU seconds the work itself needs."""

    wall = cpu = 0.0

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def load_split(device: str) -> tuple[Any, Any, Any, Any]:
    """dlcli's own train/validation split (uint8 N×1×28×28, int64), not timed."""
    from dlcli.data.dataset import load_dataset, split

    dataset = load_dataset("fashion-mnist", ROOT / "data")
    train, validation = split(dataset.train, 0.95, seed=SEED)
    return (
        train.images.to(device),
        train.labels.to(device),
        validation.images.to(device),
        validation.labels.to(device),
    )


def torch_model(kind: str) -> Any:
    """The models of configs/fashion-mnist-{mlp,cnn}.yaml, written by hand as a user would,
    initialised as dlcli (and Keras) do: Glorot-uniform weights, zero biases, drawn layer by
    layer after ``torch.manual_seed(SEED)``, so they start from dlcli's very weights."""
    import torch
    from torch import nn

    def glorot(layer: Any) -> Any:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    torch.manual_seed(SEED)
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            glorot(nn.Linear(784, 300)),
            nn.ReLU(),
            glorot(nn.Linear(300, 100)),
            nn.ReLU(),
            glorot(nn.Linear(100, 10)),
        )
    return nn.Sequential(
        glorot(nn.Conv2d(1, 16, 3, padding=1)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        glorot(nn.Conv2d(16, 32, 3, padding=1)),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        glorot(nn.Linear(32 * 7 * 7, 128)),
        nn.ReLU(),
        nn.Dropout(0.25),
        glorot(nn.Linear(128, 10)),
    )


def run_torch_loop(kind: str, contender: str, epochs: int, device: str) -> tuple[Clock, float]:
    """Contenders 2-4: plain PyTorch. Returns (fit seconds, last epoch's train loss)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    images, labels, val_images, val_labels = load_split(device)
    torch.manual_seed(SEED)
    model = torch_model(kind).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=LR, fused=True if contender == "hand_fused" else None
    )

    class PerSample(Dataset[tuple[Any, Any]]):
        """The typical tutorial Dataset: one image at a time, scaled in __getitem__."""

        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            return images[i].float() / 255, labels[i]

    def batches(epoch: int) -> Iterator[tuple[Any, Any]]:
        if contender in ("hand", "hand_fused"):
            # dlcli's shuffle (a generator seeded per epoch), so the loss curves can be compared.
            generator = torch.Generator().manual_seed(SEED * 100_003 + epoch)
            order = torch.randperm(len(labels), generator=generator).to(device)
            for index in order.split(BATCH):
                yield images[index].float().div_(255), labels[index]
        else:
            yield from loader

    if contender == "tensor_dataloader":
        # The usual conversion to float happens once, before training (not timed).
        loader: Any = DataLoader(
            TensorDataset(images.float().div_(255), labels), batch_size=BATCH, shuffle=True
        )
    elif contender == "sample_dataloader":
        loader = DataLoader(PerSample(), batch_size=BATCH, shuffle=True)

    def fit() -> float:
        train_loss = 0.0
        for epoch in range(1, epochs + 1):  # numbered as dlcli numbers them
            model.train()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            for x, y in batches(epoch):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(dim=1) == y).sum()
                seen += len(y)
            train_loss = loss_sum.item() / seen
            model.eval()
            with torch.inference_mode():
                val_loss = torch.zeros((), device=device)
                val_correct = torch.zeros((), device=device, dtype=torch.long)
                for i in range(0, len(val_labels), EVAL_BATCH):
                    x = val_images[i : i + EVAL_BATCH].float().div_(255)
                    y = val_labels[i : i + EVAL_BATCH]
                    logits = model(x)
                    val_loss += F.cross_entropy(logits, y, reduction="sum")
                    val_correct += (logits.argmax(dim=1) == y).sum()
                _ = (val_loss.item(), val_correct.item(), correct.item())
        return train_loss

    with Clock() as clock:
        train_loss = fit()
    return clock, train_loss


def run_lightning(kind: str, epochs: int, device: str) -> tuple[Clock, float]:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    images, labels, val_images, val_labels = load_split("cpu")

    class Classifier(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch_model(kind)

        def _step(self, batch: tuple[Any, Any], prefix: str) -> Any:
            x, y = batch
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            accuracy = (logits.argmax(dim=1) == y).float().mean()
            self.log(f"{prefix}loss", loss, on_step=False, on_epoch=True)
            self.log(f"{prefix}accuracy", accuracy, on_step=False, on_epoch=True)
            return loss

        def training_step(self, batch: tuple[Any, Any], index: int) -> Any:
            return self._step(batch, "")

        def validation_step(self, batch: tuple[Any, Any], index: int) -> Any:
            return self._step(batch, "val_")

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=LR)

    torch.manual_seed(SEED)
    module = Classifier()
    train = DataLoader(
        TensorDataset(images.float().div_(255), labels), batch_size=BATCH, shuffle=True
    )
    val = DataLoader(TensorDataset(val_images.float().div_(255), val_labels), EVAL_BATCH)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with Clock() as clock:
        trainer.fit(module, train, val)
    return clock, float(trainer.callback_metrics["loss"])


def run_keras(kind: str, epochs: int, device: str) -> tuple[Clock, float]:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    from keras import layers

    images, labels, val_images, val_labels = load_split("cpu")
    # Keras wants channels-last float arrays; the conversion is data preparation, not timed.
    x = images.permute(0, 2, 3, 1).float().div_(255).numpy()
    xv = val_images.permute(0, 2, 3, 1).float().div_(255).numpy()
    y, yv = labels.numpy(), val_labels.numpy()
    keras.utils.set_random_seed(SEED)
    body: list[Any]
    if kind == "mlp":
        body = [
            layers.Flatten(),
            layers.Dense(300, activation="relu"),
            layers.Dense(100, activation="relu"),
            layers.Dense(10),
        ]
    else:
        body = [
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.25),
            layers.Dense(10),
        ]
    model = keras.Sequential([keras.Input((28, 28, 1)), *body])
    model.compile(
        optimizer=keras.optimizers.Adam(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    with Clock() as clock:
        history = model.fit(
            x, y, batch_size=BATCH, epochs=epochs, validation_data=(xv, yv), verbose=0, shuffle=True
        )
    return clock, float(history.history["loss"][-1])


def worker(contender: str, kind: str, epochs: int, threads: int, device: str) -> None:
    """Train once and print one JSON line: fit seconds, threads, last train loss."""
    import torch

    torch.set_num_threads(threads)
    if contender == "lightning":
        clock, loss = run_lightning(kind, epochs, device)
    elif contender == "keras":
        clock, loss = run_keras(kind, epochs, device)
    else:
        clock, loss = run_torch_loop(kind, contender, epochs, device)
    report = {
        "fit_seconds": clock.wall,
        "fit_cpu_seconds": clock.cpu,
        "threads": torch.get_num_threads(),
        "loss": loss,
    }
    print("RESULT " + json.dumps(report), flush=True)


# --- the parent: interleaved rounds of subprocesses -----------------------------------------


@dataclass
class Run:
    seconds: float  # fit wall seconds per epoch
    cpu: float  # fit CPU seconds per epoch (every thread of the process)
    rss_mb: float  # the process's peak resident set
    loss: float
    threads: int


# `dlcli train` exactly as its console script runs it (dlcli.cli:main), with Trainer.fit wrapped
# to also write down its CPU seconds (its wall seconds are metrics.json's fit_seconds).
DLCLI_LAUNCHER = """
import json, os, sys, time
import dlcli.engine
fit = dlcli.engine.Trainer.fit
def timed_fit(self, *args, **kwargs):
    start = time.process_time()
    try:
        return fit(self, *args, **kwargs)
    finally:
        with open(os.environ["DLCLI_BENCH_CPU"], "w") as f:
            json.dump({"fit_cpu_seconds": time.process_time() - start}, f)
dlcli.engine.Trainer.fit = timed_fit
from dlcli.cli import main
sys.argv[0] = "dlcli"
sys.exit(main())
"""


@dataclass
class Tally:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # contender -> why


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run a command; return (exit code, stdout+stderr, peak RSS in MB of that child alone)."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: leave no contender running
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    return proc.returncode, output, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def dlcli_cmd(kind: str, epochs: int, device: str, out: Path, extra: list[str]) -> list[str]:
    sets = [f"training.epochs={epochs}", *extra]
    return [
        sys.executable,
        "-c",
        DLCLI_LAUNCHER,
        "train",
        str(CONFIGS[kind]),
        *(arg for s in sets for arg in ("--set", s)),
        "--output",
        str(out),
        "--overwrite",
        "--device",
        device,
        "--quiet",
        "--json",
    ]


def measure(
    contender: str, kind: str, args: argparse.Namespace, env: dict[str, str], tmp: Path
) -> Run:
    if contender.startswith("dlcli"):
        out = tmp / f"run-{kind}"
        extra = [*args.dlcli_set]
        if contender == "dlcli_no_ckpt":
            extra.append("training.checkpoint.every=0")
        cpu_file = tmp / "fit_cpu.json"
        env = {**env, "DLCLI_BENCH_CPU": str(cpu_file)}
        code, output, rss = run_child(dlcli_cmd(kind, args.epochs, args.device, out, extra), env)
        if code != 0:
            raise SystemExit(f"dlcli train failed ({code}):\n{output}")
        metrics = json.loads((out / "metrics.json").read_text())
        cpu = json.loads(cpu_file.read_text())["fit_cpu_seconds"]
        return Run(
            metrics["fit_seconds"] / args.epochs,
            cpu / args.epochs,
            rss,
            float(metrics["train"]["loss"]),
            args.threads,  # through OMP_NUM_THREADS/MKL_NUM_THREADS, as the workers
        )
    cmd = [sys.executable, __file__, "--worker", contender, "--models", kind]
    cmd += ["--epochs", str(args.epochs), "--threads", str(args.threads), "--device", args.device]
    code, output, rss = run_child(cmd, env)
    found = re.search(r"^RESULT (.*)$", output, re.M)
    if code != 0 or found is None:
        raise SystemExit(f"{contender} ({kind}) failed ({code}):\n{output[-3000:]}")
    result = json.loads(found.group(1))
    return Run(
        result["fit_seconds"] / args.epochs,
        result["fit_cpu_seconds"] / args.epochs,
        rss,
        result["loss"],
        result["threads"],
    )


def available(contenders: list[str]) -> tuple[list[str], dict[str, str]]:
    present, missing = [], {}
    for name in contenders:
        package = OPTIONAL.get(name)
        if package is None:
            present.append(name)
            continue
        try:
            metadata.version(package)
            present.append(name)
        except metadata.PackageNotFoundError:
            missing[name] = (
                f"not installed (pip install -r benchmarks/requirements.txt to add {package})"
            )
    return present, missing


def benchmark(args: argparse.Namespace) -> Tally:
    contenders, missing = available(args.contenders)
    for name, why in missing.items():
        print(f"{name}: {why}", file=sys.stderr)
    tally = Tally(missing=missing)
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, KERAS_BACKEND="torch")
    env.setdefault("PYTHONPATH", str(ROOT))
    with tempfile.TemporaryDirectory(prefix="dlcli-bench-") as tmp:
        for round_ in range(args.rounds):
            # A B C … then … C B A: drifts of a shared machine fall on every contender alike.
            order = contenders if round_ % 2 == 0 else contenders[::-1]
            for kind in args.models:
                for name in order:
                    run = measure(name, kind, args, env, Path(tmp))
                    tally.runs.setdefault((kind, name), []).append(run)
                    print(
                        f"round {round_ + 1}/{args.rounds} {kind:<3} {name:<18} "
                        f"{run.seconds:7.3f} s/epoch  cpu {run.cpu:7.3f} s  "
                        f"rss {run.rss_mb:6.0f} MB  "
                        f"loss {run.loss:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
    return tally


# --- the extras: load, evaluate, memory, start-up --------------------------------------------


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup_times(repeat: int) -> dict[str, Any]:
    """``dlcli --help`` and ``dlcli download fashion-mnist`` (files present) wall times, and
    whether either imports torch (``python -X importtime``)."""
    script = Path(sys.executable).with_name("dlcli")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "dlcli"]
    # As after a normal install: bytecode cached (in a temporary prefix, not in the tree),
    # even where PYTHONDONTWRITEBYTECODE is set.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dlcli-pycache-") as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        for label, argv in (
            ("dlcli --help", ["--help"]),
            ("dlcli download fashion-mnist", ["download", "fashion-mnist", "--quiet"]),
        ):

            def call(argv: list[str] = argv) -> None:
                subprocess.run(
                    [*launcher, *argv], cwd=ROOT, env=env, capture_output=True, check=True
                )

            call()  # writes the bytecode cache
            results[label] = {"seconds": median_time(call, repeat)}
            results[label]["imports_torch"] = imports_torch(argv, env)
    return results


def imports_torch(argv: list[str], env: dict[str, str]) -> bool:
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dlcli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    modules = {line.split("|")[-1].strip() for line in probe.stderr.splitlines()}
    return "torch" in modules


def evaluate_throughput(kind: str, threads: int, repeat: int) -> dict[str, float]:
    """Images per second of dlcli's Trainer.evaluate on the 10,000 test images (in process)."""
    import torch

    from dlcli.config import load_config
    from dlcli.data.dataset import load_dataset
    from dlcli.engine import Trainer
    from dlcli.model import build_model

    torch.set_num_threads(threads)
    cfg = load_config(CONFIGS[kind])
    cfg.training.device = "cpu"
    test = load_dataset("fashion-mnist", ROOT / "data").test
    torch.manual_seed(SEED)
    trainer = Trainer(
        build_model(cfg.model, 10).module, cfg.training, num_classes=10, device=torch.device("cpu")
    )
    trainer.evaluate(test)  # warm-up
    seconds = median_time(lambda: trainer.evaluate(test), repeat)
    return {"seconds": seconds, "images_per_second": len(test) / seconds}


def load_times() -> str:
    """benchmarks/load_data.py's own report (the data engineer's benchmark)."""
    script = ROOT / "benchmarks" / "load_data.py"
    if not script.exists():
        return "benchmarks/load_data.py not found"
    done = subprocess.run(
        [sys.executable, str(script), "--repeat", "5"], cwd=ROOT, capture_output=True, text=True
    )
    return (done.stdout + done.stderr).strip()


# --- the report -------------------------------------------------------------------------------


def machine(threads: int) -> list[str]:
    import torch

    cpu = cpu_model()
    versions = []
    for package in ("torch", "lightning", "keras"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; GPU: {gpu}",
        f"- Python {platform.python_version()}, {', '.join(versions)}",
        f"- torch threads: {threads} for every contender (torch.set_num_threads in the workers, "
        f"OMP_NUM_THREADS/MKL_NUM_THREADS for dlcli's process)",
    ]


def table(tally: Tally, args: argparse.Namespace) -> list[str]:
    lines = [
        "| model | contender | wall s/epoch, median | min | vs hand | CPU s/epoch, median "
        "| vs hand | peak RSS MB | vs hand | train loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in args.models:
        ref = tally.runs.get((kind, REFERENCE), [])
        for name in args.contenders:
            if name in tally.missing:
                lines.append(f"| {kind} | {name} | {tally.missing[name]} | | | | | | | |")
                continue
            runs = tally.runs.get((kind, name), [])
            if not runs:
                continue
            wall, cpu, rss = (median(runs, key) for key in ("seconds", "cpu", "rss_mb"))
            lines.append(
                f"| {kind} | {name} | {wall:.3f} | {min(r.seconds for r in runs):.3f} | "
                f"{ratio(wall, median(ref, 'seconds'))} | {cpu:.3f} | "
                f"{ratio(cpu, median(ref, 'cpu'))} | {rss:.0f} | "
                f"{ratio(rss, median(ref, 'rss_mb'))} | {median(runs, 'loss'):.4f} |"
            )
    return lines


def median(runs: list[Run], key: str) -> float:
    return statistics.median(getattr(r, key) for r in runs) if runs else float("nan")


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference == reference and reference else "-"


def section(tally: Tally, extras: dict[str, Any], args: argparse.Namespace) -> str:
    after = os.getloadavg()
    load = ", ".join(f"{a:.1f} → {b:.1f}" for a, b in zip(args.load_before, after, strict=True))
    lines = [
        MARKER.format(tag=args.tag, edge="begin"),
        f"## Training speed ({', '.join(args.models)}; {args.device}, {args.threads} thread(s)): "
        "dlcli vs a hand-written loop, DataLoaders, Lightning, Keras",
        "",
        f"`python benchmarks/train_vs_peers.py --models {','.join(args.models)} "
        f"--rounds {args.rounds} --epochs {args.epochs} --threads {args.threads} "
        f"--device {args.device}`. Fashion-MNIST, the 57,000-image training split, batch {BATCH}, "
        f"validation (3,000 images) evaluated after every epoch by every contender; each run a "
        f"fresh process, contenders interleaved (A B C … C B A), {args.rounds} rounds of "
        f"{args.epochs} epoch(s). Wall: the fit's wall seconds per epoch (dlcli: `fit_seconds` "
        "from metrics.json); CPU: the CPU seconds of the same span, every thread of the process "
        "(dlcli: its real CLI entry point with Trainer.fit wrapped to record them) — with one "
        "thread, the measure a busy machine disturbs least. Medians over rounds; ratios are to "
        "the hand-written loop with default Adam. Peak RSS is the whole process's (dlcli's "
        "includes the test evaluation and the save). The PyTorch contenders start from dlcli's "
        "very weights (Glorot-uniform, same seed) and the hand loops shuffle as dlcli does, so "
        "their train loss matches dlcli's up to float rounding (unfused Adam drifts in the "
        "4th digit over 1,000 steps); the DataLoaders shuffle their own way, Keras draws its "
        "own weights.",
        "",
        *machine(args.threads),
        f"- load average (1, 5, 15 min) before → after: {load}; other work on the machine "
        "slows every contender, and the interleaving spreads it over all of them",
        "",
        *table(tally, args),
        "",
        *(f"- {CONTENDERS[name]}: **{name}**" for name in args.contenders),
    ]
    if args.dlcli_set:
        lines.append(f"- dlcli overrides: {' '.join('--set ' + s for s in args.dlcli_set)}")
    if extras:
        lines += ["", "### Also measured", ""]
        for label, value in extras.get("startup", {}).items():
            torch_note = "imports torch" if value["imports_torch"] else "no torch import"
            lines.append(f"- `{label}`: {value['seconds']:.3f} s (median), {torch_note}")
        for kind, value in extras.get("evaluate", {}).items():
            lines.append(
                f"- evaluate ({kind}, 10,000 test images, batch 1000, in process): "
                f"{value['images_per_second']:,.0f} images/s ({value['seconds']:.3f} s)"
            )
        if "load" in extras:
            lines += ["- archive load (benchmarks/load_data.py):", "", "```", extras["load"], "```"]
    lines.append(MARKER.format(tag=args.tag, edge="end"))
    return "\n".join(lines) + "\n"


def write_results(text: str, tag: str) -> None:
    """Replace this run's section of RESULTS.md (between its markers), or append it."""
    begin, end = (MARKER.format(tag=tag, edge=edge) for edge in ("begin", "end"))
    write_section(RESULTS, text, begin, end)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--models", default="mlp,cnn", help="mlp,cnn or one of them")
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help=f"among {', '.join(CONTENDERS)}"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--dlcli-set", action="append", default=[], metavar="KEY=VALUE", help="dlcli --set"
    )
    parser.add_argument("--no-extras", action="store_true", help="skip load/evaluate/start-up")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()
    args.models = [m for m in args.models.split(",") if m]
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.tag = f"{args.device}-{args.threads}t-{'-'.join(args.models)}"
    unknown = [m for m in args.models if m not in CONFIGS]
    unknown += [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown model or contender: {', '.join(unknown)}")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args.worker, args.models[0], args.epochs, args.threads, args.device)
        return
    # SIGTERM as Ctrl-C: stop the contender running now too (see run_child).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tally = benchmark(args)
    extras: dict[str, Any] = {}
    if not args.no_extras:
        extras["startup"] = startup_times(repeat=7)
        extras["evaluate"] = {k: evaluate_throughput(k, args.threads, 7) for k in args.models}
        extras["load"] = load_times()
    text = section(tally, extras, args)
    print(text)
    if not args.no_write:
        write_results(text, args.tag)
        print(f"written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
