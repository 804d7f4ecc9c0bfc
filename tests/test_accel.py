"""The speed paths keep the maths: dlcli's loop (fused Adam, one-kernel batch conversion) gives
the same losses and weights as a plain hand-written loop with default Adam, and the GPU
options (precision, compile, channels_last) are a no-op or a clear error on the CPU."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcli import accel, evaluation
from dlcli.accel import DeviceData, FlatParameters, to_float
from dlcli.config import TrainingConfig, parse_config
from dlcli.data.dataset import Split
from dlcli.engine import Trainer
from dlcli.errors import ConfigError, TrainingError

CPU = torch.device("cpu")


def tiny_split(n: int = 96, seed: int = 0) -> Split:
    """8x8 one-channel images where class k lights up row 2k, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)
    images[torch.arange(n), 0, labels * 2, :] = 250
    return Split(images, labels)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 4),
    )


def training(**overrides: Any) -> TrainingConfig:
    """A validated training section: 3 epochs of batch 16, in file order, Adam lr 1e-3."""
    return parse_training({"epochs": 3, "batch_size": 16, "shuffle": False, **overrides})


def parse_training(raw: dict[str, Any]) -> TrainingConfig:
    cfg = parse_config(
        {
            "data": {"dataset": "fashion-mnist"},
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
            "training": raw,
        }
    )
    return cfg.training


def fit(model: nn.Module, cfg: TrainingConfig, data: Split) -> Trainer:
    trainer = Trainer(model, cfg, num_classes=4, device=CPU)
    trainer.fit(data)
    return trainer


def hand_written_loop(
    model: nn.Module, data: Split, epochs: int, batch: int
) -> list[dict[str, float]]:
    """What a user writes: default (unfused) Adam, float conversion per batch; per epoch the
    mean loss, accuracy and top-2 accuracy of the training batches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(epochs):
        total, correct, top2 = 0.0, 0, 0
        for start in range(0, len(data), batch):
            x = data.images[start : start + batch].float() / 255
            y = data.labels[start : start + batch]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
            top2 += int((logits.topk(2, dim=1).indices == y[:, None]).any(dim=1).sum())
        n = len(data)
        history.append({"loss": total / n, "accuracy": correct / n, "top_k_accuracy": top2 / n})
    return history


@pytest.mark.parametrize("make_model", [mlp, cnn])
def test_dlcli_loop_has_the_maths_of_a_hand_written_loop(make_model: Any) -> None:
    data = tiny_split()
    model = make_model()
    reference = copy.deepcopy(model)
    trainer = fit(model, training(metrics=["accuracy", "top_k_accuracy"], top_k=2), data)
    expected = hand_written_loop(reference, data, epochs=3, batch=16)
    for ours, theirs in zip(trainer.history, expected, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["accuracy"] == theirs["accuracy"]
        assert ours["top_k_accuracy"] == theirs["top_k_accuracy"]
    assert expected[-1]["loss"] < expected[0]["loss"]  # it learns: not two no-ops compared
    assert 0 < expected[-1]["accuracy"] < expected[-1]["top_k_accuracy"] < 1  # not trivial
    for (name, ours), theirs in zip(
        trainer.model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_flat_parameters_are_views_of_one_buffer_with_dense_weights_input_major() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3).to(memory_format=torch.channels_last),  # type: ignore[call-overload]
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
        nn.BatchNorm1d(5),
        nn.Linear(5, 3, bias=False),
    )
    model[3].weight.requires_grad_(False)  # frozen: left out of the buffer
    before = copy.deepcopy(model.state_dict())
    flat = FlatParameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert flat.params.numel() == sum(p.numel() for p in trainable)
    base, end = flat.params.data_ptr(), flat.params.data_ptr() + flat.params.nbytes
    for p in trainable:
        assert base <= p.data_ptr() < end  # the module's Parameter, stored in the buffer
        assert p.grad is not None and p.grad.stride() == p.stride()
    assert not base <= model[3].weight.data_ptr() < end
    assert model[2].weight.stride() == (1, 5)  # (out=5, in) seen through an (in, out) buffer
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in model.state_dict().items():  # same values, same shapes
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    # backward lands in the flat gradient buffer
    model(torch.rand(8, 1, 8, 8)).sum().backward()
    assert flat.grads.abs().sum() > 0
    assert torch.equal(flat.grads[: model[0].weight.numel()], model[0].weight.grad.flatten())


def test_a_run_saved_from_flat_parameters_loads_into_a_plain_model(tmp_path: Any) -> None:
    from dlcli import store

    cfg = parse_config(
        {"data": {"dataset": "fashion-mnist"}, "model": {"layers": [{"type": "flatten"}]}}
    )
    trainer = fit(mlp(), training(epochs=1), tiny_split())
    run_dir = store.save_run(
        tmp_path / "run", config=cfg, state_dict=trainer.model.state_dict(), metrics={}, history=[]
    )
    saved = store.load_run(run_dir).state_dict
    assert all(t.is_contiguous() for t in saved.values())
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(saved[name], value), name
    fresh = mlp()
    fresh.load_state_dict(saved)
    x = torch.rand(5, 1, 8, 8)
    # the same weights in another memory layout: the matmul may round its last bit otherwise
    torch.testing.assert_close(fresh(x), trainer.model(x), rtol=1e-6, atol=1e-6)


def test_an_optimizer_zero_grad_from_a_callback_does_not_stop_training() -> None:
    """torch's optimizer.zero_grad() sets the flat tensor's gradient to None; the next step
    must still update the weights."""
    from dlcli.hooks import Callback

    class ZeroGrad(Callback):
        def on_step_end(self, trainer: Trainer, step: int) -> None:
            trainer.optimizer.zero_grad()

    data = tiny_split()
    plain = fit(mlp(), training(), data)
    zeroed = Trainer(mlp(), training(), num_classes=4, device=CPU, callbacks=[ZeroGrad()])
    zeroed.fit(data)
    for (name, a), b in zip(
        plain.model.state_dict().items(), zeroed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_float_batches_are_bit_identical_to_float_then_divide() -> None:
    images = torch.arange(256, dtype=torch.uint8).repeat(8).reshape(8, 1, 16, 16)
    index = torch.tensor([5, 0, 7, 7])
    expected = images[index].float().div_(255)
    assert to_float(images.index_select(0, index)).dtype == torch.float32
    assert torch.equal(to_float(images.index_select(0, index)), expected)
    assert torch.equal(to_float(images[2:6]), images[2:6].float() / 255)


def test_fp16_on_a_cpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"training.precision: fp16 needs a CUDA device"):
        Trainer(mlp(), training(precision="fp16"), num_classes=4, device=CPU)


def test_bf16_autocast_trains_on_a_cpu() -> None:
    trainer = fit(mlp(), training(precision="bf16", epochs=2), tiny_split())
    assert len(trainer.history) == 2
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in trainer.history)
    assert trainer.model[1].weight.dtype == torch.float32  # autocast, not a cast of weights
    logits = evaluation.outputs(trainer.scorer, tiny_split().images)
    assert logits.dtype == torch.float32 and logits.shape == (96, 4)


def test_unknown_precision_is_reported_with_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        parse_training({"precision": "fp8"})
    assert "training.precision: expected one of fp32, bf16, fp16, auto, found 'fp8'" in str(
        err.value
    )


# --- training.precision: auto (accel.resolve_precision) --------------------------------------

X86_FLAGS = "flags\t\t: fpu vme sse sse2 avx avx2 fma"
NATIVE_CPUINFO = [
    f"processor\t: 0\n{X86_FLAGS} avx512f avx512_bf16 avx512_vnni\n",  # Zen4, Cooper Lake
    f"processor\t: 0\n{X86_FLAGS} amx_tile amx_bf16 amx_int8\n",  # AMX alone (Sapphire Rapids)
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve i8mm bf16 dgh\nCPU part\t: 0xd40\n",
]
EMULATED_CPUINFO = [
    f"processor\t: 0\n{X86_FLAGS} sha_ni\nmodel name\t: AMD EPYC (Zen3)\n",
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n",  # aarch64 without BF16
    "bf16 avx512_bf16 amx_bf16\n",  # the words, but on no flags or Features line
    "",
]


def torch_checks(monkeypatch: pytest.MonkeyPatch, *, avx512_bf16: Any, amx: Any) -> None:
    """torch's private CPU checks: a value (what they answer), or None (this torch has none)."""
    for name, answer in (
        ("_is_avx512_bf16_supported", avx512_bf16),
        ("_is_amx_tile_supported", amx),
    ):
        if answer is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer, raising=False)


def cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None) -> None:
    """accel.CPUINFO as a file holding ``text`` (None: a path that cannot be read)."""
    path = tmp_path / ("cpuinfo" if text is not None else "missing")
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(accel, "CPUINFO", path)


@pytest.mark.parametrize("text", NATIVE_CPUINFO)
def test_cpuinfo_lists_the_three_bf16_flags(text: str) -> None:
    assert accel.cpuinfo_bf16(text)


@pytest.mark.parametrize("text", EMULATED_CPUINFO)
def test_cpuinfo_without_bf16_flags_is_not_native(text: str) -> None:
    assert not accel.cpuinfo_bf16(text)


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True), (True, True)])
def test_auto_is_bf16_where_torch_says_the_cpu_has_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, avx512_bf16: bool, amx: bool
) -> None:
    torch_checks(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    cpuinfo(monkeypatch, tmp_path, EMULATED_CPUINFO[0])  # not read: torch answered
    assert accel.resolve_precision("auto", CPU) == "bf16"


@pytest.mark.parametrize("text", [*EMULATED_CPUINFO, None])
def test_auto_is_fp32_on_a_cpu_that_emulates_bf16(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None
) -> None:
    torch_checks(monkeypatch, avx512_bf16=False, amx=False)
    cpuinfo(monkeypatch, tmp_path, text)  # None: /proc/cpuinfo unreadable
    assert accel.resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("text", NATIVE_CPUINFO)
def test_without_torchs_private_checks_cpuinfo_decides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> None:
    torch_checks(monkeypatch, avx512_bf16=None, amx=None)
    cpuinfo(monkeypatch, tmp_path, text)
    assert accel.resolve_precision("auto", CPU) == "bf16"
    cpuinfo(monkeypatch, tmp_path, EMULATED_CPUINFO[0])
    assert accel.resolve_precision("auto", CPU) == "fp32"


def test_a_failing_private_check_is_no_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken() -> bool:
        raise RuntimeError("cpuinfo failed to initialize")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    cpuinfo(monkeypatch, tmp_path, NATIVE_CPUINFO[0])
    assert accel.cpu_native_bf16()
    cpuinfo(monkeypatch, tmp_path, None)
    assert not accel.cpu_native_bf16()


@pytest.mark.parametrize("supported", [True, False])
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_auto_on_cuda_asks_torch_for_the_device_without_emulation(
    monkeypatch: pytest.MonkeyPatch, supported: bool, name: str
) -> None:
    asked: list[Any] = []

    @contextlib.contextmanager
    def on_device(device: torch.device) -> Iterator[None]:
        asked.append(device)
        yield

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    resolved = accel.resolve_precision("auto", torch.device(name))
    assert resolved == ("bf16" if supported else "fp32")
    assert asked == [torch.device(name), False]  # for this device; emulation is not native


def test_auto_on_cuda_with_a_torch_that_has_no_emulation_keyword(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert accel.resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_auto_is_fp32_on_mps_and_never_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda cpuinfo=None: True)
    assert accel.resolve_precision("auto", torch.device("mps")) == "fp32"
    assert accel.resolve_precision("auto", torch.device("meta")) == "fp32"
    for name in ("fp32", "bf16", "fp16"):  # what is asked for is not resolved
        assert accel.resolve_precision(name, torch.device("mps")) == name


@pytest.mark.parametrize(
    ("native", "resolved", "dtype"), [(True, "bf16", torch.bfloat16), (False, "fp32", None)]
)
def test_precision_auto_is_resolved_once_for_training_and_scoring(
    monkeypatch: pytest.MonkeyPatch, native: bool, resolved: str, dtype: Any
) -> None:
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda cpuinfo=None: native)
    trainer = fit(mlp(), training(precision="auto", epochs=1), tiny_split())
    assert (trainer.precision.name, trainer.precision.asked) == (resolved, "auto")
    assert trainer.precision.dtype is dtype and trainer.precision.scaler is None
    assert (trainer.explicit is None) == native  # bf16: autograd; fp32: the explicit step
    scorer = evaluation.Scorer.of(mlp(), device=CPU, precision="auto")  # inference
    assert (scorer.precision.name, scorer.precision.dtype) == (resolved, dtype)


def test_the_emulated_bf16_note_is_for_an_explicit_bf16_on_an_emulating_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda cpuinfo=None: False)
    note = accel.emulated_bf16_note("bf16", CPU)
    assert "bf16 is emulated on this CPU (no AVX512-BF16/AMX)" in note
    assert "several times slower than fp32" in note and "auto picks fp32 here" in note
    assert "\n" not in note
    for name in ("fp32", "auto"):
        assert accel.emulated_bf16_note(name, CPU) == ""
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda cpuinfo=None: True)
    assert accel.emulated_bf16_note("bf16", CPU) == ""
    assert accel.emulated_bf16_note("bf16", torch.device("mps")) == ""


@pytest.mark.parametrize("native", [True, False])
def test_the_emulated_bf16_note_on_a_gpu_asks_torch_without_emulation(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    asked: list[dict[str, Any]] = []

    def is_bf16_supported(**kwargs: Any) -> bool:
        asked.append(kwargs)
        return native

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    note = accel.emulated_bf16_note("bf16", torch.device("cuda"))
    assert asked == [{"including_emulation": False}]
    if native:
        assert note == ""
    else:
        assert "bf16 is emulated on this GPU (no bf16 arithmetic)" in note
        assert "auto picks fp32 here" in note and "\n" not in note


def test_channels_last_on_a_cpu_gives_the_same_losses() -> None:
    data = tiny_split()
    plain = fit(cnn(), training(channels_last=False), data)
    nhwc = fit(cnn(), training(channels_last=True), data)
    assert nhwc.channels_last.on and not plain.channels_last.on
    assert nhwc.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    losses = [row["loss"] for row in nhwc.history]
    assert losses == pytest.approx([row["loss"] for row in plain.history], rel=1e-4)


def test_channels_last_is_automatic_for_convolutional_models_only() -> None:
    assert fit(cnn(), training(epochs=1), tiny_split()).channels_last.on
    assert not fit(mlp(), training(epochs=1), tiny_split()).channels_last.on
    assert not fit(cnn(), training(epochs=1, channels_last=False), tiny_split()).channels_last.on


def test_compile_runs_the_model_through_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[nn.Module] = []

    def fake_compile(model: nn.Module) -> nn.Module:
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = fit(mlp(), training(compile=True, epochs=1), tiny_split())
    assert compiled == [trainer.model]
    assert all(not key.startswith("_orig_mod") for key in trainer.model.state_dict())


def test_compile_also_compiles_the_distributed_training_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Distributed, training runs through the DDP-wrapped model: that one is compiled too
    (building a Trainer needs no process group; the wrapper stands in for DDP)."""
    from dlcli.distributed import World

    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    class TwoWorkers(World):
        def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
            return Wrapper(model)

    compiled: list[nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    trainer = Trainer(
        mlp(), training(compile=True), num_classes=4, device=CPU, world=TwoWorkers(size=2)
    )
    assert [type(m) for m in compiled] == [nn.Sequential, Wrapper]
    assert compiled[0] is trainer.model and compiled[1].inner is trainer.model


def test_a_failing_compile_is_a_training_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.exc import TorchDynamoException

    def broken(*args: Any) -> Any:
        raise TorchDynamoException("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model: broken)
    with pytest.raises(TrainingError, match=r"training.compile: torch.compile failed .*false"):
        fit(mlp(), training(compile=True, epochs=1), tiny_split())


def test_off_the_cpu_a_split_is_copied_to_the_device_once() -> None:
    on_device = DeviceData(torch.device("meta"))
    data = tiny_split()
    first = on_device(data.images, data.labels)
    again = on_device(data.images, data.labels)
    assert first[0].device.type == "meta"
    assert first[0] is again[0] and first[1] is again[1]
    on_cpu = DeviceData(CPU)(data.images, data.labels)
    assert on_cpu[0] is data.images  # nothing copied on the CPU


def test_reading_the_running_metrics_does_not_change_them() -> None:
    """A progress bar reads the epoch's metrics whenever it redraws; the epoch's mean loss
    must be the same float however often (resume relies on it too)."""
    from dlcli.hooks import Callback

    class ReadEveryStep(Callback):
        def on_step_end(self, trainer: Trainer, step: int) -> None:
            assert trainer.running_logs()["loss"] > 0

    data = tiny_split()
    quiet = fit(mlp(), training(), data)
    watched = Trainer(mlp(), training(), num_classes=4, device=CPU, callbacks=[ReadEveryStep()])
    watched.fit(data)
    timings = ("seconds", "samples_per_second")
    assert watched.history == [
        {**row, **{k: watched.history[i][k] for k in timings}}
        for i, row in enumerate(quiet.history)
    ]
