"""``training.native_kernels``: dlcli's own CPU kernels for training: a 2x2 max-pooling, and a
small first convolution fused with its ReLU and that pooling.

Why: in a small CNN on the CPU, torch's ``max_pool2d`` costs more than it should. Its forward
writes an int64 index per output, and its backward fills the whole input gradient with
zeros before it scatters a quarter of it. In the reference CNN's step, pooling and the ReLU
came to 1.4 ms of 6.9 ms (an AVX-512 EPYC, 2 threads), and this kernel does them in 0.6 ms
(benchmarks/RESULTS.md).

What: ``kernels.c`` (beside this file) pools NHWC float32 or bfloat16 maps 2x2 with
stride 2. Its forward writes the pooled map, ReLU'd when the ReLU before the pooling was
moved after it (dlcli.model.Layers), and one byte per output saying which pixel won. Its
backward writes the input gradient in one pass. Outputs and gradients are the same bits as torch's
``max_pool2d`` (and ReLU): the same winner (ties to the first pixel, NaN to the last NaN),
and the gradient that torch's accumulation into zeros gives. ``tests/test_native.py``
compares them bit for bit.

The second kernel takes a network's first convolution when a 2x2 max-pooling follows it
(``conv2d`` with 1-4 input channels, stride 1, zero padding, filters a multiple of 8; its
ReLU, if any, is moved after the pooling as above). Torch's convolution writes the full-size
map (100x16x28x28 floats in the reference CNN), which the pooling then reads back, and
oneDNN is slow on one input channel (1.06 ms for the reference CNN's first forward, 21
GFLOP/s). The fused kernel computes each pooled pixel's four outputs in registers and
stores only the pooled map and its winner codes. Its backward computes the weight and bias
gradients at the winners only (the data needs no gradient): a quarter of the work. The
values are torch's up to float32 rounding (the sums run in another order), not the same
bits: ``tests/test_native.py`` compares within float tolerance and trains both ways to the
same loss. Its gradients are summed per image, then over images in order, so they do not
depend on the number of threads: a run and its resume stay the same bytes. Under bf16
autocast it computes what autocast's convolution computes (input, weights and bias rounded
to bfloat16, float32 sums, each output rounded to bfloat16) and returns a bfloat16 map; its
weight and bias gradients stay float32 sums, where autocast's are rounded to bfloat16.

The same forward takes a later convolution followed by a 2x2 max-pooling, on a feature map
whose channels are a multiple of 8 (the reference CNN's second layer: 16 in, 32 out). Its
backward then computes the input's gradient too, and all three gradients only from each
pooling window's winner (and, with the ReLU, only where the output is positive): torch's
convolution backward computes them from the full-size gradient, three quarters of it zeros.
On the reference CNN's second layer that is 0.9-1.2 ms against torch's ~2.4 ms for the
convolution's and the pooling's backward (2 cores, AVX-512 EPYC).

How: the source is compiled once per machine and compiler with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``; about 1.5 s), ``-O3 -march=native``, into
dlcli's cache (``kernels/`` under dlcli.data.cache.cache_dir). It uses no torch headers and
is called through ctypes. The library's name is a hash of everything it depends on: the
source, the compiler and its version, the flags, and the CPU. A new copy is written to a
temporary name (``.kernels-<hash>.so.<pid>.tmp``) and renamed into place; a compile that fails
or is interrupted removes it, and one a killed process left is removed by the next compile
once it is an hour old (:func:`dlcli.atomic.remove_abandoned`). A process holds a shared lock
on the library it loaded and marks it used; a build no process holds and none has used for
30 days (a former dlcli's, compiler's or flags') is removed. A library is loaded only from
a folder and file no other user can write; otherwise it is built in a temporary folder for the
process alone. When torch runs on GNU OpenMP (Linux), the kernel is built with ``-fopenmp``
and shares torch's OpenMP runtime and thread count; elsewhere it runs on one thread. The first
load runs a self-test against torch on small maps with ties, NaN and infinities. A mismatch
means it is not used.

Where it cannot run, torch's pooling does, with the same results. :func:`unavailable` says
why: no C compiler, a failed compile, or a failed self-test. ``dlcli train`` prints that as
a one-line note. A tensor the kernel does not take also goes to torch: neither float32 nor
bfloat16 (bf16 autocast), not channels_last, channels not a multiple of 8, another pool
geometry, or under torch.compile.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dlcli import atomic
from dlcli.errors import write_problem

SOURCE = Path(__file__).with_name("kernels.c")
VERSION = 7  # dlcli_kernels_version() of the source this module calls
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}  # the kernels' dtypes
_FLAGS = ("-O3", "-std=gnu11", "-shared", "-fPIC")
_COMPILE_SECONDS = 120  # a compiler that takes longer is treated as broken

_state: dict[str, Any] = {}  # "library" (ctypes.CDLL) or "why" (str): the process's one try
_held: list[int] = []  # open files of the libraries this process loaded (a shared flock each)
# A build in the kernels folder no process has loaded for this long is removed (one a former
# dlcli, compiler or flag set built): not sooner, since two dlcli versions, compilers or CPUs
# (a home folder shared over NFS) may take turns, each with its own build.
_UNUSED_AFTER_S = 30 * 86400.0
_BUILD_NAME = re.compile(r"kernels-[0-9a-f]{20}\.so")
_scratch: list[tempfile.TemporaryDirectory[str]] = []  # where the cache was not writable


def why_not(*, enabled: bool, device: torch.device, compiled: bool, precision: str) -> str:
    """Why a training run with these settings will not use the kernel ("" when it will,
    wherever a layer and its tensor allow)."""
    if not enabled:
        return "training.native_kernels is off"
    if device.type != "cpu":
        return f"the device is {device.type}"
    if compiled:
        return "training.compile is on"
    if precision not in ("fp32", "bf16"):
        return f"the run computes in {precision}"
    return unavailable()


def unavailable() -> str:
    """Why the kernel cannot run in this process ("" when it can). Compiles and self-tests
    it on the first call."""
    if not _state:
        try:
            library = _load()
            _self_test(library)
            _state["library"] = library
        except _Unavailable as error:
            _state["why"] = str(error)
    return str(_state.get("why", ""))


def pools(module: nn.Module) -> bool:
    """Whether ``module`` is a max-pooling the kernel computes: an ``nn.MaxPool2d`` of size
    and stride 2, without padding, dilation, ceil mode or indices."""
    return (
        type(module) is nn.MaxPool2d
        and _pair(module.kernel_size) == (2, 2)
        and _pair(module.stride) == (2, 2)
        and _pair(module.padding) == (0, 0)
        and _pair(module.dilation) == (1, 1)
        and not module.ceil_mode
        and not module.return_indices
    )


def takes(x: torch.Tensor) -> bool:
    """Whether :func:`max_pool2x2` takes ``x``: float32 or bfloat16 on the CPU, channels_last,
    channels a multiple of 8, at least 2x2, not under torch.compile, and the kernel
    available."""
    return (
        x.dtype in _SUFFIX
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[0] > 0
        and x.shape[1] > 0
        and x.shape[1] % 8 == 0
        and x.shape[2] >= 2
        and x.shape[3] >= 2
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
        and unavailable() == ""
    )


def max_pool2x2(x: torch.Tensor, relu: bool, planar: bool = False) -> torch.Tensor:
    """``relu(max_pool2d(x, 2))`` (``relu``) or ``max_pool2d(x, 2)``, with autograd, for an
    ``x`` that :func:`takes`; channels_last, or NCHW-contiguous with ``planar`` (for a flatten
    after it: then a view, not a copy)."""
    out: torch.Tensor = _MaxPool2x2.apply(x, relu, planar)
    return out


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, relu: bool, planar: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        pooled = (n, c, h // 2, w // 2)
        layout = torch.contiguous_format if planar else torch.channels_last
        out = torch.empty(pooled, dtype=x.dtype, memory_format=layout)
        code = torch.empty(pooled, dtype=torch.uint8, memory_format=torch.channels_last)
        forward = getattr(_state["library"], f"dlcli_maxpool2x2_forward_{_SUFFIX[x.dtype]}")
        forward(x.data_ptr(), out.data_ptr(), code.data_ptr(), n, h, w, c, int(relu), int(planar))
        # The ReLU's backward reads the output; without it only the winners are needed.
        ctx.save_for_backward(code, out) if relu else ctx.save_for_backward(code)
        ctx.relu, ctx.planar, ctx.input_shape, ctx.dtype = relu, planar, x.shape, x.dtype
        return out

    @staticmethod
    @once_differentiable  # the kernel's backward is not itself recorded: no double backward
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        code, *out = ctx.saved_tensors
        layout = torch.contiguous_format if ctx.planar else torch.channels_last
        grad = grad.to(ctx.dtype).contiguous(memory_format=layout)
        n, c, h, w = ctx.input_shape
        grad_in = torch.empty(ctx.input_shape, dtype=ctx.dtype, memory_format=torch.channels_last)
        backward = getattr(_state["library"], f"dlcli_maxpool2x2_backward_{_SUFFIX[ctx.dtype]}")
        backward(
            grad.data_ptr(),
            code.data_ptr(),
            out[0].data_ptr() if out else grad.data_ptr(),  # not read without the ReLU
            grad_in.data_ptr(),
            n,
            h,
            w,
            c,
            int(ctx.relu),
            int(ctx.planar),
        )
        return grad_in, None, None


# --- the first convolution fused with its ReLU and 2x2 max-pooling -------------------------

MAX_IN_CHANNELS = 4  # a network's first layer: grey or colour images (and a little more)


def convolves(conv: nn.Module) -> bool:
    """Whether the fused kernel computes ``conv`` (followed by a 2x2 max-pooling that
    :func:`pools`): an ``nn.Conv2d`` of stride 1, without dilation or groups, with numeric zero
    padding, filters a multiple of 8, in float32, and either a first layer's input (1 to 4
    channels, a kernel at most 64 wide times the channels; no input gradient) or a feature
    map's (channels a multiple of 8; with the input's gradient)."""
    if type(conv) is not nn.Conv2d:
        return False
    return (
        _pair(conv.stride) == (1, 1)
        and _pair(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.out_channels % 8 == 0
        and conv.weight.dtype == torch.float32
        and (_on_images(conv.in_channels, _pair(conv.kernel_size)[1]) or conv.in_channels % 8 == 0)
    )


def _on_images(channels: int, width: int) -> bool:
    """Whether the image kernel (few input channels, no input gradient) takes a convolution
    with ``channels`` in and a kernel ``width`` wide."""
    return 1 <= channels <= MAX_IN_CHANNELS and width * channels <= 64


def takes_image(x: torch.Tensor, conv: nn.Conv2d, padding: tuple[int, int, int, int]) -> bool:
    """Whether :func:`conv_max_pool2x2` takes ``x`` through ``conv`` (that :func:`convolves`)
    with ``padding`` (left, right, top, bottom) before it: float32 on the CPU (or bfloat16
    under bf16 autocast), a gradient of its own only where the feature-map kernel takes
    ``conv`` (input channels a multiple of 8), at least one pooled pixel, not under
    torch.compile or an autocast other than bf16's, and the kernels available."""
    autocast = torch.is_autocast_enabled("cpu")
    return (
        (x.dtype == torch.float32 or (autocast and x.dtype == torch.bfloat16))
        and x.device.type == "cpu"
        and conv.weight.device.type == "cpu"
        and x.dim() == 4
        and x.shape[0] > 0
        and x.shape[1] == conv.in_channels
        and (conv.in_channels % 8 == 0 or not x.requires_grad)
        and min(_pooled_size(x, conv, padding)) > 0
        and _padded_size(x, conv, padding) < 2**31  # the kernels' int32 offsets in an image
        and (not autocast or torch.get_autocast_dtype("cpu") == torch.bfloat16)
        and not torch.compiler.is_compiling()
        and unavailable() == ""
    )


def conv_max_pool2x2(
    x: torch.Tensor, conv: nn.Conv2d, padding: tuple[int, int, int, int], relu: bool
) -> torch.Tensor:
    """``max_pool2d(conv(zero_pad(x, padding)), 2)``, ReLU'd after the pooling when ``relu``
    (where the ReLU came before it: the same values), with autograd for the weight and bias,
    for an ``x`` that :func:`takes_image`. The result is channels_last. Under bf16 autocast it
    is what autocast computes: the input, weight and bias rounded to bfloat16, float32 sums,
    each output rounded to bfloat16, a bfloat16 result (the gradients stay float32 sums)."""
    top, left = padding[2] + _pair(conv.padding)[0], padding[0] + _pair(conv.padding)[1]
    geometry = (top, left, *_pooled_size(x, conv, padding))
    half = torch.is_autocast_enabled("cpu")  # bf16's: takes_image allows no other
    out: torch.Tensor = _ConvMaxPool2x2.apply(x, conv.weight, conv.bias, geometry, relu, half)
    return out


def _pooled_size(
    x: torch.Tensor, conv: nn.Conv2d, padding: tuple[int, int, int, int]
) -> tuple[int, int]:
    (pad_h, pad_w), (kh, kw) = _pair(conv.padding), _pair(conv.kernel_size)
    height = x.shape[2] + padding[2] + padding[3] + 2 * pad_h - kh + 1
    width = x.shape[3] + padding[0] + padding[1] + 2 * pad_w - kw + 1
    return height // 2, width // 2


def _padded_size(x: torch.Tensor, conv: nn.Conv2d, padding: tuple[int, int, int, int]) -> int:
    """The values in one padded image the kernels read (rows x columns x channels)."""
    (oh, ow), (kh, kw) = _pooled_size(x, conv, padding), _pair(conv.kernel_size)
    return (2 * oh + kh - 1) * (2 * ow + kw - 1) * conv.in_channels


class _ConvMaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: tuple[int, int, int, int],
        relu: bool,
        half: bool,
    ) -> torch.Tensor:
        top, left, oh, ow = geometry
        n, ci, h, w = x.shape
        f, _, kh, kw = weight.shape

        def values(t: torch.Tensor) -> torch.Tensor:  # bf16: rounded, kept as float32
            return t.to(torch.bfloat16).float() if half else t

        pixels = values(x.detach().permute(0, 2, 3, 1)).contiguous()  # NHWC
        taps = values(weight.detach().permute(2, 3, 1, 0)).contiguous()  # kh x kw x ci x f
        padded = torch.empty(n, 2 * oh + kh - 1, 2 * ow + kw - 1, ci)
        dtype = torch.bfloat16 if half else torch.float32
        out = torch.empty((n, f, oh, ow), dtype=dtype, memory_format=torch.channels_last)
        code = torch.empty((n, f, oh, ow), dtype=torch.uint8, memory_format=torch.channels_last)
        biases = None if bias is None else values(bias.detach()).contiguous()
        dims = (n, h, w, ci, f, kh, kw, top, left, oh, ow)  # as the kernels take them
        _state["library"].dlcli_convpool_forward(
            pixels.data_ptr(),
            padded.data_ptr(),
            taps.data_ptr(),
            None if biases is None else biases.data_ptr(),
            out.data_ptr(),
            code.data_ptr(),
            *dims,
            int(relu),
            int(half),
        )
        # The image kernel's backward (no input gradient) reads the padded images and the
        # weight gradient's order off the forward's; the feature-map one also the weights.
        on_images = _on_images(ci, kw) and not x.requires_grad
        weights = None if on_images else values(weight.detach().permute(0, 2, 3, 1)).contiguous()
        ctx.save_for_backward(padded, out, code, weights)
        ctx.relu, ctx.weight_shape, ctx.on_images = relu, weight.shape, on_images
        ctx.input_shape, ctx.input_dtype, ctx.dims = x.shape, x.dtype, dims
        return out

    @staticmethod
    @once_differentiable  # the kernel's backward is not itself recorded: no double backward
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None, None, None]:
        padded, out, code, weights = ctx.saved_tensors
        f, ci, kh, kw = ctx.weight_shape
        n, _, oh, ow = out.shape
        weight_grad = torch.empty(f, kh, kw, ci)  # channels_last memory
        bias_grad = torch.empty(f)
        sums = torch.empty(n, kh * kw * ci * f + f)
        input_grad = None
        if ctx.on_images:
            grad = grad.to(out.dtype).contiguous(memory_format=torch.channels_last)
            _state["library"].dlcli_convpool_backward(
                padded.data_ptr(),
                grad.data_ptr(),
                out.data_ptr(),
                code.data_ptr(),
                sums.data_ptr(),
                weight_grad.data_ptr(),
                bias_grad.data_ptr(),
                n,
                ci,
                f,
                kh,
                kw,
                oh,
                ow,
                int(ctx.relu),
                int(out.dtype == torch.bfloat16),
            )
        else:  # a feature map: float32 gradients and outputs (bf16 ones widen exactly)
            grad = grad.float().contiguous(memory_format=torch.channels_last)
            maps = out.float().contiguous(memory_format=torch.channels_last)
            wants_input = ctx.needs_input_grad[0]
            scratch = torch.empty(padded.shape) if wants_input else None
            offsets = torch.empty(out.numel(), dtype=torch.int32)  # each filter's winners
            winners = torch.empty(out.numel())
            if wants_input:
                input_grad = torch.empty(ctx.input_shape, memory_format=torch.channels_last)
            _state["library"].dlcli_convpool_backward_input(
                padded.data_ptr(),
                grad.data_ptr(),
                maps.data_ptr(),
                code.data_ptr(),
                weights.data_ptr(),
                sums.data_ptr(),
                None if scratch is None else scratch.data_ptr(),
                offsets.data_ptr(),
                winners.data_ptr(),
                weight_grad.data_ptr(),
                bias_grad.data_ptr(),
                None if input_grad is None else input_grad.data_ptr(),
                *ctx.dims,
                int(ctx.relu),
            )
            if input_grad is not None:
                input_grad = input_grad.to(ctx.input_dtype)
        _, wants_weight, wants_bias, _, _, _ = ctx.needs_input_grad
        return (
            input_grad,
            weight_grad.permute(0, 3, 1, 2) if wants_weight else None,
            bias_grad if wants_bias else None,
            None,
            None,
            None,
        )


# --- building and loading ------------------------------------------------------------------


class _Unavailable(Exception):
    """Why the kernel cannot be used (the message is what ``dlcli train`` notes)."""


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _compiler() -> str:
    for candidate in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    raise _Unavailable("no C compiler found (set CC, or install gcc or clang)")


def _openmp() -> bool:
    """Whether torch runs on GNU OpenMP here: the kernel then links the same runtime (the
    dynamic linker reuses the ``libgomp.so.1`` torch loaded) and shares its threads."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "libgomp" in maps and "OpenMP" in torch.__config__.parallel_info()


def _cpu() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    lines = {line.split(":")[0].strip(): line for line in info.splitlines() if ":" in line}
    return "\n".join(lines.get(key, "") for key in wanted)


def _version_of(compiler: str) -> str:
    try:
        done = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=_COMPILE_SECONDS
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"the C compiler {compiler} does not run: {error}") from error
    return done.stdout


# The temporary name _compile gives the library _load names ``kernels-<20 hex digits>.so``:
# ``.kernels-<hash>.so.<pid>.tmp`` (a killed compile leaves it).
_PARTIAL_NAME = re.compile(r"\.kernels-[0-9a-f]{20}\.so\.[0-9]+\.tmp")


def _compile(compiler: str, flags: list[str], target: Path) -> str:
    """Compile the source into ``target`` (written to a temporary name, then renamed);
    returns the compiler's complaint ("" when it worked). A library that cannot be put in
    place (the folder turned read-only, the disk full) is :class:`_Unavailable`: torch's
    pooling runs, with a note (it was an OSError's traceback)."""
    atomic.remove_abandoned(target.parent, _PARTIAL_NAME)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    command = [compiler, *flags, str(SOURCE), "-o", str(partial)]
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_SECONDS)
        except (OSError, subprocess.SubprocessError) as error:
            return str(error)
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        try:
            partial.chmod(0o755)  # ours alone to write, whatever the umask (see _only_ours)
            os.replace(partial, target)
        except OSError as error:
            raise _Unavailable(
                f"the compiled kernel cannot be put in {target.parent}: {write_problem(error)}"
            ) from None
        return ""
    finally:  # a failed or interrupted compile (Ctrl-C) leaves no half-written library
        with contextlib.suppress(OSError):  # one that cannot be removed is not worth a crash
            partial.unlink(missing_ok=True)


def _folder() -> Path:
    """``kernels/`` in dlcli's cache, or a folder for this process where that is not
    writable or not only ours (code is loaded from it: a folder others can write to could
    hold a library that is not the one we built)."""
    from dlcli.data.cache import cache_dir

    folder = cache_dir() / "kernels"
    try:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        if os.access(folder, os.W_OK) and _only_ours(folder):
            return folder
    except OSError:
        pass
    return _folder_for_this_process()


def _folder_for_this_process() -> Path:
    """A temporary folder, removed when the process ends."""
    if not _scratch:
        _scratch.append(tempfile.TemporaryDirectory(prefix="dlcli-kernels-"))
    return Path(_scratch[0].name)


def _only_ours(path: Path) -> bool:
    """Owned by this user and writable by no one else (POSIX; elsewhere, True)."""
    if not hasattr(os, "getuid"):
        return True
    status = path.stat()
    return status.st_uid == os.getuid() and not status.st_mode & 0o022


def _load() -> ctypes.CDLL:
    """The compiled kernel, built first if this machine's cache has none."""
    compiler = _compiler()
    try:
        source = SOURCE.read_bytes()
    except OSError as error:
        raise _Unavailable(f"the kernel's source is missing: {error}") from error
    version, machine, folder = _version_of(compiler), _cpu(), _folder()
    openmp = ["-fopenmp"] if _openmp() else []
    complaints = []
    for flags in ([*_FLAGS, "-march=native", *openmp], [*_FLAGS, *openmp], list(_FLAGS)):
        key = hashlib.sha256(
            b"\0".join(
                part.encode() if isinstance(part, str) else part
                for part in (source, compiler, version, " ".join(flags), machine, sys.platform)
            )
        ).hexdigest()[:20]
        target = folder / f"kernels-{key}.so"
        cached = target.exists() and _only_ours(target)
        if target.exists() and not cached:  # not ours to trust, nor to replace
            target = _folder_for_this_process() / target.name
        if cached and not _hold(target):  # removed meanwhile, unused for a month: build it
            cached = False
        complaint = "" if cached else _compile(compiler, flags, target)
        if not complaint:
            if not cached:
                _hold(target)
            library = _open(target)
            atomic.remove_abandoned(folder, _BUILD_NAME, _UNUSED_AFTER_S, unless_locked=True)
            return library
        complaints.append(complaint)
    raise _Unavailable(f"the kernel did not compile with {compiler}: {complaints[-1]}")


def _hold(path: Path) -> bool:
    """Mark the library at ``path`` in use for as long as this process lives: a shared
    ``flock`` (so no other dlcli removes it as unused, :func:`_load`) and its modification time
    set to now (when it was last used). ``False`` when it is gone. Another dlcli that removes an
    old build never touches a held one; a build an older dlcli (which takes no lock) has
    loaded may be unlinked, which is safe on POSIX systems: the loaded mapping keeps the file's
    data until the process ends, and a process loads its library once."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a remover holds it, an instant
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            return False
        with contextlib.suppress(OSError):  # a folder others may read but not write: fine
            os.utime(path)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def _open(path: Path) -> ctypes.CDLL:
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise _Unavailable(f"the compiled kernel does not load: {error}") from error
    if library.dlcli_kernels_version() != VERSION:
        raise _Unavailable(f"{path} is not version {VERSION} of the kernel")
    size, pointer, flag = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    signatures = {"dlcli_convpool_forward": [pointer] * 6 + [size] * 11 + [flag] * 2}
    signatures["dlcli_convpool_backward"] = [pointer] * 7 + [size] * 7 + [flag] * 2
    signatures["dlcli_convpool_backward_input"] = [pointer] * 12 + [size] * 11 + [flag]
    for suffix in _SUFFIX.values():
        signatures[f"dlcli_maxpool2x2_forward_{suffix}"] = [pointer] * 3 + [size] * 4 + [flag] * 2
        signatures[f"dlcli_maxpool2x2_backward_{suffix}"] = [pointer] * 4 + [size] * 4 + [flag] * 2
    for name, argtypes in signatures.items():
        try:
            function = getattr(library, name)
        except AttributeError as error:
            raise _Unavailable(f"{path} has no {name}") from error
        function.argtypes, function.restype = argtypes, None
    return library


def _self_test(library: ctypes.CDLL) -> None:
    """The kernel against torch on small maps (odd sizes, ties, NaN, infinities, signed
    zeros), forward and backward, with and without the ReLU: the same bits or not used."""
    _state["library"] = library
    try:
        generator = torch.Generator().manual_seed(0)
        for shape in ((2, 8, 5, 7), (1, 16, 4, 4)):
            x = torch.randint(-3, 4, shape, generator=generator).float() / 2
            x.view(-1)[::7] = float("nan")
            x.view(-1)[3::11] = float("-inf")
            x.view(-1)[5::13] = -0.0
            pooled = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
            grad = torch.randn(pooled, generator=generator)
            grad.view(-1)[::5] = -0.0
            for dtype, relu, planar in itertools.product(_SUFFIX, (False, True), (False, True)):
                if not _agrees(x.to(dtype), grad.to(dtype), relu, planar):
                    raise _Unavailable("the compiled kernel failed its self-test against torch")
        # each specialised shape of the fused convolution and the general one, at both vector
        # widths: on integers its sums are exact, so its results are torch's bits
        for ci, f, kernel, padding in ((1, 16, 3, 1), (1, 8, 5, 2), (3, 24, 3, 0), (2, 16, 2, 0)):
            conv = nn.Conv2d(ci, f, kernel, padding=padding)
            with torch.no_grad():
                for parameter in conv.parameters():
                    parameter.copy_(torch.randint(-3, 4, parameter.shape, generator=generator))
            x = torch.randint(-2, 3, (2, ci, 7, 6), generator=generator).float()
            for relu, half in itertools.product((False, True), (False, True)):
                if not _conv_agrees(conv, x, relu, half):
                    raise _Unavailable("the compiled kernel failed its self-test against torch")
        # and on feature maps, with the input's gradient: -1, 0 and 1 keep every sum small
        # enough to be a bf16 value too
        for ci, f, kernel, padding in ((16, 16, 3, 1), (16, 8, 5, 2), (8, 8, 3, 0)):
            conv = nn.Conv2d(ci, f, kernel, padding=padding)
            with torch.no_grad():
                for parameter in conv.parameters():
                    parameter.copy_(torch.randint(-1, 2, parameter.shape, generator=generator))
            x = torch.randint(-1, 2, (2, ci, 7, 6), generator=generator).float()
            x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
            for relu, half in itertools.product((False, True), (False, True)):
                if not _conv_agrees(conv, x, relu, half):
                    raise _Unavailable("the compiled kernel failed its self-test against torch")
    finally:
        del _state["library"]


def _agrees(x: torch.Tensor, grad: torch.Tensor, relu: bool, planar: bool) -> bool:
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.contiguous(memory_format=torch.channels_last)
    results = []
    for ours in (False, True):
        leaf = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
        if ours:
            out = max_pool2x2(leaf, relu, planar)
        else:
            out = nn.functional.max_pool2d(leaf, 2)
            out = torch.relu(out) if relu else out
        out.backward(grad)
        assert leaf.grad is not None
        results.append((out.detach(), leaf.grad))
    return all(_same_bits(a, b) for a, b in zip(results[0], results[1], strict=True))


def _conv_agrees(conv: nn.Conv2d, x: torch.Tensor, relu: bool, half: bool) -> bool:
    """On small integers, where every sum is exact and every value a bf16 one: torch's
    float32 bits, in float32 and under bf16 autocast (against torch's float32 computation:
    its first bf16 convolution would cost every run ~0.2 s of setting up)."""
    results = []
    for ours in (False, True):
        conv.zero_grad(set_to_none=True)
        x.grad = None
        if ours:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
                out = conv_max_pool2x2(x, conv, (0, 0, 0, 0), relu)
            if out.dtype != (torch.bfloat16 if half else torch.float32):
                return False
        else:
            out = nn.functional.max_pool2d(conv(x), 2)
            out = torch.relu(out) if relu else out
        grad = torch.arange(out.numel()).view(out.shape) % 5 - 2.0
        out.backward(grad.to(out.dtype))
        assert conv.weight.grad is not None and conv.bias is not None
        assert conv.bias.grad is not None
        results.append((out.detach().float(), conv.weight.grad, conv.bias.grad, x.grad))
    return all(
        a is b is None or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(results[0], results[1], strict=True)
    )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns, any NaN matching any NaN."""
    a, b = a.contiguous(), b.contiguous()
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    bits_a, bits_b = (t.masked_fill(nan, 0).view(bits) for t in (a, b))
    return torch.equal(bits_a, bits_b)
