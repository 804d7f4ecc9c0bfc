"""dlcli's compiled 2x2 max-pooling (dlcli/native.py, dlcli/kernels.c): the same bits as
torch's pooling, used where it applies, torch's pooling (and a reason) where it cannot; and
how the kernels are built, cached and trusted. The fused first convolution:
tests/test_native_conv.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from in_process import resumed_run_metrics, write_run_config
from safetensors.torch import load_file as load
from torch import nn

from dlcli import atomic, native
from dlcli.cli import cli
from dlcli.config import parse_config
from dlcli.model import Layers, build_model, native_pooling

pytestmark = pytest.mark.usefixtures("native_kernels")


def _maps(shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    """NHWC float maps: random, with ties (a few integer values), or with NaN, infinities
    and signed zeros among the ties."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(shape, generator=generator)
    else:
        x = torch.randint(-2, 3, shape, generator=generator).float()
    if kind == "special":
        flat = x.view(-1)
        flat[torch.randperm(flat.numel(), generator=generator)[: flat.numel() // 6]] = float("nan")
        flat[torch.randperm(flat.numel(), generator=generator)[: flat.numel() // 6]] = -float("inf")
        flat[torch.randperm(flat.numel(), generator=generator)[: flat.numel() // 6]] = -0.0
    return x.contiguous(memory_format=torch.channels_last)


def _run(
    x: torch.Tensor, grad: torch.Tensor, relu: bool, ours: bool, planar: bool = False
) -> list[torch.Tensor]:
    leaf = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
    if ours:
        assert native.takes(leaf)
        out = native.max_pool2x2(leaf, relu, planar)
        assert (
            out.is_contiguous() if planar else out.is_contiguous(memory_format=torch.channels_last)
        )
    else:
        out = nn.functional.max_pool2d(leaf, 2)
        out = torch.relu(out) if relu else out
    out.backward(grad)
    assert leaf.grad is not None
    return [out.detach(), leaf.grad]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns, NaN as one pattern (torch and the kernel keep the input's NaN; the
    test does not depend on it)."""
    t = t.contiguous()
    bits = torch.int16 if t.dtype == torch.bfloat16 else torch.int32
    return t.masked_fill(t.isnan(), float("nan")).view(bits)


@pytest.mark.parametrize(
    "shape", [(1, 8, 2, 2), (3, 8, 7, 9), (2, 16, 28, 28), (4, 32, 14, 14), (2, 24, 5, 6)]
)
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("planar", [False, True])  # NCHW out, for a flatten after it
def test_the_same_bits_as_torch(
    shape: tuple[int, ...], kind: str, relu: bool, dtype: torch.dtype, planar: bool
) -> None:
    for seed in range(3):
        x = _maps(shape, kind, seed).to(dtype)
        pooled = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
        grad = torch.randn(pooled, generator=torch.Generator().manual_seed(seed + 10))
        grad.view(-1)[::4] = -0.0  # a signed zero reaching a winner: torch's 0.0 + g is +0.0
        layout = torch.contiguous_format if planar else torch.channels_last
        grad = grad.to(dtype).contiguous(memory_format=layout)
        ours, theirs = _run(x, grad, relu, True, planar), _run(x, grad, relu, False)
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype == dtype
            assert torch.equal(_bits(a), _bits(b))
        assert ours[1].is_contiguous(memory_format=torch.channels_last)  # the input's gradient


def test_a_gradient_in_another_layout_is_taken() -> None:
    x = _maps((2, 8, 6, 6), "random", 0)
    grad = torch.randn(2, 8, 3, 3)  # contiguous (NCHW), not channels_last
    ours, theirs = _run(x, grad, True, True), _run(x, grad, True, False)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_no_double_backward() -> None:
    """A second derivative through the kernel is an error, never a silent zero."""
    leaf = _maps((1, 8, 4, 4), "random", 0).requires_grad_()
    out = native.max_pool2x2(leaf, True)
    outer = torch.ones_like(out).requires_grad_()  # a gradient that is itself differentiated
    (grad,) = torch.autograd.grad(out, leaf, grad_outputs=outer, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_what_it_takes() -> None:
    x = _maps((2, 8, 4, 4), "random", 0)
    assert native.takes(x)
    assert not native.takes(x.double())
    assert native.takes(x.to(torch.bfloat16))
    assert not native.takes(x.half())
    assert not native.takes(x.contiguous())  # NCHW
    assert not native.takes(_maps((2, 12, 4, 4), "random", 0))  # channels not a multiple of 8
    assert not native.takes(_maps((2, 8, 1, 4), "random", 0))  # no 2x2 window
    assert not native.takes(torch.empty(2, 0, 4, 4))  # no channels
    assert not native.takes(x[:, :, :, :3])  # a view that is not dense NHWC
    assert native.pools(nn.MaxPool2d(2))
    assert native.pools(nn.MaxPool2d((2, 2), stride=(2, 2)))
    for other in (
        nn.MaxPool2d(2, stride=1),
        nn.MaxPool2d(3, stride=2),
        nn.MaxPool2d(2, padding=1),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.MaxPool2d(2, dilation=2),
        nn.MaxPool2d(2, return_indices=True),
        nn.AvgPool2d(2),
    ):
        assert not native.pools(other), other


@pytest.fixture
def pooling_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No convolution fused with its pooling (test_native_conv.py tests those): the pooling
    kernel alone, the same bits as torch's."""
    monkeypatch.setattr(native, "convolves", lambda conv: False)


def _cnn(batch_norm: bool, channels: int = 5) -> Any:
    """A CNN with both uses: a conv whose ReLU moves after the pooling (fused in the
    kernel), and a pooling of its own before batch norm and a ReLU layer (the speedruns)."""
    layers: list[dict[str, Any]] = [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 16, "kernel_size": 3},
        {"type": "max_pool2d", "pool_size": 2},
        *([{"type": "batch_norm"}] if batch_norm else []),
        {"type": "activation", "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ]  # fmt: skip
    raw = {
        "data": {"dataset": "mnist"},
        "model": {"input_shape": [15, 15, channels], "layers": layers},
    }
    torch.manual_seed(0)
    module = build_model(parse_config(raw).model, 10).module
    return module.to(memory_format=torch.channels_last)  # as dlcli trains a CNN


def _step(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    out = module(x)
    nn.functional.cross_entropy(out, torch.arange(len(x)) % 10).backward()
    return [out.detach()] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _counting(monkeypatch: pytest.MonkeyPatch, planar: list[bool] | None = None) -> list[bool]:
    """Record each call of the kernel: its relu flag (and its planar flag in ``planar``)."""
    calls: list[bool] = []
    kernel = native.max_pool2x2

    def counted(x: torch.Tensor, relu: bool, flat: bool = False) -> torch.Tensor:
        calls.append(relu)
        if planar is not None:
            planar.append(flat)
        return kernel(x, relu, flat)

    monkeypatch.setattr(native, "max_pool2x2", counted)
    return calls


@pytest.mark.usefixtures("pooling_alone")
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("data", ["random", "blank"])
def test_a_model_trains_to_the_same_bits(
    batch_norm: bool, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _cnn(batch_norm)
    module.train()
    x = torch.randn(6, 5, 15, 15) if data == "random" else torch.zeros(6, 5, 15, 15)
    x = x.contiguous(memory_format=torch.channels_last)
    plain = _step(module, x)
    calls = _counting(monkeypatch)
    native_pooling(module, True)
    fast = _step(module, x)
    assert calls == [True, False]  # both poolings ran the kernel, the first with its ReLU
    assert len(fast) == len(plain)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


@pytest.mark.usefixtures("pooling_alone")
def test_under_bf16_autocast_too(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _cnn(True)
    module.train()
    x = torch.randn(6, 5, 15, 15).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _step(module, x)
        calls = _counting(monkeypatch)
        native_pooling(module, True)
        fast = _step(module, x)
    assert calls == [True, False]
    assert plain[0].dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


@pytest.mark.usefixtures("pooling_alone")
def test_not_in_evaluation_without_gradients_or_when_hooked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _cnn(False)
    native_pooling(module, True)
    assert all(m.native_pooling for m in module.modules() if isinstance(m, Layers))
    calls = _counting(monkeypatch)
    x = torch.randn(2, 5, 15, 15).contiguous(memory_format=torch.channels_last)
    module.eval()
    module(x)
    module.train()
    with torch.no_grad():
        module(x)
    assert calls == []
    seen: list[tuple[int, ...]] = []
    hook = module[1].register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape)))
    module(x)
    assert calls == [False] and seen == [(2, 8, 7, 7)]  # the hooked pooling ran as torch's
    hook.remove()
    everywhere = torch.nn.modules.module.register_module_forward_hook(lambda m, i, out: None)
    module(x)
    everywhere.remove()
    assert calls == [False]
    native_pooling(module, False)
    module(x)
    assert calls == [False]
    native_pooling(module, True)
    module(x)
    assert calls == [False, True, False]


def test_why_not() -> None:
    cpu = torch.device("cpu")
    settings: dict[str, Any] = {"enabled": True, "device": cpu, "compiled": False}
    assert native.why_not(**settings, precision="fp32") == ""
    assert native.why_not(**settings, precision="bf16") == ""
    assert native.why_not(**settings, precision="fp16") == "the run computes in fp16"
    assert "off" in native.why_not(**{**settings, "enabled": False}, precision="fp32")
    assert "compile" in native.why_not(**{**settings, "compiled": True}, precision="fp32")
    cuda = {**settings, "device": torch.device("cuda")}
    assert native.why_not(**cuda, precision="fp32") == "the device is cuda"


def test_a_failed_self_test_means_torchs_pooling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_agrees", lambda x, grad, relu, planar: False)
    assert native.unavailable() == "the compiled kernel failed its self-test against torch"
    assert not native.takes(_maps((2, 8, 4, 4), "random", 0))


# --- building it: in fresh processes, each with its own cache ------------------------------

_PROBE = textwrap.dedent(
    """
    import torch
    from dlcli import native
    print("WHY:" + native.unavailable())
    """
)


def _probe(tmp_path: Path, umask: int = 0o022, **env: str) -> str:
    """``native.unavailable()`` in a new process with the cache in ``tmp_path/cache``."""
    environ = {**os.environ, "DLCLI_CACHE_DIR": str(tmp_path / "cache"), **env}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        umask=umask,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("WHY:", 1)[1].strip()


def _logging_compiler(tmp_path: Path, exit_code: int | None = None) -> Path:
    """A ``cc`` that logs each compile, then runs the real one (or fails with exit_code)."""
    real = native._compiler()
    script = tmp_path / "cc"
    run = f"exit {exit_code}" if exit_code is not None else f'exec "{real}" "$@"'
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) exec "{real}" --version;; esac\n'
        f'echo "$@" >> "{tmp_path}/compiles.log"\n'
        f"{run}\n"
    )
    script.chmod(0o755)
    return script


def test_built_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    cc = _logging_compiler(tmp_path)
    assert _probe(tmp_path, CC=str(cc)) == ""
    assert _probe(tmp_path, CC=str(cc)) == ""
    compiles = (tmp_path / "compiles.log").read_text().splitlines()
    assert len(compiles) == 1 and "-march=native" in compiles[0]
    built = list((tmp_path / "cache" / "kernels").iterdir())
    assert [p.suffix for p in built] == [".so"]  # no temporary file left behind


def test_built_once_whatever_the_umask(tmp_path: Path) -> None:
    cc = _logging_compiler(tmp_path)
    assert _probe(tmp_path, umask=0o002, CC=str(cc)) == ""
    assert _probe(tmp_path, umask=0o002, CC=str(cc)) == ""
    assert len((tmp_path / "compiles.log").read_text().splitlines()) == 1
    (built,) = (tmp_path / "cache" / "kernels").iterdir()
    assert built.stat().st_mode & 0o777 == 0o755


def test_a_library_others_can_write_is_neither_loaded_nor_replaced(tmp_path: Path) -> None:
    cc = _logging_compiler(tmp_path)
    assert _probe(tmp_path, CC=str(cc)) == ""
    (built,) = (tmp_path / "cache" / "kernels").iterdir()
    built.chmod(0o777)  # anyone could have put something else there
    before = built.read_bytes()
    assert _probe(tmp_path, CC=str(cc)) == ""  # built again, in a folder of its own
    assert len((tmp_path / "compiles.log").read_text().splitlines()) == 2
    assert built.read_bytes() == before and built.stat().st_mode & 0o777 == 0o777
    assert list((tmp_path / "cache" / "kernels").iterdir()) == [built]


def test_a_cache_folder_others_can_write_is_not_used(tmp_path: Path) -> None:
    shared = tmp_path / "cache" / "kernels"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    cc = _logging_compiler(tmp_path)
    assert _probe(tmp_path, CC=str(cc)) == ""
    assert _probe(tmp_path, CC=str(cc)) == ""
    assert len((tmp_path / "compiles.log").read_text().splitlines()) == 2  # never cached there
    assert not list(shared.iterdir())


def test_no_compiler_means_torchs_pooling_and_says_why(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    why = _probe(tmp_path, CC="", PATH=str(empty))
    assert why.startswith("no C compiler found")


def test_a_failing_compiler_means_torchs_pooling_and_says_why(tmp_path: Path) -> None:
    cc = _logging_compiler(tmp_path, exit_code=3)
    why = _probe(tmp_path, CC=str(cc))
    assert why.startswith(f"the kernel did not compile with {cc}")
    assert len((tmp_path / "compiles.log").read_text().splitlines()) == 3  # each set of flags
    assert not list((tmp_path / "cache" / "kernels").iterdir())  # nothing half-written


@pytest.mark.parametrize("stop", ["interrupt", "timeout", "exit 3"])
def test_a_compile_that_fails_or_is_interrupted_leaves_no_temporary_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    """Ctrl-C or the timeout while the compiler ran left its half-written output,
    ``.kernels-<hash>.so.<pid>.tmp``, in the kernels folder for ever."""

    def compiler(command: list[str], **kwargs: Any) -> Any:
        Path(command[command.index("-o") + 1]).write_bytes(b"half a library")
        if stop == "interrupt":
            raise KeyboardInterrupt
        if stop == "timeout":
            raise subprocess.TimeoutExpired(command, 1)
        return subprocess.CompletedProcess(command, 3, "", "error: no")

    monkeypatch.setattr(native.subprocess, "run", compiler)
    target = tmp_path / f"kernels-{'0' * 20}.so"
    if stop == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            native._compile("cc", [], target)
    else:
        assert native._compile("cc", [], target) != ""
    assert list(tmp_path.iterdir()) == []


def test_a_library_that_cannot_be_put_in_place_means_torchs_pooling_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chmod or the rename of the compiled library failing (a folder turned read-only, a full
    disk) escaped as an OSError's traceback: torch's pooling runs instead, with the reason."""

    def compiler(command: list[str], **kwargs: Any) -> Any:
        Path(command[command.index("-o") + 1]).write_bytes(b"a library")
        return subprocess.CompletedProcess(command, 0, "", "")

    def full(source: Any, target: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_compiler", lambda: "cc")
    monkeypatch.setattr(native, "_version_of", lambda compiler: "cc 1.0")
    monkeypatch.setattr(native, "_folder", lambda: tmp_path)
    monkeypatch.setattr(native.subprocess, "run", compiler)
    monkeypatch.setattr(native.os, "replace", full)
    why = native.unavailable()
    assert why == f"the compiled kernel cannot be put in {tmp_path}: no space left on the device"
    assert list(tmp_path.iterdir()) == []  # the temporary library removed


def test_builds_no_process_uses_are_removed_and_those_in_use_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kernels/ kept every kernels-<hash>.so a former dlcli, compiler or flag set built. A
    build unused for 30 days is removed now, unless a process holds it (its shared lock): one
    loaded by a running dlcli, or recently used, or not named as dlcli names its builds, stays.
    """
    import fcntl

    def compiler(command: list[str], **kwargs: Any) -> Any:
        Path(command[command.index("-o") + 1]).write_bytes(b"a library")
        return subprocess.CompletedProcess(command, 0, "", "")

    month = 31 * 86400

    def made(name: str, age_s: float) -> Path:
        path = tmp_path / name
        path.write_bytes(b"an older library")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    unused = made(f"kernels-{'a' * 20}.so", month)
    in_use = made(f"kernels-{'b' * 20}.so", month)  # another dlcli process has it loaded
    recent = made(f"kernels-{'c' * 20}.so", 86400)  # another version's, used yesterday
    users = made("kernels-mine.so", month)
    holder = os.open(in_use, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    monkeypatch.setattr(native, "_held", [])
    monkeypatch.setattr(native, "_compiler", lambda: "cc")
    monkeypatch.setattr(native, "_version_of", lambda compiler: "cc 1.0")
    monkeypatch.setattr(native, "_folder", lambda: tmp_path)
    monkeypatch.setattr(native.subprocess, "run", compiler)
    monkeypatch.setattr(native, "_open", lambda path: path)
    try:
        built = native._load()
    finally:
        os.close(holder)
    assert isinstance(built, Path) and built.parent == tmp_path
    assert not unused.exists()
    assert sorted(tmp_path.iterdir()) == sorted([built, in_use, recent, users])
    # Its own build is held while the process lives: another process's cleaner keeps it.
    os.utime(built, (time.time() - month, time.time() - month))
    removed = atomic.remove_abandoned(tmp_path, native._BUILD_NAME, month - 60, unless_locked=True)
    assert removed == [in_use.name] and built.exists()  # in_use is held no more
    for fd in native._held:
        os.close(fd)


def test_a_temporary_library_a_killed_compile_left_is_removed_once_an_hour_old(
    tmp_path: Path,
) -> None:
    kernels = tmp_path / "cache" / "kernels"
    kernels.mkdir(parents=True)
    kernels.chmod(0o755)

    def made(name: str, age_s: float) -> Path:
        path = kernels / name
        path.write_bytes(b"half a library")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    abandoned = made(f".kernels-{'a' * 20}.so.4242.tmp", 3700)
    fresh = made(f".kernels-{'b' * 20}.so.4243.tmp", 60)  # maybe another process's, compiling
    users = made(f"kernels-{'a' * 20}.so.4242.tmp", 7200)
    _probe(tmp_path, CC=str(_logging_compiler(tmp_path, exit_code=3)))
    assert not abandoned.exists()
    assert fresh.exists() and users.exists()


# --- in a training run ---------------------------------------------------------------------

_CONV = {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"}
_POOLED = [
    _CONV,
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "flatten"},
    {"type": "dense", "units": 4},
]
# The pooling after a second convolution (on 8 channels: the fused kernel for feature maps).
_POOLED_LATER = [_CONV, *_POOLED]


def _train(
    folder: Path, name: str, layers: list[dict[str, Any]] = _POOLED_LATER, **training: Any
) -> tuple[str, bytes, dict[str, Any]]:
    """Train ``layers`` for 2 epochs with ``training`` through the CLI: what it said, the saved
    weights' bytes and metrics.json."""
    config = write_run_config(folder, layers=layers, name=name, epochs=2, **training)
    result = CliRunner().invoke(cli, ["train", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = folder / "runs" / name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return result.output, (run_dir / "model.safetensors").read_bytes(), metrics


@pytest.mark.usefixtures("pooling_alone")
def test_a_run_trains_to_the_same_weights_with_the_kernel_or_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planar: list[bool] = []
    calls = _counting(monkeypatch, planar)
    said, fast, metrics = _train(tmp_path, "native")
    assert calls and all(calls)  # the kernel ran, with the conv's ReLU
    assert all(planar)  # and wrote NCHW memory for the flatten after it
    assert "native_kernels" not in said and metrics["max_pooling"] == "dlcli"
    assert "conv_pooling" not in metrics  # the first convolution is not followed by pooling
    del calls[:]
    said, plain, metrics = _train(tmp_path, "torch", native_kernels=False)
    assert not calls and "native_kernels" not in said and metrics["max_pooling"] == "torch"
    assert fast == plain


@pytest.mark.parametrize("layers", [_POOLED, _POOLED_LATER], ids=["first", "later"])
def test_a_run_with_the_fused_convolution_trains_as_with_torchs(
    tmp_path: Path, layers: list[dict[str, Any]]
) -> None:
    """Not the same bits (the convolution's sums run in another order), the same training."""
    said, fast, fused = _train(tmp_path, "native", layers)
    assert "native_kernels" not in said
    assert fused["conv_pooling"] == fused["max_pooling"] == "dlcli"
    said, plain, metrics = _train(tmp_path, "torch", layers, native_kernels=False)
    assert metrics["conv_pooling"] == metrics["max_pooling"] == "torch"
    assert fast != plain
    for split in ("train", "validation", "test"):
        for name, value in metrics[split].items():
            assert fused[split][name] == pytest.approx(value, rel=1e-3, abs=1e-4), (split, name)
    weights = [
        load(Path(tmp_path, "runs", run, "model.safetensors")) for run in ("native", "torch")
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-3, atol=1e-4)


def test_a_bf16_run_with_the_fused_convolution_trains_as_with_torchs(tmp_path: Path) -> None:
    """Under bf16 autocast the kernel computes what autocast's convolution computes (its
    gradients are float32 sums, where autocast's are rounded to bf16): the same training."""
    said, fast, fused = _train(tmp_path, "native", _POOLED, precision="bf16")
    assert "native_kernels" not in said
    assert fused["conv_pooling"] == fused["max_pooling"] == "dlcli"
    assert fused["precision"] == "bf16"
    _, plain, metrics = _train(tmp_path, "torch", _POOLED, precision="bf16", native_kernels=False)
    assert metrics["conv_pooling"] == metrics["max_pooling"] == "torch"
    assert fast != plain
    for split in ("train", "validation", "test"):
        for name, value in metrics[split].items():
            assert fused[split][name] == pytest.approx(value, rel=3e-2, abs=1e-2), (split, name)


def test_train_says_why_torchs_pooling_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_state", {"why": "no C compiler found (set CC, or install gcc)"})
    said, _, metrics = _train(tmp_path, "fallback")
    note = "training.native_kernels: torch's pooling and convolution run: no C compiler found"
    assert said.count(note) == 1
    assert metrics["max_pooling"] == "torch"


def test_a_model_without_such_pooling_records_none(tmp_path: Path) -> None:
    config = write_run_config(tmp_path, epochs=1)  # a conv net without pooling
    result = CliRunner().invoke(cli, ["train", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert "max_pooling" not in metrics and "native_kernels" not in result.output


@pytest.mark.parametrize("stop_at", [11, 8])  # inside epoch 2; after epoch 1's last step
@pytest.mark.parametrize(  # the pooling kernel alone; the first or a later convolution
    "kernel, precision",  # fused with its pooling, in float32 or bf16
    [
        ("pooling", "fp32"),
        ("first", "fp32"),
        ("later", "fp32"),
        ("first", "bf16"),
        ("later", "bf16"),
    ],
)
def test_a_resumed_run_is_the_same_bytes(
    tmp_path: Path, stop_at: int, kernel: str, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kernel == "pooling":
        monkeypatch.setattr(native, "convolves", lambda conv: False)
    layers = _POOLED if kernel == "first" else _POOLED_LATER
    reference, resumed = resumed_run_metrics(tmp_path, stop_at, layers=layers, precision=precision)
    assert reference["max_pooling"] == resumed["max_pooling"] == "dlcli"
    fused = None if kernel == "pooling" else "dlcli"
    assert reference.get("conv_pooling") == resumed.get("conv_pooling") == fused
