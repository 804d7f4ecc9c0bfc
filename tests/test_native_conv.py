"""dlcli's convolutions fused with their ReLU and 2x2 max-pooling (dlcli/native.py,
dlcli/kernels.c): on the data (a first layer, 1-4 channels, no input gradient) and on
feature maps (channels a multiple of 8, with the input's gradient). Torch's values up to
float32 (or bf16) rounding, and the same bits where the arithmetic is exact; gradients that
do not depend on the number of threads; torch's convolution wherever the kernels do not
apply."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcli import native
from dlcli.config import parse_config
from dlcli.model import Layers, build_model, fused_layers, has_fused_conv, native_pooling

pytestmark = pytest.mark.usefixtures("native_kernels")

Pad = tuple[int, int, int, int]  # left, right, top, bottom, before the convolution

# in channels, filters, kernel, the convolution's own padding, padding before it, image size
SHAPES: list[tuple[int, int, Any, int, Pad, tuple[int, int]]] = [
    (1, 16, 3, 1, (0, 0, 0, 0), (28, 28)),  # the reference CNN's first layer
    (1, 16, 5, 0, (0, 0, 0, 0), (28, 28)),  # the MNIST speedrun's
    (3, 32, 3, 1, (0, 0, 0, 0), (32, 32)),  # a colour image
    (2, 24, (2, 4), 0, (1, 2, 0, 1), (9, 11)),  # no special case; asymmetric padding
    (4, 8, 1, 0, (0, 0, 0, 0), (7, 5)),  # odd sizes: a row and a column pooled away
    (1, 8, 2, 0, (0, 1, 0, 1), (6, 6)),  # an even kernel's "same" padding
]
# feature maps (the input needs a gradient): the kernel vectorised over input channels
MAPS: list[tuple[int, int, Any, int, Pad, tuple[int, int]]] = [
    (16, 32, 3, 1, (0, 0, 0, 0), (14, 14)),  # the reference CNN's second layer
    (16, 32, 5, 0, (0, 0, 0, 0), (12, 12)),  # the MNIST speedrun's
    (32, 16, 3, 1, (0, 0, 0, 0), (9, 7)),  # 16 channels at a time, no special case; odd sizes
    (8, 16, (2, 4), 0, (1, 2, 0, 1), (9, 11)),  # 8 at a time; asymmetric padding
    (24, 8, 1, 0, (0, 0, 0, 0), (5, 7)),
]


def _conv(ci: int, f: int, kernel: Any, padding: int, bias: bool, kind: str) -> nn.Conv2d:
    torch.manual_seed(1)
    conv = nn.Conv2d(ci, f, kernel, padding=padding, bias=bias)
    if kind == "integers":  # exact sums in any order
        with torch.no_grad():
            for p in conv.parameters():
                p.copy_(torch.randint(-3, 4, p.shape))
    return conv.to(memory_format=torch.channels_last)  # as dlcli trains a CNN


def _images(n: int, ci: int, size: tuple[int, int], kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    if kind == "random":
        x = torch.rand(n, ci, *size, generator=generator)
    elif kind == "integers":
        x = torch.randint(0, 4, (n, ci, *size), generator=generator).float()
    else:
        x = torch.zeros(n, ci, *size)  # blank: every window a tie at the bias
    return x.contiguous(memory_format=torch.channels_last)  # as a feature map comes


def _run(
    conv: nn.Conv2d, x: torch.Tensor, pad: Pad, relu: bool, grad: torch.Tensor | None, ours: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The pooled map and the parameters' gradients (and the input's, where ``x`` needs one),
    by the kernel or by torch; and the output gradient used (random, or integers for integer
    data)."""
    conv.zero_grad(set_to_none=True)
    if x.requires_grad:
        x = x.detach().requires_grad_()  # a leaf of its own for each run
    if ours:
        assert native.takes_image(x, conv, pad)
        out = native.conv_max_pool2x2(x, conv, pad, relu)
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        out = F.max_pool2d(conv(F.pad(x, pad)), 2)
        out = torch.relu(out) if relu else out
    if grad is None:
        grad = torch.randint(-2, 3, out.shape, generator=torch.Generator().manual_seed(3))
        grad = grad.float()
    out.backward(grad.to(out.dtype))
    grads = [p.grad for p in conv.parameters() if p.grad is not None]
    return [out.detach(), *grads, *([x.grad] if x.grad is not None else [])], grad


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}")
@pytest.mark.parametrize("kind", ["random", "integers", "blank"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_torchs_values(shape: tuple[Any, ...], kind: str, relu: bool, bias: bool) -> None:
    ci, f, kernel, padding, pad, size = shape
    conv, x = _conv(ci, f, kernel, padding, bias, kind), _images(5, ci, size, kind)
    ours, grad = _run(conv, x, pad, relu, None, True)
    theirs, _ = _run(conv, x, pad, relu, grad, False)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for a, b in zip(ours, theirs, strict=True):
        if kind == "random":  # the same up to float32 rounding
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
        else:  # exact arithmetic: the same winners, the same bits
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}")
@pytest.mark.parametrize("kind", ["random", "integers", "blank"])
@pytest.mark.parametrize("relu", [True, False])
def test_autocasts_values_in_bf16(shape: tuple[Any, ...], kind: str, relu: bool) -> None:
    """Under bf16 autocast: the input, weights and bias rounded to bf16, float32 sums, each
    output rounded to bf16, as torch's bf16 convolution computes; the pooled map is bf16.
    The gradients are float32 sums; autocast's are rounded to bf16."""
    ci, f, kernel, padding, pad, size = shape
    conv, x = _conv(ci, f, kernel, padding, True, kind), _images(5, ci, size, kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, grad = _run(conv, x, pad, relu, None, True)
        theirs, _ = _run(conv, x, pad, relu, grad, False)
    assert ours[0].dtype == theirs[0].dtype == torch.bfloat16
    assert [t.dtype for t in ours[1:]] == [t.dtype for t in theirs[1:]] == [torch.float32] * 2
    if kind == "random":  # the same outputs but where float32 sums in another order round
        # to the other side of a bf16 value; gradients within bf16's rounding
        close = torch.isclose(ours[0].float(), theirs[0].float(), rtol=2**-7, atol=0.0)
        assert bool(close.all()) and float((ours[0] == theirs[0]).float().mean()) > 0.99
        for a, b in zip(ours[1:], theirs[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=2**-7, atol=2**-7 * float(b.abs().max()))
    else:  # exact sums: the same bits, once ours are rounded to bf16 as autocast's are
        assert torch.equal(ours[0], theirs[0])
        for a, b in zip(ours[1:], theirs[1:], strict=True):
            assert torch.equal(a.bfloat16().float(), b)


@pytest.mark.parametrize("shape", MAPS, ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}")
@pytest.mark.parametrize("kind", ["random", "integers", "blank"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_torchs_values_on_feature_maps(
    shape: tuple[Any, ...], kind: str, relu: bool, bias: bool
) -> None:
    """A later layer: the weight, bias and input gradients from the pooling's winners only."""
    ci, f, kernel, padding, pad, size = shape
    conv = _conv(ci, f, kernel, padding, bias, kind)
    x = _images(5, ci, size, kind).requires_grad_()
    ours, grad = _run(conv, x, pad, relu, None, True)
    theirs, _ = _run(conv, x, pad, relu, grad, False)
    assert len(ours) == len(theirs) == (4 if bias else 3)  # with the input's gradient
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        # blank maps: every window a tie, exact sums but for the input gradient's (the
        # random weights times integer gradients, summed in another order)
        if kind == "random" or (kind == "blank" and index == len(ours) - 1):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape", MAPS[:2] + MAPS[3:4], ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}")
@pytest.mark.parametrize("kind", ["random", "integers"])
def test_autocasts_values_on_feature_maps_in_bf16(shape: tuple[Any, ...], kind: str) -> None:
    ci, f, kernel, padding, pad, size = shape
    conv = _conv(ci, f, kernel, padding, True, kind)
    x = _images(5, ci, size, kind).bfloat16().requires_grad_()  # what a bf16 layer hands on
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, grad = _run(conv, x, pad, True, None, True)
        theirs, _ = _run(conv, x, pad, True, grad, False)
    assert [t.dtype for t in ours] == [t.dtype for t in theirs]
    assert ours[-1].dtype == torch.bfloat16  # the input's gradient, in the input's dtype
    if kind == "random":
        close = torch.isclose(ours[0].float(), theirs[0].float(), rtol=2**-7, atol=0.0)
        assert bool(close.all()) and float((ours[0] == theirs[0]).float().mean()) > 0.99
        for a, b in zip(ours[1:], theirs[1:], strict=True):
            a, b = a.float(), b.float()
            torch.testing.assert_close(a, b, rtol=2**-7, atol=2**-7 * float(b.abs().max()))
    else:  # exact sums; ours rounded to bf16 where autocast's are
        assert all(
            torch.equal(a.bfloat16(), b.bfloat16()) for a, b in zip(ours, theirs, strict=True)
        )


def test_no_input_gradient_where_none_is_asked() -> None:
    """A feature-map layer whose input needs no gradient (a frozen part before it) computes
    only the weight and bias ones."""
    conv, x = _conv(8, 16, 3, 1, True, "integers"), _images(3, 8, (6, 6), "integers")
    ours, grad = _run(conv, x, (0, 0, 0, 0), True, None, True)
    theirs, _ = _run(conv, x, (0, 0, 0, 0), True, grad, False)
    assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_gradient_in_another_layout_is_taken() -> None:
    conv, x = _conv(1, 8, 3, 1, True, "integers"), _images(2, 1, (6, 6), "integers")
    grad = torch.randint(-2, 3, (2, 8, 3, 3)).float()  # contiguous (NCHW), not channels_last
    ours, _ = _run(conv, x, (0, 0, 0, 0), True, grad, True)
    theirs, _ = _run(conv, x, (0, 0, 0, 0), True, grad, False)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_the_same_gradients_on_any_number_of_threads() -> None:
    """Summed per image, then over the images in order: a run and its resume (or a rerun on
    another thread count) get the same bits."""
    conv, x = _conv(1, 16, 3, 1, True, "random"), _images(37, 1, (28, 28), "random")
    grad = torch.randn(37, 16, 14, 14, generator=torch.Generator().manual_seed(4))
    maps = _conv(16, 32, 3, 1, True, "random")
    x_maps = _images(37, 16, (14, 14), "random").requires_grad_()
    grad_maps = torch.randn(37, 32, 7, 7, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(
                _run(conv, x, (0, 0, 0, 0), True, grad, True)[0]
                + _run(maps, x_maps, (0, 0, 0, 0), True, grad_maps, True)[0]
            )
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_not_a_second_derivative() -> None:
    conv, x = _conv(1, 8, 3, 1, True, "random"), _images(2, 1, (6, 6), "random")
    out = native.conv_max_pool2x2(x, conv, (0, 0, 0, 0), True)
    outer = torch.ones_like(out).requires_grad_()  # a gradient that is itself differentiated
    (grad,) = torch.autograd.grad(out, conv.weight, grad_outputs=outer, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_what_it_convolves() -> None:
    assert native.convolves(nn.Conv2d(1, 16, 3, padding=1))
    assert native.convolves(nn.Conv2d(4, 8, (1, 16), bias=False))
    assert native.convolves(nn.Conv2d(16, 32, 3, padding=1))  # a feature map's
    assert native.convolves(nn.Conv2d(8, 8, (1, 17)))  # any width on feature maps
    for other in (
        nn.Conv2d(5, 8, 3),  # neither a first layer's few channels nor a multiple of 8
        nn.Conv2d(12, 8, 3),
        nn.Conv2d(1, 12, 3),  # filters not a multiple of 8
        nn.Conv2d(1, 8, 3, stride=2),
        nn.Conv2d(1, 8, 3, dilation=2),
        nn.Conv2d(2, 8, 3, groups=2),
        nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(1, 8, 3, padding="same"),
        nn.Conv2d(4, 8, (1, 17)),  # wider than the kernel's 64 taps a row
        nn.Conv2d(1, 8, 3).double(),
        nn.ConvTranspose2d(1, 8, 3),
    ):
        assert not native.convolves(other), other


def test_what_it_takes() -> None:
    conv, x, pad = nn.Conv2d(1, 8, 3), torch.rand(2, 1, 6, 6), (0, 0, 0, 0)
    assert native.takes_image(x, conv, pad)
    assert native.takes_image(x.contiguous(memory_format=torch.channels_last), conv, pad)
    assert not native.takes_image(x.clone().requires_grad_(), conv, pad)  # not the data
    assert not native.takes_image(x.double(), conv, pad)
    assert not native.takes_image(torch.rand(2, 2, 6, 6), conv, pad)  # another channel count
    assert not native.takes_image(torch.rand(2, 1, 3, 3), conv, pad)  # no pooled pixel
    assert native.takes_image(torch.rand(2, 1, 3, 3), conv, (1, 0, 1, 0))  # padded to one
    assert not native.takes_image(torch.rand(0, 1, 6, 6), conv, pad)
    maps, y = nn.Conv2d(8, 8, 3), torch.rand(2, 8, 6, 6)
    assert native.takes_image(y, maps, pad) and native.takes_image(y.requires_grad_(), maps, pad)
    assert not native.takes_image(y.bfloat16(), maps, pad)  # bf16 only under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native.takes_image(y.bfloat16(), maps, pad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native.takes_image(x, conv, pad)  # computed as autocast computes it
    with torch.autocast("cpu", dtype=torch.float16):
        assert not native.takes_image(x, conv, pad)  # no float16 version


# --- in a model ------------------------------------------------------------------------------


def _cnn(first: dict[str, Any], channels: int = 1) -> Layers:
    layers: list[dict[str, Any]] = [
        first,
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ]
    model = {"input_shape": [16, 16, channels], "layers": layers}
    raw = {"data": {"dataset": "mnist"}, "model": model}
    torch.manual_seed(0)
    module = build_model(parse_config(raw).model, 10).module
    assert isinstance(module, Layers)
    return module.to(memory_format=torch.channels_last)  # type: ignore[no-any-return]


FIRST = {  # the first layer as the configs write it, each a shape of layer the kernel takes
    "same, relu": {
        "type": "conv2d",
        "filters": 8,
        "kernel_size": 3,
        "padding": "same",
        "activation": "relu",
    },
    "valid, linear": {"type": "conv2d", "filters": 16, "kernel_size": 5},
    "even same": {
        "type": "conv2d",
        "filters": 8,
        "kernel_size": 4,
        "padding": "same",
        "activation": "relu",
    },
    "no bias": {"type": "conv2d", "filters": 8, "kernel_size": 3, "use_bias": False},
}


def _step(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    module.zero_grad(set_to_none=True)
    out = module(x)
    nn.functional.cross_entropy(out, torch.arange(len(x)) % 10).backward()
    return [out.detach()] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each call of the fused kernel (its relu flag)."""
    calls: list[bool] = []
    kernel = native.conv_max_pool2x2

    def counted(x: torch.Tensor, conv: nn.Conv2d, pad: Pad, relu: bool) -> torch.Tensor:
        calls.append(relu)
        return kernel(x, conv, pad, relu)

    monkeypatch.setattr(native, "conv_max_pool2x2", counted)
    return calls


@pytest.mark.parametrize("first", FIRST)
def test_a_model_steps_as_with_torchs_convolution(
    first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _cnn(FIRST[first])
    assert has_fused_conv(module)
    module.train()
    x = torch.rand(6, 1, 16, 16)
    plain = _step(module, x)
    calls = _counting(monkeypatch)
    native_pooling(module, True)
    fast = _step(module, x)
    # the first layer and the second (8 or 16 channels in, with its ReLU)
    assert calls == [FIRST[first].get("activation") == "relu", True]
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_what_runs_fused_in_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _cnn(FIRST["same, relu"])
    assert list(fused_layers(module)) == [0, 2]
    native_pooling(module, True)
    calls = _counting(monkeypatch)
    x = torch.rand(2, 1, 16, 16)
    module(x.clone().requires_grad_())  # an input with a gradient: the second layer only
    assert calls == [True]
    module.eval()
    module(x)
    module.train()
    with torch.no_grad():
        module(x)
    assert calls == [True]  # not in evaluation, not without gradients
    seen: list[tuple[int, ...]] = []
    hook = module[0].register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape)))
    module(x)
    assert seen == [(2, 8, 16, 16)]  # the hooked convolution ran as torch's, full size
    hook.remove()
    assert calls == [True, True]
    module(x)
    assert calls == [True, True, True, True]
    # 5 channels in: not the image kernel's; the second layer's 8 are the feature maps'
    assert list(fused_layers(_cnn(FIRST["same, relu"], channels=5))) == [2]
    assert not has_fused_conv(module[0])  # not a model


def test_under_bf16_autocast_the_kernel_runs_too(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _cnn(FIRST["same, relu"])
    native_pooling(module, True)
    calls = _counting(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.rand(2, 1, 16, 16))
    assert calls == [True, True] and out.dtype == torch.bfloat16


def test_a_wrong_result_fails_the_self_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load checks the fused kernel too: a convolution off by one anywhere means
    neither kernel is used."""
    kernel = native.conv_max_pool2x2

    def off(x: torch.Tensor, conv: nn.Conv2d, pad: Pad, relu: bool) -> torch.Tensor:
        out = kernel(x, conv, pad, relu)
        return out + (out == out.max()).float()

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "conv_max_pool2x2", off)
    assert native.unavailable() == "the compiled kernel failed its self-test against torch"
    assert not native.takes_image(torch.rand(2, 1, 6, 6), nn.Conv2d(1, 8, 3), (0, 0, 0, 0))


def test_a_wrong_input_gradient_fails_the_self_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The feature-map kernel's input gradient is self-tested too."""
    backward = native._ConvMaxPool2x2.backward

    def off(ctx: Any, grad: torch.Tensor) -> Any:
        input_grad, *rest = backward(ctx, grad)
        return (None if input_grad is None else input_grad + 1, *rest)

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native._ConvMaxPool2x2, "backward", staticmethod(off))
    assert native.unavailable() == "the compiled kernel failed its self-test against torch"
