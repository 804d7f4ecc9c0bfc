"""dlcli's training epoch as a multiple of its arithmetic: the step's own matmuls and
convolutions, timed alone in the same process.

    .venv/bin/python benchmarks/floor.py [--models mlp,cnn,speedrun] [--rounds 5] [--threads N]
                                         [--no-write]

For each model (the seed MLP and the reference CNN of ``configs/``, and ``speedrun``: the
MNIST speedrun's CNN with batch norm) the script builds the
model as dlcli does, runs one training batch through it with hooks on every ``nn.Linear`` and
``nn.Conv2d``, and records the shapes, layouts and values each one sees. The **floor** is an
epoch's worth of those layers' matmuls and convolutions (570 steps at batch 100 for the
Fashion-MNIST models), forward and
backward, called directly and without autograd: ``torch.addmm``/``torch.mm`` into
preallocated outputs, ``F.conv2d`` and ``aten.convolution_backward`` (the kernel autograd
calls), in the step's own memory layouts (dense weights input-major, channels_last
convolutions). The input gradient of the first layer is left out, as autograd leaves it out.
The floor computes in float32, and so does dlcli here (``precision: fp32``, whatever the
config says: the speedrun's ``auto`` would be bf16 on a CPU with bf16 instructions, and its
ratio would then compare a bf16 step with a float32 floor); ``--variant bf16:precision=auto``
adds the config's own precision as a contender.
Everything else a step does (bias and activation kernels, pooling, the loss, the optimizer,
metrics, Python) is what the floor does not count.
Where the model has convolutions that dlcli's fused kernel runs with their ReLU and
pooling (``training.native_kernels``, dlcli/native.py), **floor_fused** is the same floor
with that kernel (forward and backward) in place of torch's convolutions there. dlcli
computes those layers faster than torch's convolutions alone (the first on one input
channel, where oneDNN is slow; the backward only at the pooling's winners), so the plain
floor no longer bounds them; dlcli over floor_fused is reported too (a stricter floor: it
includes those layers' pooling).

**dlcli** is ``Trainer.fit`` for one epoch of the same split (no validation), with the
shipped config. The two run in alternating order, round after round; each round's ratio of
dlcli's time to the floor's is one sample, and the median of those is the figure, because a
shared machine drifts between fast and slow phases that a ratio within one round cancels.
Each extra ``--variant NAME:KEY=VALUE[,KEY=VALUE]`` is one more dlcli contender with those
``training`` keys set (e.g. ``--variant compiled:compile=true``); ``--whole-step`` adds
**whole_step_compiled**, a prototype of the step captured whole by ``torch.compile``
(:func:`whole_step`), whose compile time is reported apart.

The table is printed and written into benchmarks/RESULTS.md between this script's markers
(other sections are left alone), with the machine, the threads and the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from _common import cpu_model, write_section  # run as a script: benchmarks/ is on sys.path
from torch import nn

from dlcli import native
from dlcli.accel import to_float
from dlcli.config import load_config
from dlcli.data.dataset import Split
from dlcli.data.load import load_data
from dlcli.engine import Trainer
from dlcli.model import FusedConv, build_model, fused_layers
from dlcli.pipeline import split_train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "mlp": "fashion-mnist-mlp.yaml",
    "cnn": "fashion-mnist-cnn.yaml",
    "speedrun": "mnist-speedrun.yaml",  # issue 17's MNIST speedrun: one epoch at batch 192
}
MARKER = "<!-- floor:{tag}:{edge} -->"

Op = Callable[[], object]


# --- the floor: the step's matmuls and convolutions, without autograd -------------------------


def recorded_layers(trainer: Trainer, train: Split) -> list[tuple[nn.Module, torch.Tensor, bool]]:
    """(layer, its input, whether autograd computes that input's gradient) for every dense
    and convolution layer, in forward order, from one training batch of the Trainer's model."""
    seen: list[tuple[nn.Module, torch.Tensor, bool]] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        seen.append(
            (module, x.detach().clone(memory_format=torch.preserve_format), x.requires_grad)
        )

    layers = [m for m in trainer.model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        batch = train.images[: trainer.training.batch_size]
        trainer.model.train()
        trainer.model(trainer.channels_last.batch(to_float(batch)))  # the step's step 3
    finally:
        for handle in handles:
            handle.remove()
    return seen


def linear_ops(layer: nn.Linear, x: torch.Tensor, input_grad: bool) -> list[Op]:
    """``x @ W.T + b`` forward; ``x.T @ g`` (the weight gradient, in the input-major layout
    dlcli stores) and ``g @ W`` (the input gradient) backward: what autograd runs."""
    weight, bias = layer.weight.detach(), layer.bias
    out = torch.empty(x.shape[0], weight.shape[0])
    grad_out = torch.randn_like(out)
    grad_weight_t = torch.empty(weight.shape[1], weight.shape[0])  # (in, out), as stored
    ops: list[Op] = [
        (lambda: torch.addmm(bias.detach(), x, weight.t(), out=out))
        if bias is not None
        else (lambda: torch.mm(x, weight.t(), out=out)),
        lambda: torch.mm(x.t(), grad_out, out=grad_weight_t),
    ]
    if input_grad:
        grad_x = torch.empty_like(x)
        ops.append(lambda: torch.mm(grad_out, weight, out=grad_x))
    return ops


def conv_ops(layer: nn.Conv2d, x: torch.Tensor, input_grad: bool) -> list[Op]:
    """The convolution forward, and its weight (and input) gradient in one
    ``convolution_backward`` call, as autograd makes it; bias gradients left out."""
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    stride, padding, dilation = layer.stride, layer.padding, layer.dilation
    if isinstance(padding, str):
        raise SystemExit(f"{layer}: string padding; the recorded model should have numbers")
    with torch.no_grad():
        grad_out = torch.randn_like(layer(x))
    mask = [input_grad, True, False]
    backward = torch.ops.aten.convolution_backward
    return [
        lambda: F.conv2d(x, weight, bias, stride, padding, dilation, layer.groups),
        lambda: backward(
            grad_out, x, weight, None, stride, padding, dilation, False, [0, 0], layer.groups, mask
        ),
    ]


def fused_ops(fused: FusedConv, x: torch.Tensor, input_grad: bool) -> list[Op]:
    """dlcli's fused convolution (dlcli/native.py): its forward (the convolution, bias, ReLU
    and 2x2 max-pooling) and its backward (the weight and bias gradients, and the input's
    where the step needs it), through the one autograd node it makes."""
    x = x.detach().requires_grad_(input_grad)
    with torch.no_grad():
        grad_out = torch.randn_like(native.conv_max_pool2x2(x, fused.conv, fused.padding, False))

    def forward_backward() -> None:
        with torch.enable_grad():
            out = native.conv_max_pool2x2(x, fused.conv, fused.padding, fused.relu)
            out.backward(grad_out)

    return [forward_backward]


def floor_ops(trainer: Trainer, train: Split, fused: bool = False) -> tuple[list[Op], list[str]]:
    """The ops of one step's floor, and a line per layer saying what they are; with
    ``fused``, each convolution that dlcli's fused kernel runs with its pooling is that
    kernel."""
    ops: list[Op] = []
    described = []
    kernels = fused_layers(trainer.model) if fused and not native.unavailable() else {}
    convs = {id(kernel.conv): kernel for kernel in kernels.values()}
    for layer, x, input_grad in recorded_layers(trainer, train):
        if id(layer) in convs:
            ops += fused_ops(convs[id(layer)], x, input_grad)
            grads = (
                "weight, bias and input gradients" if input_grad else "weight and bias gradients"
            )
            described.append(
                f"(floor_fused: dlcli's fused kernel for conv2d {tuple(x.shape)} * "
                f"{tuple(layer.weight.shape)}, with its ReLU, if any, and pooling: "
                f"forward, {grads})"
            )
            continue
        if isinstance(layer, nn.Linear):
            ops += linear_ops(layer, x, input_grad)
            what = f"linear {tuple(x.shape)} x {tuple(layer.weight.shape[::-1])}"
        else:
            assert isinstance(layer, nn.Conv2d)
            ops += conv_ops(layer, x, input_grad)
            layout = "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else ""
            what = f"conv2d {tuple(x.shape)} {layout} * {tuple(layer.weight.shape)}"
        grads = "weight and input gradients" if input_grad else "weight gradient"
        described.append(f"{what}: forward, {grads}")
    return ops, described


# --- a prototype of the captured step -----------------------------------------------------


def whole_step(trainer: Trainer, train: Split, batch: int) -> tuple[Callable[[], float], float]:
    """A prototype of the step captured whole (``--whole-step``): the batch gather, forward,
    loss, backward (``torch.func.grad_and_value``), Adam's update (torch's formula, not its
    kernel: the same maths up to rounding) and the epoch's loss/accuracy sums in one
    ``torch.compile(fullgraph=True)`` function over the model dlcli builds. It is not dlcli's
    loop (no callbacks, checkpoints or resume); it shows what capturing the step gives and
    what the compile costs. Returns one epoch's runner and the first call's seconds."""
    module = trainer.model
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
    exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
    group = trainer.optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    step_count = torch.zeros(())
    sums = torch.zeros(2)  # loss * batch, correct

    def loss_of(
        p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.func.functional_call(module, p, (x,))
        return F.cross_entropy(logits, y), logits

    def step(index: torch.Tensor) -> None:
        x, y = train.images.index_select(0, index).div(255), train.labels.index_select(0, index)
        grads, (loss, logits) = torch.func.grad_and_value(loss_of, has_aux=True)(params, x, y)
        step_count.add_(1)
        correction1, correction2 = 1 - beta1**step_count, 1 - beta2**step_count
        for name, grad in grads.items():
            exp_avg[name].lerp_(grad, 1 - beta1)
            exp_avg_sq[name].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq[name].sqrt() / correction2.sqrt()).add_(eps)
            params[name].addcdiv_(exp_avg[name], denom * (correction1 / -lr))
        sums[0].add_(loss.detach() * len(y))
        sums[1].add_((logits.argmax(dim=1) == y).sum())

    compiled = torch.compile(step, fullgraph=True)
    order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    compiled(order[:batch])
    compile_seconds = time.perf_counter() - start

    def epoch() -> float:
        start = time.perf_counter()
        for index in order.split(batch):
            compiled(index)
        return time.perf_counter() - start

    return epoch, compile_seconds


# --- what the kernels cost before the first step -------------------------------------------

_KERNEL_PROBE = (
    "import time, torch\n"
    "from dlcli import native\n"
    "start = time.perf_counter()\n"
    "why = native.unavailable()\n"
    "print(time.perf_counter() - start, why or 'ok')\n"
)


def kernel_costs() -> str:
    """The one-time cost of ``training.native_kernels`` before a run's first step, in fresh
    processes with an empty cache: the build and self-test (once per machine and compiler),
    then the load and self-test from the cache (every later run)."""
    import subprocess
    import tempfile

    seconds = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", _KERNEL_PROBE],
                env={**os.environ, "DLCLI_CACHE_DIR": cache},
                capture_output=True,
                text=True,
                check=True,
            )
            took, why = done.stdout.split(maxsplit=1)
            if why.strip() != "ok":
                return f"the kernels cannot run here: {why.strip()}"
            seconds.append(float(took))
    return (
        f"{seconds[0]:.2f} s to build and self-test the kernels on a machine's first run (the "
        f"C compile, once per machine and compiler), {seconds[1]:.2f} s to load and "
        "self-test them from the cache on every later run"
    )


# --- one round --------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    """One model's contenders: name → a function that runs one epoch and returns seconds."""

    name: str
    steps: int
    layers: list[str]
    contenders: dict[str, Callable[[], float]]
    compile_seconds: float | None = None


def prepare(name: str, variants: dict[str, dict[str, Any]], *, whole: bool = False) -> Model:
    cfg = load_config(ROOT / "configs" / CONFIGS[name])
    train, _ = split_train(load_data(cfg.data, str(ROOT / "data")), cfg)
    one_epoch = dataclasses.replace(cfg.training, epochs=1, precision="fp32")  # as the floor

    def trainer(training: Any) -> Trainer:
        torch.manual_seed(cfg.training.seed)
        module = build_model(cfg.model, num_classes=10).module
        return Trainer(module, training, num_classes=10, device=torch.device("cpu"))

    def dlcli(settings: dict[str, Any]) -> Callable[[], float]:
        training = dataclasses.replace(one_epoch, **settings)

        def run() -> float:
            fitting = trainer(training)  # built outside the clock, as the CLI builds it
            start = time.perf_counter()
            fitting.fit(train, None)
            return time.perf_counter() - start

        return run

    steps = -(-len(train.labels) // cfg.training.batch_size)
    ops, layers = floor_ops(trainer(one_epoch), train)

    @torch.no_grad()
    def floor() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            for op in ops:
                op()
        return time.perf_counter() - start

    floor()  # warm: first calls pick kernels and allocate
    contenders = {"floor": floor, "dlcli": dlcli({})}
    fused_ops_, fused_layers = floor_ops(trainer(one_epoch), train, fused=True)
    if len(fused_layers) == len(layers) and fused_layers != layers:

        @torch.no_grad()
        def floor_fused() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                for op in fused_ops_:
                    op()
            return time.perf_counter() - start

        floor_fused()
        contenders["floor_fused"] = floor_fused
        layers = layers + [line for line in fused_layers if line not in layers]
    contenders |= {label: dlcli(settings) for label, settings in variants.items()}
    model = Model(name, steps, layers, contenders)
    if whole:
        epoch, model.compile_seconds = whole_step(
            trainer(one_epoch), train, cfg.training.batch_size
        )
        contenders["whole_step_compiled"] = epoch
    return model


def measure(model: Model, rounds: int) -> dict[str, list[float]]:
    """Seconds per epoch of every contender, rounds alternating in order (A B C, C B A, ...)."""
    seconds: dict[str, list[float]] = {name: [] for name in model.contenders}
    names = list(model.contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            seconds[name].append(model.contenders[name]())
            print(f"  {model.name} round {r + 1}: {name} {seconds[name][-1]:.3f} s", flush=True)
    return seconds


# --- the report -------------------------------------------------------------------------------


def table(model: Model, seconds: dict[str, list[float]]) -> list[str]:
    floors = seconds["floor"]
    lines = [
        "| model | contender | s/epoch, median | ms/step | over the floor, ms/step "
        "| vs floor (median of rounds) | range | fastest vs fastest |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    floor_step = statistics.median(floors) / model.steps * 1000
    for name, runs in seconds.items():
        ratios = [t / f for t, f in zip(runs, floors, strict=True)]
        per_step = statistics.median(runs) / model.steps * 1000
        lines.append(
            f"| {model.name} | {name} | {statistics.median(runs):.3f} | {per_step:.3f} | "
            f"{per_step - floor_step:.3f} | **{statistics.median(ratios):.2f}x** | "
            f"{min(ratios):.2f}-{max(ratios):.2f}x | {min(runs) / min(floors):.2f}x |"
        )
    return lines


def section(args: argparse.Namespace, results: list[tuple[Model, dict[str, list[float]]]]) -> str:
    after = os.getloadavg()
    load = ", ".join(f"{a:.1f} → {b:.1f}" for a, b in zip(args.load_before, after, strict=True))
    command = (
        f"python benchmarks/floor.py --models {','.join(args.models)} --rounds {args.rounds} "
        f"--threads {args.threads}" + "".join(f" --variant {v}" for v in args.variant)
    )
    lines = [
        MARKER.format(tag=args.tag, edge="begin"),
        f"## The step against its arithmetic ({args.threads} thread(s))",
        "",
        f"`{command}`: one process; each round runs every contender once, in alternating "
        "order; ratios are per round, then the median (**fastest vs fastest**: the contender's "
        "fastest round over the floor's, the least disturbed of each). **floor**: the step's "
        "own matmuls and "
        "convolutions at its shapes and layouts, forward and backward, without autograd, for "
        "the epoch's steps; **dlcli**: `Trainer.fit`, one epoch of the config's training split "
        "(Fashion-MNIST: 57,000 images at batch 100; the MNIST speedrun: 59,400 at 192), no "
        "validation, in float32 as the floor (whatever the config's precision).",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; GPU: none used",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"{args.threads} torch thread(s)",
        f"- load average (1, 5, 15 min) before → after: {load} (the machine is shared: "
        "absolute times move with the load; the per-round ratios much less)",
        "",
    ]
    for model, seconds in results:
        lines += table(model, seconds)[0 if model is results[0][0] else 2 :]
    for model, seconds in results:
        if "floor_fused" in seconds:
            ratios = [a / b for a, b in zip(seconds["dlcli"], seconds["floor_fused"], strict=True)]
            lines.append(
                f"\n{model.name}: dlcli over **floor_fused** (the floor with dlcli's fused "
                "layers in place of torch's convolutions: a stricter floor, since dlcli "
                f"computes those layers faster than torch), median of rounds: "
                f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x)"
            )
    for model, _ in results:
        if model.compile_seconds is not None:
            lines.append(
                f"\n{model.name}: `--whole-step` compile (its first call, not in the table): "
                f"{model.compile_seconds:.1f} s"
            )
    if args.kernel_costs:
        lines.append(f"\n`training.native_kernels`, before the first step: {args.kernel_costs}.")
    lines += ["", "What the floor holds, per step:", ""]
    for model, _ in results:
        lines += [f"- {model.name}: {layer}" for layer in model.layers]
    lines.append(MARKER.format(tag=args.tag, edge="end"))
    return "\n".join(lines) + "\n"


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    label, _, rest = text.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    return label, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="mlp,cnn", help="a comma-separated subset of mlp,cnn,speedrun"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE")
    parser.add_argument(
        "--whole-step", action="store_true", help="add the compiled whole-step prototype"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    args.load_before = os.getloadavg()
    args.models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in args.models if m not in CONFIGS]:
        parser.error(f"unknown model: {', '.join(unknown)}")
    args.tag = f"cpu-{args.threads}t-{'-'.join(args.models)}"
    torch.set_num_threads(args.threads)
    variants = dict(parse_variant(v) for v in args.variant)
    results = []
    for name in args.models:
        model = prepare(name, variants, whole=args.whole_step)
        results.append((model, measure(model, args.rounds)))
    args.kernel_costs = kernel_costs()
    text = section(args, results)
    print(text)
    if not args.no_write:
        edges = (MARKER.format(tag=args.tag, edge=edge) for edge in ("begin", "end"))
        write_section(ROOT / "benchmarks" / "RESULTS.md", text, *edges)
        print("written to benchmarks/RESULTS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
