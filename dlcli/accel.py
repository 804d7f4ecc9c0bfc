"""The step's options: small objects the training step calls at named points, each resolved once
against the device and the model (see the numbered step in ``dlcli.engine.Trainer.train_step``).

    Precision       ``training.precision``: autocast around forward and loss; fp16 also scales
                    the loss (backward) and unscales the gradients (update); ``auto`` is
                    :func:`resolve_precision`'s (bf16 where the device computes it natively)
    ChannelsLast    ``training.channels_last``: NHWC memory for the model and for each batch
    compiled()      ``training.compile``: what runs the model, itself or torch.compile'd
    FlatParameters  every parameter in one buffer and every gradient in another, so zeroing
                    the gradients is one memset and Adam updates one tensor in one kernel
    DeviceData      each split copied to the device once, not at every epoch

By default only what keeps the maths is on (channels_last for convolutional models); mixed
precision and compilation are asked for. What the device cannot do (fp16 autocast off CUDA) is
a :class:`ConfigError` before the first step, never a crash in the middle of one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlcli.errors import ConfigError, TrainingError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPUINFO = Path("/proc/cpuinfo")
# torch's CPU feature checks (private: looked up by name, a missing one falls back to CPUINFO).
_TORCH_CPU_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
# The flags of /proc/cpuinfo that mean bfloat16 arithmetic in hardware, by the line that lists
# them: x86's AVX512-BF16 and AMX-BF16 (``flags``), aarch64's BF16 (``Features``).
_BF16_FLAGS = {"flags": frozenset({"avx512_bf16", "amx_bf16"}), "Features": frozenset({"bf16"})}


def resolve_precision(name: str, device: torch.device) -> str:
    """``training.precision`` as it runs on ``device``: ``auto`` is ``bf16`` where the device
    computes bfloat16 natively (:func:`native_bf16`) and ``fp32`` elsewhere (never fp16: it
    needs loss scaling and can overflow); any other name is itself."""
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: CUDA by torch's check for the device
    (emulation excluded where this torch can say so), the CPU by :func:`cpu_native_bf16`. MPS
    and anything else: no (fp32 is the safe choice there)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            try:
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # a torch without the keyword: its check has no emulation
                return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def cpu_native_bf16(cpuinfo: Path | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16 by torch's feature checks; else (a torch without them, or
    another architecture) by the CPU's flags in ``cpuinfo`` (default :data:`CPUINFO`; see
    :func:`cpuinfo_bf16`), unreadable: no. Without
    bfloat16 instructions oneDNN emulates it, several times slower than fp32 (the MNIST
    speedrun's fit: 49-52 s against 5.2-5.3 s on an AVX2-only AMD EPYC)."""
    if _torch_cpu_bf16():
        return True
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return False  # not known to be native
    return cpuinfo_bf16(text)


def _torch_cpu_bf16() -> bool:
    """torch's private CPU checks (:data:`_TORCH_CPU_CHECKS`), each looked up by name: True
    if one says yes; a missing one, or one that fails, is no answer."""
    for name in _TORCH_CPU_CHECKS:
        check = getattr(torch.cpu, name, None)
        with contextlib.suppress(Exception):
            if callable(check) and check():
                return True
    return False


def cpuinfo_bf16(text: str) -> bool:
    """Whether /proc/cpuinfo's text lists a bfloat16 instruction set: ``avx512_bf16`` or
    ``amx_bf16`` in an x86 ``flags`` line, ``bf16`` in an aarch64 ``Features`` line."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if _BF16_FLAGS.get(key.strip(), frozenset()) & set(value.split()):
            return True
    return False


def emulated_bf16_note(name: str, device: torch.device) -> str:
    """What ``train`` says when ``training.precision: bf16`` was asked for on a CPU without
    bfloat16 instructions or a GPU without bfloat16 arithmetic (before compute capability
    8.0), "" otherwise: it runs, but emulated."""
    if name != "bf16" or device.type not in ("cpu", "cuda") or native_bf16(device):
        return ""
    where = "CPU (no AVX512-BF16/AMX)" if device.type == "cpu" else "GPU (no bf16 arithmetic)"
    return (
        f"training.precision: bf16 is emulated on this {where}, typically "
        "several times slower than fp32; precision: auto picks fp32 here"
    )


class Precision:
    """``training.precision``: ``fp32`` (nothing), ``bf16`` (autocast) or ``fp16`` (autocast and
    loss scaling, CUDA only); ``auto`` resolved once, here (:func:`resolve_precision`).
    :attr:`name` is what runs, :attr:`asked` what the config said. For inference
    (``training=False``) fp16 off CUDA is fp32: a model trained on a GPU evaluates on a CPU."""

    def __init__(self, name: str, device: torch.device, *, training: bool = True) -> None:
        self.asked = name
        name = resolve_precision(name, device)
        if name == "fp16" and device.type != "cuda":
            if training:
                raise ConfigError(
                    f"training.precision: fp16 needs a CUDA device, found {device.type}; "
                    "use auto, bf16 (CPU autocast) or fp32"
                )
            name = "fp32"
        self.name = name
        self.device_type = device.type
        self.dtype = _DTYPES.get(name)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" and training else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision around forward and loss; for fp32, nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``; fp16: of the loss scaled against underflow."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def update(self, optimizer: torch.optim.Optimizer, step: Callable[[], object]) -> None:
        """``step()`` (``optimizer.step`` or what does the same: dlcli.optim.stepper); fp16:
        ``optimizer.step()`` of the unscaled gradients, skipped if one is inf/NaN."""
        if self.scaler is None:
            step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


class ChannelsLast:
    """``training.channels_last``: NHWC memory layout for convolutions (the same maths).

    ``None`` turns it on for models with a ``conv2d``: oneDNN (CPU) and cuDNN (CUDA) both
    convolve NHWC fastest (~15-20% off a step of the reference CNN on the 2-core CPU of
    benchmarks/RESULTS.md); models without a convolution gain nothing from it.
    """

    def __init__(self, setting: bool | None, model: nn.Module) -> None:
        convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.on = convolutional if setting is None else setting

    def model(self, module: nn.Module) -> nn.Module:
        if not self.on:
            return module
        return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.on and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 in [0, 1]: dividing the uint8 tensor by 255 promotes it inside
    the division kernel, one pass instead of ``.float().div_(255)``'s two (the same values)."""
    return torch.div(images, 255)


def compiled(module: nn.Module, on: bool) -> Callable[..., Any]:
    """``training.compile``: what runs ``module``, itself or its torch.compile'd version (the
    module keeps its parameter names for the optimizer and the saved weights)."""
    if not on:
        return module
    return _reporting_compile_errors(torch.compile(module))


class DeviceData:
    """A split's tensors on the device, copied once (then reused every epoch: the validation
    split is evaluated after each one). On the CPU, the tensors themselves."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._copies: dict[int, tuple[torch.Tensor, ...]] = {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.device.type == "cpu":
            return images, labels
        key = id(images)
        cached = self._copies.get(key)
        if cached is None or cached[0] is not images or cached[1] is not labels:
            # The source tensors are kept with their copies, so their ids cannot be reused.
            self._copies[key] = (images, labels, images.to(self.device), labels.to(self.device))
            cached = self._copies[key]
        return cached[2], cached[3]


class FlatParameters:
    """Every trainable parameter of a model as a view into one contiguous tensor, and its
    gradient as a view into another, so the optimizer updates one tensor in one kernel.

    Two things make a step faster with the same arithmetic (a matmul over the other layout
    may round its last bit differently, as any change of BLAS kernel can):

    - The optimizer touches one tensor: one fused Adam kernel instead of one per parameter,
      and zeroing the gradients is one memset. (Fused Adam over non-contiguous tensors is
      ~2.5x slower, which is why the buffer is contiguous.)
    - ``nn.Linear`` weights are stored input-major, ``(in, out)`` in memory, seen by the
      module as the usual ``(out, in)`` transposed view. Autograd then computes the weight
      gradient as ``x.T @ grad`` (the gradient of ``x @ W.T`` by the layout of ``W.T``),
      which MKL runs ~1.5x faster than ``grad.T @ x`` at batch 100 on the benchmark CPU;
      the forward matmul is as fast either way.

    The module keeps its ``Parameter`` objects (names, ``state_dict``, saving and loading
    are unchanged; only their storage moves), so a saved model is the same file. Backward
    adds into the preassigned gradient views, so :meth:`zero_grad` must run before each
    backward. Parameters that do not require gradients are left alone.
    """

    def __init__(self, model: nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        first = params[0] if params else torch.empty(0)
        total = sum(p.numel() for p in params)
        self.params = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros_like(self.params)
        self.params.grad = self.grads  # what the optimizer reads: it updates self.params
        offset = 0
        for p in params:
            n = p.numel()
            value, grad = self.params[offset : offset + n], self.grads[offset : offset + n]
            if id(p) in weights:  # (out, in) seen through an (in, out) buffer
                value, grad = (t.view(p.shape[1], p.shape[0]).t() for t in (value, grad))
            else:  # the parameter's own layout (channels_last convolutions keep theirs)
                value, grad = (t.as_strided(p.shape, _dense_strides(p)) for t in (value, grad))
            value.copy_(p.detach())
            p.data = value  # the same Parameter object, its storage now in the buffer
            p.grad = grad
            offset += n

    def zero_grad(self) -> None:
        """Zero every gradient (one memset); backward then adds into the flat buffer. The
        buffer is re-attached too: ``optimizer.zero_grad()`` (set_to_none) would detach it."""
        self.grads.zero_()
        self.attach()

    def attach(self) -> None:
        """Make the gradient buffer the flat tensor's ``.grad`` again (what the optimizer
        reads), for steps that write the gradients without zeroing them first."""
        self.params.grad = self.grads


def _dense_strides(tensor: torch.Tensor) -> tuple[int, ...]:
    """The tensor's strides if it is channels_last; else the contiguous ones."""
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tuple(tensor.stride())
    return tuple(torch.empty(tensor.shape, device="meta").stride())


def _reporting_compile_errors(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile compiles at the first call, so that is where it fails (no C++ compiler,
    an unsupported op): turn that into a TrainingError that names the key to turn it off."""

    def forward(*args: Any) -> Any:
        try:
            return compiled(*args)
        except Exception as err:
            if not _is_compile_error(err):
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrainingError(
                f"training.compile: torch.compile failed ({type(err).__name__}: {first}); "
                "set training.compile: false (on a CPU it needs a working C++ compiler)"
            ) from None

    return forward


def _is_compile_error(err: Exception) -> bool:
    """Raised by torch.compile's parts (TorchDynamo, Inductor), told by the module of the
    exception's class: no private name is imported to tell."""
    return type(err).__module__.startswith(("torch._dynamo", "torch._inductor"))
