"""dlcli's training loop against hand-written loops, in one process: a paired A/B for changes
to the loop (the full, subprocess-per-contender comparison is train_vs_peers.py).

    .venv/bin/python benchmarks/loop_ab.py [--model mlp|cnn] [--rounds N] [--threads T]

Each round trains one epoch of Fashion-MNIST (the 57,000-image split, batch 100, then the
3,000 validation images) with dlcli's Trainer and with train_vs_peers.py's hand-written loops
(default and fused Adam), in alternating order, and records each one's time over the
default-Adam loop's in that round. Shared machines drift between fast and slow phases; a
ratio within one round cancels most of that, so the median of the per-round ratios is what
to compare between two versions of the code. It prints the ratios and writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from train_vs_peers import run_torch_loop  # run as a script: benchmarks/ is on sys.path

from dlcli.config import load_config
from dlcli.data.load import load_data
from dlcli.engine import Trainer
from dlcli.model import build_model
from dlcli.pipeline import split_train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"mlp": "fashion-mnist-mlp.yaml", "cnn": "fashion-mnist-cnn.yaml"}


def contenders(model: str) -> dict[str, Callable[[], float]]:
    """name → a function that trains one epoch (and validates) and returns its seconds."""
    cfg = load_config(ROOT / "configs" / CONFIGS[model])
    train, validation = split_train(load_data(cfg.data, str(ROOT / "data")), cfg)
    one_epoch = dataclasses.replace(cfg.training, epochs=1)

    def dlcli() -> float:
        torch.manual_seed(cfg.training.seed)
        module = build_model(cfg.model, num_classes=10).module
        trainer = Trainer(module, one_epoch, num_classes=10, device=torch.device("cpu"))
        start = time.perf_counter()
        trainer.fit(train, validation)
        return time.perf_counter() - start

    def hand(contender: str) -> Callable[[], float]:
        return lambda: run_torch_loop(model, contender, 1, "cpu")[0].wall

    return {"hand": hand("hand"), "hand_fused": hand("hand_fused"), "dlcli": dlcli}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="mlp")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = contenders(args.model)
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        took = {name: runs[name]() for name in order}
        for name in runs:
            seconds[name].append(took[name])
            ratios[name].append(took[name] / took["hand"])
    print(f"{args.model}, {args.threads} thread(s), {args.rounds} rounds of one epoch")
    print(f"{'contender':12s} {'median s':>9s} {'ratio to hand (median of rounds)':>34s}  range")
    for name in runs:
        low, high = min(ratios[name]), max(ratios[name])
        print(
            f"{name:12s} {statistics.median(seconds[name]):9.3f} "
            f"{statistics.median(ratios[name]):34.3f}  {low:.3f}-{high:.3f}"
        )


if __name__ == "__main__":
    main()
