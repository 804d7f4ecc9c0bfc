"""Property-based tests of the readers of run directories and checkpoints (issue 14): whatever
a manifest.json holds, and whatever a checkpoint's state.json and tensors are changed to (the
manifest regenerated, as an attacker would), ``evaluate`` and ``train --resume`` end with
exit 0, 2 or 3 and a message, never an internal error, a traceback or a crash. The IDX and
config readers have their own property tests (test_idx.py, test_config_properties.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import write_tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dlcli import checkpoint, store
from dlcli.cli import cli
from dlcli.errors import ModelDirError


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NAMES = st.sampled_from(
    ["config.yaml", "model.safetensors", "metrics.json", "history.csv", "../x", "/etc/hostname",
     "a/b", ".", "..", "", "manifest.json", ".hidden", "x\0y"]
) | st.text(max_size=20)  # fmt: skip
DIGESTS = st.sampled_from(["0" * 64, "A" * 64, "g" * 64, ""]) | JSON


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A config with early stopping and a one-cycle schedule (callbacks with state), trained
    two of its four epochs, so checkpoints/last is where a --resume continues."""
    root = tmp_path_factory.mktemp("fuzz")
    config = write_tiny_config(root)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["lr_schedule"] = {"name": "one_cycle", "max_lr": 0.02}
    raw["training"]["early_stopping"] = {"patience": 5}
    raw["training"]["epochs"] = 4
    config.write_text(yaml.safe_dump(raw))
    run_dir = root / "run"
    args = ["train", str(config), "--quiet", "--output", str(run_dir)]
    result = CliRunner().invoke(cli, [*args, "--set", "training.epochs=2"])
    assert result.exit_code == 0, result.output
    return config, run_dir


def _copy(run_dir: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="dlcli-fuzz-")) / "run"
    shutil.copytree(run_dir, target)
    return target


def _check_outcome(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert result.exit_code in (0, 2, 3), output
    assert "internal error" not in output and "Traceback" not in output, output


# --- manifest.json ------------------------------------------------------------------------------


@fuzz(150)
@given(files=st.dictionaries(NAMES, DIGESTS, max_size=5), document=JSON, whole=st.booleans())
def test_any_manifest_is_verified_or_refused(
    trained: tuple[Path, Path], files: dict[str, Any], document: Any, whole: bool
) -> None:
    run_dir = _copy(trained[1])
    try:
        manifest = document if whole else {"format": store.FORMAT, "files": files}
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
        try:
            store.verify_run(run_dir)
        except ModelDirError as err:
            assert len(err.message) < 1000
    finally:
        shutil.rmtree(run_dir.parent)


# --- checkpoints --------------------------------------------------------------------------------


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (including the root)."""
    found = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += _paths(value, (*prefix, i))
    return found


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


DTYPES = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool])
SHAPES = st.lists(st.integers(0, 6), max_size=3)


@fuzz(40)
@given(data=st.data())
def test_any_tampered_checkpoint_resumes_or_is_refused(
    trained: tuple[Path, Path], data: st.DataObject
) -> None:
    config, original = trained
    run_dir = _copy(original)
    try:
        last = run_dir / "checkpoints" / "last"
        document = json.loads((last / checkpoint.STATE).read_text())
        tensors = load_file(str(last / checkpoint.TENSORS))
        model = load_file(str(last / checkpoint.MODEL))
        for _ in range(data.draw(st.integers(1, 3), label="changes")):
            if data.draw(st.booleans(), label="change a tensor"):
                store_ = data.draw(st.sampled_from([tensors, model]), label="file")
                key = data.draw(st.sampled_from(sorted(store_)), label="tensor")
                shape = data.draw(SHAPES, label="shape")
                store_[key] = torch.zeros(shape, dtype=data.draw(DTYPES, label="dtype"))
            else:
                path = data.draw(st.sampled_from(_paths(document["state"])), label="path")
                reference = st.builds(
                    lambda k: {"__tensor__": k}, st.sampled_from(sorted(tensors)) | st.text()
                )
                value = data.draw(JSON | reference, label="value")
                document["state"] = _replace(document["state"], path, value)
        (last / checkpoint.STATE).write_text(json.dumps(document))
        save_file(tensors, str(last / checkpoint.TENSORS))
        save_file(model, str(last / checkpoint.MODEL))
        store.write_manifest(last, checkpoint.FILES)
        _check_outcome(["train", str(config), "--resume", str(run_dir), "--quiet"])
    finally:
        shutil.rmtree(run_dir.parent)


CSV_TEXT = st.lists(
    st.lists(
        st.sampled_from(["1", "0.5", "", "-3e2", "nan", "inf", "abc", '"', "epoch", "1e999"])
        | st.text(max_size=6),
        max_size=4,
    ),
    max_size=5,
).map(lambda rows: "\n".join(",".join(row) for row in rows))


@fuzz(300)
@given(text=CSV_TEXT | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_any_history_csv_is_read_as_finite_numbers_or_refused(text: str) -> None:
    """The history reader returns rows of finite numbers (each row's names from the header)
    or raises a one-line ModelDirError naming the file; nothing else."""
    import math

    from dlcli.runs import read_history

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.csv"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        try:
            rows = read_history(path)
        except ModelDirError as err:
            assert err.message.startswith(f"{path}: ") and "\n" not in err.message
            return
    import csv
    import io

    lines = csv.reader(io.StringIO(text, newline=""))
    header = next((cells for cells in lines if cells), [])  # blank lines before it are skipped
    for row in rows:
        assert all(math.isfinite(v) for v in row.values())
        assert set(row) <= {name.strip() for name in header}
