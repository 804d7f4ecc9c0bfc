"""Model building: every layer type, inferred shapes and parameter counts, impossible shapes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import check_forward

from dlcli.config import parse_config
from dlcli.errors import ConfigError
from dlcli.model import (
    Flatten,
    Layers,
    ResidualBlock,
    _pool_first,
    build_model,
    check_batch_norm_batches,
)


def model_cfg(layers: list[dict[str, Any]], input_shape: list[int] | None = None) -> Any:
    raw = {
        "data": {"dataset": "mnist"},
        "model": {"input_shape": input_shape or [28, 28, 1], "layers": layers},
    }
    return parse_config(raw).model


@pytest.mark.parametrize(
    ("layer", "shape", "params"),
    [
        ({"type": "flatten"}, (784,), 0),
        ({"type": "conv2d", "filters": 8, "kernel_size": 3}, (8, 26, 26), 80),
        ({"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"}, (8, 28, 28), 80),
        ({"type": "conv2d", "filters": 4, "kernel_size": [5, 3], "strides": 2}, (4, 12, 13), 64),
        (
            {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
            (4, 14, 14),
            40,
        ),
        ({"type": "conv2d", "filters": 4, "kernel_size": 3, "use_bias": False}, (4, 26, 26), 36),
        ({"type": "max_pool2d"}, (1, 14, 14), 0),
        ({"type": "max_pool2d", "pool_size": 3, "strides": 2}, (1, 13, 13), 0),
        ({"type": "max_pool2d", "pool_size": 3, "padding": "same"}, (1, 10, 10), 0),
        ({"type": "avg_pool2d", "pool_size": 4}, (1, 7, 7), 0),
        ({"type": "global_avg_pool2d"}, (1,), 0),
        ({"type": "dropout", "rate": 0.5}, (1, 28, 28), 0),
        ({"type": "batch_norm"}, (1, 28, 28), 2),
        ({"type": "activation", "activation": "gelu"}, (1, 28, 28), 0),
    ],
)
def test_layer_shapes_and_params(
    layer: dict[str, Any], shape: tuple[int, ...], params: int
) -> None:
    built = build_model(model_cfg([layer]))
    assert built.layers[0].output_shape == shape
    assert built.layers[0].params == params
    check_forward(built)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "softmax", "gelu", "linear"])
def test_dense_activations(activation: str) -> None:
    built = build_model(
        model_cfg([{"type": "flatten"}, {"type": "dense", "units": 7, "activation": activation}])
    )
    assert built.output_shape == (7,)
    check_forward(built)
    out = built.module(torch.rand(3, 1, 28, 28))
    if activation == "softmax":
        assert torch.allclose(out.sum(dim=1), torch.ones(3))
    if activation == "relu":
        assert (out >= 0).all()


def test_batch_norm_after_dense_is_1d() -> None:
    built = build_model(
        model_cfg([{"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "batch_norm"}])
    )
    assert built.layers[2].params == 10
    check_forward(built)


FLAT_BN = [{"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "batch_norm"}]
POOLED_BN = [{"type": "conv2d", "filters": 3, "kernel_size": 3}, {"type": "global_avg_pool2d"}]
IMAGE_BN = [{"type": "conv2d", "filters": 3, "kernel_size": 3}, {"type": "batch_norm"}]
IN_BLOCK = [{"type": "residual", "layers": [{"type": "dense", "units": 5}, {"type": "batch_norm"}]}]


@pytest.mark.parametrize(
    ("layers", "samples", "batch", "workers", "fragment"),
    [
        (FLAT_BN, 8, 7, 1, "leaves 1 sample in the epoch's last step"),
        (FLAT_BN, 8, 1, 1, "leaves 1 sample in each step"),
        (FLAT_BN, 1, 100, 1, "leaves 1 sample in each step"),
        ([*POOLED_BN, {"type": "batch_norm"}], 101, 100, 1, "the epoch's last step"),
        ([{"type": "flatten"}, *IN_BLOCK], 9, 4, 1, "the epoch's last step"),
        (FLAT_BN, 8, 3, 2, "leaves a worker 1 sample in the epoch's last step (2 samples)"),
        (FLAT_BN, 9, 9, 5, "leaves a worker 1 sample in each step"),
        (FLAT_BN, 9, 4, 2, "leaves a worker 1 sample in the epoch's last step,"),
        (FLAT_BN, 3, 100, 4, "leaves a worker 1 sample in each step"),  # 1, 1, 1 and none
        (FLAT_BN, 8, 4, 1, None),  # every step 4 samples
        (FLAT_BN, 12, 4, 2, None),  # 2 a worker
        (IMAGE_BN, 8, 7, 1, None),  # a 6x6 map: 36 values a channel from one image
    ],
)
def test_batch_norm_needs_two_values_a_channel_at_every_step(
    layers: list[dict[str, Any]], samples: int, batch: int, workers: int, fragment: str | None
) -> None:
    built = build_model(model_cfg(layers, [8, 8, 1]))
    if fragment is None:
        check_batch_norm_batches(built, samples, batch, workers)
        return
    with pytest.raises(ConfigError) as err:
        check_batch_norm_batches(built, samples, batch, workers)
    assert err.value.message.startswith(f"training.batch_size: {batch} on {samples} training")
    assert fragment in err.value.message and "batch_norm_1" in err.value.message


def test_seed_mlp_matches_kotlindl_summary() -> None:
    layers = [
        {"type": "flatten"},
        {"type": "dense", "units": 300, "activation": "relu"},
        {"type": "dense", "units": 100, "activation": "relu"},
        {"type": "dense", "units": 10},
    ]
    built = build_model(model_cfg(layers), num_classes=10)
    assert [i.params for i in built.layers] == [0, 235500, 30100, 1010]
    assert built.total_params == built.trainable_params == 266610


def test_multichannel_input() -> None:
    built = build_model(
        model_cfg([{"type": "conv2d", "filters": 2, "kernel_size": 1}], input_shape=[8, 6, 3])
    )
    assert built.input_shape == (3, 8, 6)
    assert built.layers[0].output_shape == (2, 8, 6)
    check_forward(built)


def test_kernel_larger_than_input_is_a_config_error() -> None:
    layers = [
        {"type": "max_pool2d", "pool_size": 8},
        {"type": "conv2d", "filters": 4, "kernel_size": 5},
    ]
    with pytest.raises(
        ConfigError, match=r"model.layers\[1\]: window 5x5 is larger than its input 3x3"
    ):
        build_model(model_cfg(layers))


def test_a_same_window_padding_more_than_its_input_is_a_config_error() -> None:
    """``max_pool2d`` with ``pool_size: 10**9, padding: same`` was exit 1 (torch's storage
    size overflowed padding the input); a window up to twice its input plus one still builds."""
    huge = [{"type": "max_pool2d", "pool_size": 10**9, "padding": "same"}]
    with pytest.raises(
        ConfigError,
        match=r"model.layers\[0\]: window 1000000000x1000000000 is more than twice its input "
        r"28x28 plus one",
    ):
        build_model(model_cfg(huge))
    conv = [{"type": "conv2d", "filters": 2, "kernel_size": 58, "padding": "same"}]
    with pytest.raises(ConfigError, match=r"at most 57x57"):
        build_model(model_cfg(conv))
    edge = [
        {"type": "max_pool2d", "pool_size": 28},
        {"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same"},
    ]
    built = build_model(model_cfg(edge))
    assert built.output_shape == (2, 1, 1)
    check_forward(built)


def test_dense_on_image_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.layers\[0\]: dense expects a flat input"):
        build_model(model_cfg([{"type": "dense", "units": 3}]))


def test_conv_after_flatten_is_a_config_error() -> None:
    layers = [{"type": "flatten"}, {"type": "conv2d", "filters": 2}]
    with pytest.raises(ConfigError, match=r"model.layers\[1\]: conv2d expects an image input"):
        build_model(model_cfg(layers))


def test_output_must_match_num_classes() -> None:
    layers = [{"type": "flatten"}, {"type": "dense", "units": 12}]
    with pytest.raises(ConfigError, match=r"outputs shape \(12,\), but the dataset has 10 classes"):
        build_model(model_cfg(layers), num_classes=10)


def test_same_seed_same_weights() -> None:
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10}]
    torch.manual_seed(3)
    a = build_model(model_cfg(layers)).module.state_dict()
    torch.manual_seed(3)
    b = build_model(model_cfg(layers)).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_layer_too_large_to_allocate_is_a_config_error() -> None:
    layers = [{"type": "flatten"}, {"type": "dense", "units": 100_000_000_000}]
    with pytest.raises(ConfigError, match=r"model.layers\[1\]: cannot allocate this dense layer"):
        build_model(model_cfg(layers))


CL = torch.channels_last


def _conv_flatten_net(flatten: torch.nn.Module) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        flatten,
        torch.nn.Linear(4 * 4 * 4, 3),
    )
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def test_flatten_gives_the_gradient_back_channels_last_with_the_same_numbers() -> None:
    x = torch.rand(5, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 0, 1])
    nets = {"dlcli": _conv_flatten_net(Flatten()), "torch": _conv_flatten_net(torch.nn.Flatten())}
    layouts = {}
    for name, net in nets.items():
        pooled = net[:3](x)
        seen: list[bool] = []  # the gradient as it arrives (retain_grad would re-lay it out)
        pooled.register_hook(lambda g, seen=seen: seen.append(g.is_contiguous(memory_format=CL)))
        torch.nn.functional.cross_entropy(net[3:](pooled), y).backward()
        layouts[name] = seen == [True]
    assert layouts == {"dlcli": True, "torch": False}  # torch's comes back NCHW
    for ours, theirs in zip(nets["dlcli"].parameters(), nets["torch"].parameters(), strict=True):
        assert ours.grad is not None and theirs.grad is not None
        assert torch.equal(ours.grad, theirs.grad)


def test_flatten_outside_training_or_of_plain_layouts_is_torchs() -> None:
    flatten = Flatten()
    image = torch.rand(2, 3, 4, 4, requires_grad=True)
    last = image.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert flatten(image).grad_fn.name() != "_FlattenKeepingLayoutBackward"  # NCHW input
    assert flatten(last).grad_fn.name() == "_FlattenKeepingLayoutBackward"
    with torch.no_grad():
        assert torch.equal(flatten(last), image.detach().flatten(1))
    flatten.eval()  # export and scoring see plain nn.Flatten
    assert flatten(last).grad_fn.name() != "_FlattenKeepingLayoutBackward"
    assert torch.equal(flatten(last), image.flatten(1))


def test_built_models_flatten_with_dlclis_flatten() -> None:
    conv, dense = {"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "dense", "units": 10}
    built = build_model(model_cfg([conv, {"type": "flatten"}, dense]), 10)
    assert sum(type(m) is Flatten for m in built.module.modules()) == 1
    pooled = build_model(model_cfg([conv, {"type": "global_avg_pool2d"}, dense]), 10)
    assert sum(type(m) is Flatten for m in pooled.module.modules()) == 1


_POOLED_CNN: list[dict[str, Any]] = [
    {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 6, "kernel_size": 3, "activation": "relu"},
    {"type": "max_pool2d", "pool_size": 2, "padding": "same"},  # 3x3 -> 2x2: replication pad
    {"type": "residual", "layers": [
        {"type": "conv2d", "filters": 6, "kernel_size": 1},
        {"type": "activation", "activation": "relu"},  # a ReLU layer of its own
        {"type": "max_pool2d", "pool_size": 3, "strides": 1, "padding": "same"},
    ]},
    {"type": "flatten"},
    {"type": "dense", "units": 10},
]  # fmt: skip


def _as_written(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's layers one after the other, as nn.Sequential runs them (residual bodies
    too): what the pool-first shortcut must equal."""
    if isinstance(module, torch.nn.Sequential):
        for layer in module:
            x = _as_written(layer, x)
        return x
    if isinstance(module, ResidualBlock):
        out: torch.Tensor = module.activation(_as_written(module.body, x) + module.shortcut(x))
        return out
    out = module(x)
    return out


def _grads(built: Any, x: torch.Tensor, forward: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    built.module.zero_grad(set_to_none=True)
    out = forward(x)
    torch.nn.functional.cross_entropy(out, torch.arange(len(x)) % 10).backward()
    return out.detach(), [p.grad.clone() for p in built.module.parameters()]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("data", ["random", "blank"])  # blank: every window a tie
def test_relu_after_pooling_gives_the_same_bits(layout: str, data: str) -> None:
    torch.manual_seed(0)
    built = build_model(model_cfg(_POOLED_CNN, [11, 11, 2]), 10)
    if data == "blank":  # constant maps: the biases decide, some positive and some negative
        for module in built.module.modules():
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                torch.nn.init.uniform_(module.bias, -1, 1)
    x = torch.randn(8, 2, 11, 11) if data == "random" else torch.zeros(8, 2, 11, 11)
    if layout == "channels_last":
        built.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    built.module.train()
    fast = _grads(built, x, built.module)
    plain = _grads(built, x, lambda batch: _as_written(built.module, batch))
    assert torch.equal(fast[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(fast[1], plain[1], strict=True))


def _relu_sizes(built: Any, monkeypatch: pytest.MonkeyPatch, x: torch.Tensor) -> list[int]:
    sizes: list[int] = []
    relu = torch.nn.functional.relu

    def counting(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        sizes.append(t.shape[-1])
        return relu(t, inplace)

    monkeypatch.setattr(torch.nn.functional, "relu", counting)
    built.module(x)
    monkeypatch.setattr(torch.nn.functional, "relu", relu)
    return sizes


def test_relu_runs_after_pooling_only_while_training_and_unhooked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = build_model(model_cfg(_POOLED_CNN, [11, 11, 2]), 10)
    x = torch.randn(2, 2, 11, 11)
    assert isinstance(built.module, Layers)
    built.module.train()
    assert _relu_sizes(built, monkeypatch, x) == [5, 2, 2]  # each ReLU on the pooled map
    assert _pool_first(list(built.module)) == {0, 2}  # the layers with their ReLU
    assert _pool_first(list(built.module[4].body)) == {1}  # the ReLU layer of its own
    with torch.no_grad():
        assert _relu_sizes(built, monkeypatch, x) == [11, 3, 2]  # as written
    built.module.eval()
    assert _relu_sizes(built, monkeypatch, x) == [11, 3, 2]
    built.module.train()
    seen: list[torch.Tensor] = []
    hook = built.module[0].register_forward_hook(lambda m, i, out: seen.append(out))
    assert _relu_sizes(built, monkeypatch, x) == [11, 2, 2]  # the hooked pair as written
    assert seen[0].shape[-1] == 11 and bool((seen[0] >= 0).all())  # it sees the ReLU's output
    hook.remove()
    everywhere = torch.nn.modules.module.register_module_forward_hook(lambda m, i, out: None)
    assert _relu_sizes(built, monkeypatch, x) == [11, 3, 2]
    everywhere.remove()
    assert _relu_sizes(built, monkeypatch, x) == [5, 2, 2]


def test_torch_compile_captures_the_pool_first_forward_whole() -> None:
    """training.compile traces Layers.forward: one graph (fullgraph fails on a break), the
    same loss and gradients (dynamo's eager backend: the capture, without a C++ compiler)."""
    torch.manual_seed(0)
    built = build_model(model_cfg(_POOLED_CNN, [11, 11, 2]), 10)
    x = torch.randn(4, 2, 11, 11)
    eager = _grads(built, x, built.module)
    compiled = torch.compile(built.module, backend="eager", fullgraph=True)
    traced = _grads(built, x, compiled)
    assert torch.equal(eager[0], traced[0])
    assert all(torch.equal(a, b) for a, b in zip(eager[1], traced[1], strict=True))
