"""Build an ``nn.Sequential`` from the model config, inferring every layer's input size.

Shapes are tracked as (channels, height, width) for images and (features,) once flat; the
config writes ``input_shape`` as Keras does, (height, width, channels). Impossible shapes (a
kernel larger than its input, a dense layer on an image) are config errors naming the layer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlcli import config as C
from dlcli import native
from dlcli.data.images import check_image_size
from dlcli.errors import ConfigError

Shape = tuple[int, ...]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),
    "gelu": nn.GELU,
}


@dataclass(frozen=True)
class LayerInfo:
    """One row of the model summary."""

    name: str
    kind: str
    output_shape: Shape  # (C, H, W) or (F,): PyTorch's layout
    params: int
    trainable: int
    inner: tuple[LayerInfo, ...] = ()  # a residual block's layers (and its projection)

    @property
    def output_shape_hwc(self) -> Shape:
        """The shape as every output shows it: (height, width, channels), or (features,)."""
        return hwc(self.output_shape)


@dataclass
class BuiltModel:
    module: nn.Sequential
    layers: list[LayerInfo]
    input_shape: Shape  # (C, H, W)
    output_shape: Shape

    @property
    def total_params(self) -> int:
        return sum(info.params for info in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(info.trainable for info in self.layers)


def batch_norm_layers(layers: Sequence[LayerInfo]) -> list[LayerInfo]:
    """The model's batch_norm layers (residual blocks' included), in order."""
    found: list[LayerInfo] = []
    for info in layers:
        if info.kind == "BatchNorm":
            found.append(info)
        found += batch_norm_layers(info.inner)
    return found


def check_batch_norm_batches(
    built: BuiltModel, samples: int, batch_size: int, workers: int = 1
) -> None:
    """A training step must give every batch_norm layer 2 or more values of each channel to
    normalise over: one sample on a flat layer (after a dense layer, or on 1x1 images) has a
    variance of nothing, and torch refuses it (an internal error at the epoch's last step,
    after the epoch's work). The steps of an epoch of ``samples`` at ``batch_size`` (the
    global batch, shared out by ``workers``) must not leave any worker exactly one sample
    then; none (a worker with an empty share) is fine."""
    flat = [
        info for info in batch_norm_layers(built.layers) if math.prod(info.output_shape[1:]) == 1
    ]
    if not flat or samples <= 0:
        return
    batches = {min(batch_size, samples), samples % batch_size if samples > batch_size else 0}
    for batch in sorted(b for b in batches if b):
        shares = {batch // workers, -(-batch // workers)}
        if 1 not in shares:
            continue
        full = batch == min(batch_size, samples)
        where = "each step" if full else "the epoch's last step"
        given = f"{batch_size} on {samples} training samples"
        leaves = f"leaves 1 sample in {where}"
        if workers > 1:
            given += f", shared by {workers} workers,"
            leaves = f"leaves a worker 1 sample in {where}" + (
                "" if full or batch == 1 else f" ({batch} samples)"
            )
        layer = flat[0]
        raise ConfigError(
            f"training.batch_size: {given} {leaves}, but {layer.name} (batch norm of "
            f"{hwc(layer.output_shape)}) needs 2 or more samples a step to normalise over; "
            "choose a batch size that leaves every step 2 or more"
        )


def hwc(shape: Shape) -> Shape:
    """PyTorch's (C, H, W) as the config writes shapes, (H, W, C); a flat (F,) as is. Every
    shape a person reads (tables, JSON, messages) goes through here."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def input_chw(model_config: C.ModelConfig) -> Shape:
    """The model config's (H, W, C) input shape as (C, H, W)."""
    if model_config.input_shape is None:
        raise ConfigError(
            "model.input_shape: not known yet: it is inferred from the data when training "
            "(`dlcli data check` shows the sizes found); give [height, width, channels]"
        )
    if len(model_config.input_shape) != 3 or any(d <= 0 for d in model_config.input_shape):
        raise ConfigError(
            f"model.input_shape: expected [height, width, channels] of positive integers, "
            f"found {model_config.input_shape}"
        )
    height, width, channels = model_config.input_shape
    check_image_size(height, width)
    return (channels, height, width)


def build_model(model_config: C.ModelConfig, num_classes: int | None = None) -> BuiltModel:
    """Build the network; with ``num_classes``, check the output has one logit per class."""
    modules, infos, shape = _build_layers(
        model_config.layers, input_chw(model_config), "model.layers"
    )
    if num_classes is not None and shape != (num_classes,):
        raise ConfigError(
            f"model.layers: the last layer outputs shape {hwc(shape)}, but the dataset has "
            f"{num_classes} classes: expected ({num_classes},) "
            f"(end with {{type: dense, units: {num_classes}}})"
        )
    return BuiltModel(Layers(modules), infos, input_chw(model_config), shape)


def _build_layers(
    specs: list[Any], shape: Shape, prefix: str
) -> tuple[OrderedDict[str, nn.Module], list[LayerInfo], Shape]:
    """A list of layer specs as named modules (conv2d_1, dense_2, ...), their summary rows and
    the output shape; ``prefix`` is the key path of the list in the config."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    infos: list[LayerInfo] = []
    counts: dict[str, int] = {}
    for index, spec in enumerate(specs):
        where = f"{prefix}[{index}]"
        counts[spec.type] = counts.get(spec.type, 0) + 1
        name = f"{spec.type}_{counts[spec.type]}"
        inner: tuple[LayerInfo, ...] = ()
        try:
            if isinstance(spec, C.Residual):
                layer, shape, inner = _residual(spec, shape, where)
            else:
                layer, shape = _build_layer(spec, shape, where)
        except (RuntimeError, MemoryError) as err:  # e.g. units: 100000000000
            raise ConfigError(
                f"{where}: cannot allocate this {spec.type} layer's weights for input shape "
                f"{hwc(shape)}: {str(err).splitlines()[0][:200]}"
            ) from None
        modules[name] = layer
        params = sum(p.numel() for p in layer.parameters())
        trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        infos.append(LayerInfo(name, type(spec).__name__, shape, params, trainable, inner))
    return modules, infos, shape


def _build_layer(spec: Any, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    builder = _BUILDERS[type(spec)]
    return builder(spec, shape, where)


def _with_activation(layer: nn.Module, activation: str) -> nn.Module:
    if activation == "linear":
        return layer
    return nn.Sequential(OrderedDict(layer=layer, activation=ACTIVATIONS[activation]()))


class Layers(nn.Sequential):
    """The layers of a model (or of a residual block's body), run in order as by
    ``nn.Sequential``, with two exact shortcuts while training:

    * A layer whose activation is ReLU (or a ReLU layer) followed by max-pooling pools first
      and applies the ReLU to the pooled map. Max-pooling commutes with ReLU (a monotone
      function): ``pool(relu(x)) == relu(pool(x))``, and the gradients are the same bits too:
      both send each window's gradient to the first position of its maximum when that
      maximum is positive and nowhere otherwise. The ReLU forward and backward then run on a
      quarter of the pixels (2x2 pooling): the reference CNN's epoch took 0.90x as long on an
      AMX Xeon and 0.91x on an AVX2 EPYC (2 cores each).
    * With :attr:`native_pooling` on (``training.native_kernels``; the Trainer sets it), a
      2x2 max-pooling that dlcli.native takes runs dlcli's compiled kernel, fused with that
      moved ReLU: the same bits, in fewer passes over memory. Before a flatten it writes NCHW
      memory, so the flatten copies nothing. A convolution followed by such a pooling (the
      first layer on the data, 1-4 channels; a later one on a feature map whose channels are
      a multiple of 8) runs fused with it and its ReLU: its full-size map is never written,
      and its backward runs at the pooling's winners only (the same values up to float32
      rounding; see dlcli/native.py).

    Where anything could see the difference (a hook on either layer or a global module hook),
    in evaluation and without gradients, the layers run one after the other as written."""

    native_pooling = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            out: torch.Tensor = super().forward(x)
            return out
        layers: list[Any] = list(self._modules.values())
        pool_first = _pool_first(layers)
        native_pools = _native_pools(layers) if self.native_pooling else frozenset()
        if not pool_first and not native_pools:
            out = super().forward(x)
            return out
        fused = _conv_pools(layers, native_pools)
        index = 0
        while index < len(layers):
            layer = layers[index]
            conv = fused.get(index)
            if conv is not None and native.takes_image(x, conv.conv, conv.padding):
                x = native.conv_max_pool2x2(x, conv.conv, conv.padding, conv.relu)
                index += 2
            elif index in pool_first:
                relu, before = (
                    (layer, x) if type(layer) is nn.ReLU else (layer.activation, layer.layer(x))
                )
                pool = layers[index + 1]
                if index + 1 in native_pools and native.takes(before):
                    x = native.max_pool2x2(before, True, _flattens(layers, index + 2))
                else:
                    x = relu(pool(before))
                index += 2
            else:
                if index in native_pools and native.takes(x):
                    x = native.max_pool2x2(x, False, _flattens(layers, index + 1))
                else:
                    x = layer(x)
                index += 1
        return x


def _flattens(layers: list[Any], index: int) -> bool:
    """Whether ``layers[index]`` is a :class:`Flatten` with nothing hooked: a pooling kernel
    before it writes NCHW memory, which the flatten views instead of copying."""
    return index < len(layers) and type(layers[index]) is Flatten and not has_hooks(layers[index])


def native_pooling(model: nn.Module, on: bool) -> None:
    """Turn dlcli's compiled 2x2 max-pooling (see :class:`Layers`) on or off for every
    :class:`Layers` in ``model``."""
    for module in model.modules():
        if isinstance(module, Layers):
            module.native_pooling = on


def has_native_pool(model: nn.Module) -> bool:
    """Whether ``model`` has a max-pooling that dlcli's kernel could run (2x2, stride 2)."""
    return any(native.pools(module) for module in model.modules())


def _native_pools(layers: list[Any]) -> frozenset[int]:
    """The indices of the max-pooling layers dlcli's kernel may run: a 2x2 MaxPool2d with
    nothing hooked (none while a global module hook is registered)."""
    found = [
        index for index, layer in enumerate(layers) if native.pools(layer) and not has_hooks(layer)
    ]
    if not found or global_hooks():
        return frozenset()
    return frozenset(found)


@dataclass(frozen=True)
class FusedConv:
    """A convolution layer as :func:`_conv2d` builds it, taken apart for dlcli's fused
    convolution + max-pooling kernel: the ``nn.Conv2d``, the zero padding before it (left,
    right, top, bottom) and whether its ReLU comes with it."""

    conv: nn.Conv2d
    padding: tuple[int, int, int, int]
    relu: bool


def _conv_pools(layers: list[Any], native_pools: frozenset[int]) -> dict[int, FusedConv]:
    """The layers dlcli's fused kernel may run together with the native max-pooling after
    them, by index: convolutions it :func:`native.convolves`, linear or with their ReLU,
    nothing hooked (:func:`native.takes_image` then checks what comes in)."""
    found = {}
    for index in range(len(layers) - 1):
        if index + 1 in native_pools and not any(has_hooks(m) for m in layers[index].modules()):
            fused = _fused_conv(layers[index])
            if fused is not None:
                found[index] = fused
    return found


def fused_layers(model: nn.Module) -> dict[int, FusedConv]:
    """The convolutions of ``model`` (by index in its layers) that dlcli's fused kernel could
    run with the 2x2 max-pooling after each (see :class:`Layers`)."""
    if not isinstance(model, Layers):
        return {}
    layers = list(model._modules.values())
    pools = frozenset(index for index, layer in enumerate(layers) if native.pools(layer))
    return _conv_pools(layers, pools)


def has_fused_conv(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution that dlcli's fused kernel could run."""
    return bool(fused_layers(model))


def _fused_conv(layer: Any) -> FusedConv | None:
    relu = False
    if type(layer) is nn.Sequential and list(layer._modules) == ["layer", "activation"]:
        if type(layer.activation) is not nn.ReLU:
            return None
        layer, relu = layer.layer, True
    padding = (0, 0, 0, 0)
    if type(layer) is nn.Sequential and list(layer._modules) == ["conv"]:
        layer = layer.conv
    elif type(layer) is nn.Sequential and list(layer._modules) == ["pad", "conv"]:
        if type(layer.pad) is not nn.ZeroPad2d:
            return None
        left, right, top, bottom = layer.pad.padding
        padding, layer = (left, right, top, bottom), layer.conv
    return FusedConv(layer, padding, relu) if native.convolves(layer) else None


def _pool_first(layers: list[Any]) -> frozenset[int]:
    """The indices of the layers whose ReLU can run after the max-pooling that follows them
    (see :class:`Layers`): none while a global module hook is registered."""
    found = [
        index
        for index in range(len(layers) - 1)
        if _is_max_pool(layers[index + 1]) and _is_relu_layer(layers[index])
    ]
    if not found or global_hooks():
        return frozenset()
    return frozenset(found)


def _is_relu_layer(module: Any) -> bool:
    """A ReLU layer, or a layer with its ReLU as :func:`_with_activation` builds it, nothing
    hooked."""
    if type(module) is nn.ReLU:
        return not has_hooks(module)
    return (
        type(module) is nn.Sequential
        and list(module._modules) == ["layer", "activation"]
        and type(module.activation) is nn.ReLU
        and not any(has_hooks(m) for m in module.modules())
    )


def _is_max_pool(module: Any) -> bool:
    """Max-pooling as :func:`_pool` builds it (alone, or after replication padding), nothing
    hooked."""
    if type(module) is nn.Sequential and list(module._modules) == ["pad", "pool"]:
        if type(module.pad) is not nn.ReplicationPad2d:
            return False
        pool = module.pool
    else:
        pool = module
    return (
        type(pool) is nn.MaxPool2d
        and not pool.return_indices
        and not any(has_hooks(m) for m in module.modules())
    )


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def has_hooks(module: nn.Module) -> bool:
    """Whether anything hooks the module's forward or backward: the dicts ``register_*_hook``
    fills (an attribute this torch does not have counts as a hook)."""
    return any(getattr(module, name, True) for name in _HOOKS)


def global_hooks() -> bool:
    """Whether a hook on every module is registered (``register_module_forward_hook``...)."""
    from torch.nn.modules import module

    return any(getattr(module, "_global" + name, True) for name in _HOOKS)


def _glorot(layer: nn.Linear | nn.Conv2d) -> None:
    # Keras / KotlinDL defaults: Glorot-uniform weights, zero biases.
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _need_image(shape: Shape, where: str, kind: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ConfigError(
            f"{where}: {kind} expects an image input (height, width, channels), "
            f"found flat shape {hwc(shape)}; put it before the flatten layer"
        )
    return shape[0], shape[1], shape[2]


def _pair(value: int | list[int], where: str, key: str) -> tuple[int, int]:
    pair = [value, value] if isinstance(value, int) else list(value)
    if len(pair) != 2 or any(v <= 0 for v in pair):
        raise ConfigError(f"{where}.{key}: expected a positive integer or [h, w], found {value}")
    return pair[0], pair[1]


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding that gives ceil(size / stride) outputs, as TensorFlow does."""
    total = max((_out_size(size, kernel, stride, "same") - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _spatial(
    shape: Shape, kernel: tuple[int, int], stride: tuple[int, int], padding: str, where: str
) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """Output (H, W) of a windowed layer, and the (left, right, top, bottom) padding that
    'same' needs (None when it needs none)."""
    _, height, width = shape
    if padding == "valid" and (kernel[0] > height or kernel[1] > width):
        raise ConfigError(
            f"{where}: window {kernel[0]}x{kernel[1]} is larger than its input "
            f"{height}x{width} (padding valid); use a smaller kernel or padding: same"
        )
    if padding == "same" and (kernel[0] > 2 * height + 1 or kernel[1] > 2 * width + 1):
        # padding more than the input on a side computes nothing more, only pads: a
        # pool_size of 10**9 overflowed torch's storage size (exit 1)
        raise ConfigError(
            f"{where}: window {kernel[0]}x{kernel[1]} is more than twice its input "
            f"{height}x{width} plus one (padding same would pad more than the input on each "
            f"side); use a window of at most {2 * height + 1}x{2 * width + 1}"
        )
    out = (
        _out_size(height, kernel[0], stride[0], padding),
        _out_size(width, kernel[1], stride[1], padding),
    )
    if padding == "valid":
        return out, None
    top, bottom = _same_padding(height, kernel[0], stride[0])
    left, right = _same_padding(width, kernel[1], stride[1])
    if top == bottom == left == right == 0:
        return out, None
    return out, (left, right, top, bottom)


def _flatten(spec: C.Flatten, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    size = 1
    for dim in shape:
        size *= dim
    return Flatten(), (size,)


class Flatten(nn.Flatten):
    """``nn.Flatten`` (features in (C, H, W) order, as Keras' channels-first flatten and every
    saved dlcli model have them) whose gradient goes back in its input's memory layout.

    Flattening a channels_last image copies it into (C, H, W) order, and autograd hands the
    gradient back in that order, NCHW: every layer before the flatten then gets its gradient
    in one layout and its saved tensors in the other, and an elementwise backward over mixed
    layouts is many times slower (ReLU's backward on 100x16x28x28: 8.9 ms against 0.45 ms on
    the 2-core benchmark CPU). Giving the gradient back in channels_last keeps the whole
    backward in one layout: the same numbers, for one copy of the flat gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.requires_grad and _channels_last_only(x):
            out: torch.Tensor = _FlattenKeepingLayout.apply(x)
            return out
        return super().forward(x)


def _channels_last_only(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last and not also plain contiguous (C, H or W of 1)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


class _FlattenKeepingLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


def _dense(spec: C.Dense, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    if len(shape) != 1:
        raise ConfigError(
            f"{where}: dense expects a flat input, found shape {hwc(shape)} "
            "(height, width, channels); "
            "add {type: flatten} (or global_avg_pool2d) before it"
        )
    layer = nn.Linear(shape[0], spec.units, bias=spec.use_bias)
    _glorot(layer)
    return _with_activation(layer, spec.activation), (spec.units,)


def _conv2d(spec: C.Conv2d, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    channels, _, _ = _need_image(shape, where, "conv2d")
    kernel = _pair(spec.kernel_size, where, "kernel_size")
    stride = _pair(spec.strides, where, "strides")
    (height, width), pad = _spatial(shape, kernel, stride, spec.padding, where)
    # Symmetric 'same' padding (odd kernel, stride 1) is done by the convolution itself: the
    # same maths as ZeroPad2d + conv without copying the input every step (~5% of a CNN step
    # on a CPU). The Sequential keeps the parameter names (...layer.conv.weight) either way.
    symmetric = pad is not None and pad[0] == pad[1] and pad[2] == pad[3]
    own_padding = (pad[2], pad[0]) if pad is not None and symmetric else 0
    conv = nn.Conv2d(channels, spec.filters, kernel, stride, own_padding, bias=spec.use_bias)
    _glorot(conv)
    layer: nn.Module = conv
    if pad is not None and symmetric:
        layer = nn.Sequential(OrderedDict(conv=conv))
    elif pad is not None:
        layer = nn.Sequential(OrderedDict(pad=nn.ZeroPad2d(pad), conv=conv))
    return _with_activation(layer, spec.activation), (spec.filters, height, width)


def _pool(
    spec: C.MaxPool2d | C.AvgPool2d, shape: Shape, where: str, cls: type[nn.Module]
) -> tuple[nn.Module, Shape]:
    channels, _, _ = _need_image(shape, where, spec.type)
    kernel = _pair(spec.pool_size, where, "pool_size")
    stride = kernel if spec.strides is None else _pair(spec.strides, where, "strides")
    (height, width), pad = _spatial(shape, kernel, stride, spec.padding, where)
    if cls is nn.AvgPool2d:
        pool: nn.Module = nn.AvgPool2d(kernel, stride)
    else:
        pool = nn.MaxPool2d(kernel, stride)
    if pad is not None:
        # Keras pads max-pooling with -inf and excludes padding from averages; replicate
        # padding is a close, simple stand-in for both at the border.
        pool = nn.Sequential(OrderedDict(pad=nn.ReplicationPad2d(pad), pool=pool))
    return pool, (channels, height, width)


def _max_pool(spec: C.MaxPool2d, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    return _pool(spec, shape, where, nn.MaxPool2d)


def _avg_pool(spec: C.AvgPool2d, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    return _pool(spec, shape, where, nn.AvgPool2d)


def _global_avg_pool(spec: C.GlobalAvgPool2d, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    channels, _, _ = _need_image(shape, where, "global_avg_pool2d")
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten()), (channels,)


def _dropout(spec: C.Dropout, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    return nn.Dropout(spec.rate), shape


def _batch_norm(spec: C.BatchNorm, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    if len(shape) == 3:
        return nn.BatchNorm2d(shape[0], eps=spec.epsilon, momentum=spec.momentum), shape
    return nn.BatchNorm1d(shape[0], eps=spec.epsilon, momentum=spec.momentum), shape


def _activation(spec: C.Activation, shape: Shape, where: str) -> tuple[nn.Module, Shape]:
    if spec.activation == "linear":
        return nn.Identity(), shape
    return ACTIVATIONS[spec.activation](), shape


class ResidualBlock(nn.Module):
    """``activation(body(x) + shortcut(x))``: the shortcut is the identity, or a projection
    when the body changes the shape."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.activation(self.body(x) + self.shortcut(x))
        return out


def _residual(
    spec: C.Residual, shape: Shape, where: str
) -> tuple[nn.Module, Shape, tuple[LayerInfo, ...]]:
    """The block, its output shape, and summary rows for its layers and projection."""
    if not spec.layers:
        raise ConfigError(f"{where}.layers: a residual block needs at least one layer")
    body, infos, out = _build_layers(spec.layers, shape, f"{where}.layers")
    shortcut = _projection(shape, out, where)
    params = sum(p.numel() for p in shortcut.parameters())
    if not isinstance(shortcut, nn.Identity):
        infos.append(LayerInfo("shortcut", "Projection", out, params, params))
    activation = nn.Identity() if spec.activation == "linear" else ACTIVATIONS[spec.activation]()
    return ResidualBlock(Layers(body), shortcut, activation), out, tuple(infos)


def _projection(shape: Shape, out: Shape, where: str) -> nn.Module:
    """What carries the block's input to its output shape: nothing when they match, a dense
    layer for flat shapes, a strided 1x1 convolution for images (ResNet's projection)."""
    if shape == out:
        return nn.Identity()
    if len(shape) == 1 and len(out) == 1:
        layer = nn.Linear(shape[0], out[0])
        _glorot(layer)
        return layer
    if len(shape) == 3 and len(out) == 3:
        strides = [-(-size // max(o, 1)) for size, o in zip(shape[1:], out[1:], strict=True)]
        reached = tuple(-(-size // s) for size, s in zip(shape[1:], strides, strict=True))
        if reached == out[1:]:
            conv = nn.Conv2d(shape[0], out[0], 1, (strides[0], strides[1]))
            _glorot(conv)
            return conv
    raise ConfigError(
        f"{where}: a residual block's layers turn its input shape {hwc(shape)} into "
        f"{hwc(out)}, which no projection (a strided 1x1 convolution for images, a dense "
        "layer for flat inputs) can match; keep the block's output an image of the same or a "
        "divided size, or flat if its input is"
    )


_BUILDERS: dict[type[Any], Callable[[Any, Shape, str], tuple[nn.Module, Shape]]] = {
    C.Flatten: _flatten,
    C.Dense: _dense,
    C.Conv2d: _conv2d,
    C.MaxPool2d: _max_pool,
    C.AvgPool2d: _avg_pool,
    C.GlobalAvgPool2d: _global_avg_pool,
    C.Dropout: _dropout,
    C.BatchNorm: _batch_norm,
    C.Activation: _activation,
}


def _difference(name: str, tensor: torch.Tensor, like: torch.Tensor) -> str | None:
    """How a weights file's tensor differs from the model's: its shape, else its dtype."""
    if tuple(tensor.shape) != tuple(like.shape):
        return f"{name} is {tuple(tensor.shape)}, the model expects {tuple(like.shape)}"
    if tensor.dtype != like.dtype:
        found, expected = (str(t.dtype).removeprefix("torch.") for t in (tensor, like))
        return f"{name} is {found}, the model expects {expected}"
    return None


def weights_mismatch(
    found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], shown: int = 3
) -> str | None:
    """Why the tensors ``found`` in a weights file cannot be loaded into a model whose
    ``state_dict()`` is ``expected`` (or None when they can): the first ``shown`` tensors that
    differ in shape or dtype (loading would cast them silently), hold NaN or infinite values,
    are missing or are unexpected, each named, on one line."""
    problems = [
        problem
        for name, tensor in found.items()
        if name in expected and (problem := _difference(name, tensor, expected[name]))
    ]
    # Of the right kind, but not numbers a model can score with: NaN or infinite values.
    problems += [
        f"{name} holds values that are not finite (NaN or infinite)"
        for name, tensor in found.items()
        if name in expected
        and _difference(name, tensor, expected[name]) is None
        and tensor.is_floating_point()
        and not bool(torch.isfinite(tensor).all())
    ]
    problems += [f"{name} is missing" for name in expected if name not in found]
    problems += [f"{name} is not a tensor of this model" for name in found if name not in expected]
    if not problems:
        return None
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")
