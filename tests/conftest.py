"""Shared fixtures. Tests make their own tiny data; only tests marked as using the committed
archives read data/ (REPO_DATA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pytest
import yaml

from dlcli.data.idx import write_idx

if TYPE_CHECKING:
    from dlcli.model import BuiltModel

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_DATA = REPO_ROOT / "data"

# training.threads: auto picks the free cores, which vary on a shared machine; the suite's
# tiny models train fastest on one thread, and runs compared byte for byte must use the same
# count. OMP_NUM_THREADS is what auto honours (in this process and in every CLI subprocess);
# tests/test_threads.py checks auto itself with it unset.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def check_forward(built: BuiltModel) -> None:
    """Run one zero batch through the model and check the inferred output shape."""
    import torch

    with torch.no_grad():
        out = built.module.eval()(torch.zeros(2, *built.input_shape))
    assert tuple(out.shape[1:]) == built.output_shape, (
        f"inferred {built.output_shape}, got {tuple(out.shape[1:])}"
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread in this process for the test (tiny models train faster, and steady
    on a busy machine); a module asks for it with ``pytestmark = usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def native_kernels() -> None:
    """dlcli's compiled kernels (dlcli/native.py) build on this machine, or the test is
    skipped; CI has a C compiler, so there they must. Asked for by the kernels' test modules
    (``pytestmark = usefixtures("native_kernels")``), not at import: the suite's cache folder
    is set up for the tests, not for collection."""
    from dlcli import native

    why = native.unavailable()
    if why and not os.environ.get("CI"):
        pytest.skip(f"the kernels cannot run here: {why}")
    assert why == ""


@pytest.fixture(autouse=True, scope="session")
def _decoded_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes to the user's ~/.cache: the decoded-image cache goes to a temp folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("DLCLI_CACHE_DIR", str(tmp_path_factory.mktemp("dlcli-cache")))
    yield
    patch.undo()


# --- data: a tiny IDX dataset -----------------------------------------------------------------


class TinyArchives(NamedTuple):
    """Paths of four gzip IDX archives: 32 train and 16 test 28×28 images, labels 0-9."""

    train_images: Path
    train_labels: Path
    test_images: Path
    test_labels: Path

    num_classes: int = 10


TINY_TRAIN, TINY_TEST = 32, 16


def tiny_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random uint8 28×28 images and labels cycling through 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return images, labels


def write_tiny_archives(folder: Path) -> TinyArchives:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, count, seed in (("train", TINY_TRAIN, 0), ("t10k", TINY_TEST, 1)):
        images, labels = tiny_arrays(count, seed)
        paths += [folder / f"{part}-images-idx3-ubyte.gz", folder / f"{part}-labels-idx1-ubyte.gz"]
        write_idx(paths[-2], images)
        write_idx(paths[-1], labels)
    return TinyArchives(*paths)


@pytest.fixture
def tiny_archives(tmp_path: Path) -> TinyArchives:
    """A tiny gzip IDX dataset in ``tmp_path/tiny`` (see :class:`TinyArchives`)."""
    return write_tiny_archives(tmp_path / "tiny")


# --- a tiny *learnable* dataset and a config that trains on it in a second ------------------


def learnable_patterns(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images: class k lights up row 2k (plus noise), so a small MLP learns it quickly."""
    labels = rng.integers(0, 4, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
    images[np.arange(n), labels * 2, :] = 250
    return images, labels


def write_tiny_config(folder: Path) -> Path:
    """Four archives (400 train, 100 test, 4 classes) and ``folder/tiny.yaml``: an MLP,
    3 epochs, saving to ``folder/runs/tiny``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files: dict[str, str] = {}
    for part, n in (("train", 400), ("test", 100)):
        images, labels = learnable_patterns(n, rng)
        files[f"{part}_images"] = str(folder / f"{part}-images-idx3-ubyte.gz")
        files[f"{part}_labels"] = str(folder / f"{part}-labels-idx1-ubyte.gz")
        write_idx(files[f"{part}_images"], images)
        write_idx(files[f"{part}_labels"], labels)
    cfg: dict[str, Any] = {
        "data": {**files, "num_classes": 4, "validation_split": 0.25},
        "model": {
            "input_shape": [8, 8, 1],
            "layers": [
                {"type": "flatten"},
                {"type": "dense", "units": 16, "activation": "relu"},
                {"type": "dense", "units": 4},
            ],
        },
        "training": {"epochs": 3, "batch_size": 20, "optimizer": {"learning_rate": 0.01}},
        "output": {"dir": str(folder / "runs" / "tiny")},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A config (``tmp_path/tiny.yaml``) that trains a small MLP on a learnable tiny dataset."""
    return write_tiny_config(tmp_path)


# --- trained runs shared by the predict / export / gate tests (read-only: copy to change) ----


def _train_run(config: Path, *args: str) -> None:
    from click.testing import CliRunner

    from dlcli.cli import cli

    result = CliRunner().invoke(cli, ["train", str(config), "--quiet", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`write_tiny_config`'s MLP trained (about a second); class names row0 … row6."""
    folder = tmp_path_factory.mktemp("tiny-run")
    _train_run(write_tiny_config(folder), "--set", "data.class_names=[row0, row2, row4, row6]")
    return folder / "runs" / "tiny"


@pytest.fixture(scope="session")
def fashion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dlcli init``'s Fashion-MNIST MLP from data/, trained one epoch on a tenth of the
    training set (a few seconds; about 0.75 accuracy)."""
    from click.testing import CliRunner

    from dlcli.cli import cli

    folder = tmp_path_factory.mktemp("fashion-run")
    config = folder / "fashion.yaml"
    result = CliRunner().invoke(cli, ["init", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = folder / "run"
    _train_run(
        config,
        *("--set", "training.epochs=1", "--set", "data.validation_split=0.9"),
        *("--set", f"data.data_dir={REPO_DATA}", "--output", str(run_dir)),
    )
    return run_dir
