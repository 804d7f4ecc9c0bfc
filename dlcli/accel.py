"""What makes the loop fast without changing it: mixed precision, torch.compile, channels_last,
the dataset kept on the device, the one-kernel uint8 → float batch conversion, and every
parameter (and gradient) in one flat buffer, dense weights stored input-major.

:class:`~dlcli.engine.Trainer` builds one :class:`Accel` from ``training.precision``,
``training.compile`` and ``training.channels_last``. By default only what keeps the maths
is on (channels_last for convolutional models, on any device: the same convolutions, faster);
mixed precision and compilation are asked for. What the CPU cannot do (fp16 autocast) is a
:class:`ConfigError` before the first step, never a crash in the middle of one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlcli import optim
from dlcli.config import TrainingConfig
from dlcli.errors import ConfigError, TrainingError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def scaled(images: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """``images[index] / 255`` as float32, in two passes instead of three.

    ``index_select`` gathers rows without advanced indexing's generic machinery, and dividing
    the uint8 tensor by 255 promotes it to float32 inside the division kernel: the same values,
    bit for bit, as ``images[index].float().div_(255)``.
    """
    rows = images[index] if isinstance(index, slice) else images.index_select(0, index)
    return torch.div(rows, 255)


class Accel:
    """The device-side options of one Trainer, resolved against the device it runs on."""

    def __init__(self, training: TrainingConfig, device: torch.device) -> None:
        self.device = device
        self.dtype = _DTYPES.get(training.precision)
        if training.precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"training.precision: fp16 needs a CUDA device, found {device.type}; "
                "use bf16 (CPU autocast) or fp32"
            )
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if training.precision == "fp16" else None
        self.compile = training.compile
        self.channels_last_setting = training.channels_last
        self.channels_last = False
        # Batches of one shape every step: let cuDNN pick its fastest convolution once.
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._on_device: dict[int, tuple[torch.Tensor, ...]] = {}

    def prepare(self, model: nn.Module) -> tuple[nn.Module, Callable[..., Any]]:
        """Move the model to the device (channels_last where wanted); return it and the
        callable that runs it (the compiled one with ``training.compile``). The optimizer and
        the saved weights use the first, which keeps its parameter names."""
        model = model.to(self.device)
        # oneDNN (CPU) and cuDNN (CUDA) both convolve NHWC fastest: ~15-20% off a step of the
        # reference CNN on the 2-core CPU of benchmarks/RESULTS.md. Models without a
        # convolution gain nothing from it.
        convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
        setting = self.channels_last_setting
        self.channels_last = convolutional if setting is None else setting
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.flat = FlatParameters(model)
        return model, self.runner(model)

    def runner(self, module: nn.Module) -> Callable[..., Any]:
        """What runs ``module``: itself, or with ``training.compile`` its torch.compile'd
        version (for a distributed run the Trainer compiles the DDP-wrapped model too)."""
        if not self.compile:
            return module
        return _reporting_compile_errors(torch.compile(module))

    def zero_grad(self) -> None:
        """Zero every gradient (one memset); backward then adds into the flat buffer. The
        buffer is re-attached too: ``optimizer.zero_grad()`` (set_to_none) would detach it."""
        self.flat.grads.zero_()
        self.flat.params.grad = self.flat.grads

    def inputs(self, images: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
        """One batch as the model takes it: float32 in [0, 1], NHWC in memory if asked."""
        return self.layout(scaled(images, index))

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A float batch in the memory layout the model runs fastest on (channels_last)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision around forward and loss (``training.precision``); else nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward(); optimizer.step()``, through the grad scaler for fp16."""
        if self.scaler is None:
            loss.backward()
            optim.step(optimizer)  # Adam/AdamW: the fused kernel, called directly
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A split's tensors on the device, copied once per Trainer (then reused every epoch:
        the validation split is evaluated after each one). On the CPU, the tensors themselves."""
        if self.device.type == "cpu":
            return images, labels
        key = id(images)
        cached = self._on_device.get(key)
        if cached is None or cached[0] is not images or cached[1] is not labels:
            # The source tensors are kept with their copies, so their ids cannot be reused.
            self._on_device[key] = (images, labels, images.to(self.device), labels.to(self.device))
            cached = self._on_device[key]
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
    adds into the preassigned gradient views, so :meth:`Accel.zero_grad` must run before
    each backward. Parameters that do not require gradients are left alone.
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
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(err, TorchDynamoException) or type(err).__module__.startswith(
        "torch._inductor"
    )
