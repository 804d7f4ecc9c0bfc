"""The one device parser (dlcli/device.py): names, auto's order (CUDA, MPS, CPU), and a clear
error for a device this machine lacks, from the config, `config validate` and every --device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_tiny_config

from dlcli.cli import cli
from dlcli.config import load_config
from dlcli.device import check_device_name, resolve_device
from dlcli.errors import ConfigError


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_known_names(name: str) -> None:
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", "mps:0", "", 3])
def test_unknown_names_are_config_errors(name: object) -> None:
    with pytest.raises(ConfigError) as err:
        check_device_name(name, "--device")
    assert err.value.message == (
        f"--device: expected auto, cpu, cuda, cuda:N or mps, found {name!r}"
    )


@pytest.mark.parametrize("name", ["cuda:01", "cuda:٣", "cuda:-1", "cuda: 1"])
def test_malformed_cuda_indexes_are_config_errors(name: str) -> None:
    """torch's own parser raised RuntimeError on these: 'internal error', exit 1."""
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda, cuda:N or mps, found"):
        check_device_name(name, "--device")


@pytest.mark.parametrize("name", ["cuda:128", "cuda:256", "cuda:99999999999999999999"])
def test_cuda_indexes_torch_cannot_hold_are_config_errors(name: str) -> None:
    """torch wraps an index to 8 bits ('cuda:256' was cuda:0, a GPU not asked for) or fails
    ('cuda:99999999999999999999' was 'internal error', exit 1)."""
    with pytest.raises(ConfigError) as err:
        check_device_name(name, "--device")
    assert err.value.message == f"--device: {name!r}: a CUDA device index is at most 127"
    assert check_device_name("cuda:127") == "cuda:127"


def test_train_refuses_a_cuda_index_torch_cannot_parse(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path)
    args = ["train", str(config), "--device", "cuda:99999999999999999999", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "a CUDA device index is at most 127" in result.stderr


def _machine(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, mps: bool, built: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda")],
)
def test_auto_picks_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    _machine(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto").type == expected


def test_mps_where_available(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=False, mps=True)
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize(
    ("built", "why"),
    [
        (False, "was built without MPS (Apple GPUs)"),
        (True, "MPS is not available on this machine (it needs macOS 12.3+ on Apple silicon)"),
    ],
)
def test_mps_where_not_available_says_why(
    monkeypatch: pytest.MonkeyPatch, built: bool, why: str
) -> None:
    _machine(monkeypatch, cuda=False, mps=False, built=built)
    with pytest.raises(ConfigError, match=r"training.device: 'mps' requested, but ") as err:
        resolve_device("mps")
    assert why in err.value.message and err.value.message.endswith("use cpu or auto")


def test_cuda_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ConfigError, match="'cuda' requested, but CUDA is not available"):
        resolve_device("cuda")
    _machine(monkeypatch, cuda=True, mps=False)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"'cuda:2' requested, but only 2 CUDA device"):
        resolve_device("cuda:2")


def test_the_config_checks_the_name_with_every_other_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    raw = {
        "data": {"dataset": "mnist"},
        "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]},
        "training": {"device": "tpu", "stop_at_target": True},
    }
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "training.device: expected auto, cpu, cuda, cuda:N or mps, found 'tpu'" in (
        err.value.details
    )
    assert any(d.startswith("training.stop_at_target:") for d in err.value.details)


def test_config_validate_accepts_mps_and_refuses_a_typo(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist-mlp.yaml"
    runner = CliRunner()
    validate = ["config", "validate", str(config), "--no-data"]
    ok = runner.invoke(cli, [*validate, "--set", "training.device=mps"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, [*validate, "--set", "training.device=mpss"])
    assert bad.exit_code == 2
    assert "training.device: expected auto, cpu, cuda, cuda:N or mps, found 'mpss'" in bad.output


def test_evaluate_device_option_names_itself(
    monkeypatch: pytest.MonkeyPatch, tiny_run: Path
) -> None:
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_run), "--device", "tpu"])
    assert result.exit_code == 2
    assert "--device: expected auto, cpu, cuda, cuda:N or mps, found 'tpu'" in result.output
