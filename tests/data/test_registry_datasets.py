"""KMNIST and CIFAR-10 in the registry: tiny archives in their published formats, made here,
served over real HTTP from 127.0.0.1 as the datasets' mirrors, downloaded and trained on through
the CLI; and hostile CIFAR-10 tar archives, each refused with exit 3 and one line naming it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import TINY_TEST, TINY_TRAIN, write_tiny_archives
from http_mirror import ServerState, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlcli import limits
from dlcli.cli import cli
from dlcli.data import registry
from dlcli.data.cifar import RECORD_BYTES, TEST_MEMBERS, TRAIN_MEMBERS, read_cifar_binary
from dlcli.data.dataset import load_dataset
from dlcli.data.registry import ArchiveFile, DatasetEntry
from dlcli.errors import DataError

PER_BATCH = 8  # records in each tiny CIFAR batch: 40 train, 8 test


@pytest.fixture
def server() -> Iterator[ServerState]:
    """http_mirror's HTTP server on 127.0.0.1 (``/good/NAME`` serves, ``/missing/`` 404s)."""
    with serve() as state:
        yield state


# --- tiny archives in the published formats ---------------------------------------------------


def kmnist_archives(folder: Path) -> dict[str, bytes]:
    """KMNIST's four file names (MNIST's) with tiny IDX gz contents: 28×28, labels 0-9."""
    return {path.name: path.read_bytes() for path in write_tiny_archives(folder)[:4]}


def cifar_records(count: int, seed: int) -> bytes:
    """``count`` records: a label byte (cycling 0-9), then 3,072 pixel bytes (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    records = rng.integers(0, 256, size=(count, RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = np.arange(count) % 10
    return records.tobytes()


Member = tuple[tarfile.TarInfo, bytes | None]


def regular(name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def cifar_members() -> list[Member]:
    """The members of a well-formed tiny binary archive, as the published one lays them out."""
    folder = tarfile.TarInfo("cifar-10-batches-bin")
    folder.type = tarfile.DIRTYPE
    members: list[Member] = [(folder, None)]
    members += [regular("cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")]
    for seed, name in enumerate((*TRAIN_MEMBERS, *TEST_MEMBERS)):
        members.append(regular(name, cifar_records(PER_BATCH, seed)))
    return members


def tar_gz(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def archive_file(name: str, data: bytes) -> ArchiveFile:
    md5 = hashlib.md5(data).hexdigest()
    return ArchiveFile(name, len(data), hashlib.sha256(data).hexdigest(), md5)


def register(
    monkeypatch: pytest.MonkeyPatch,
    server: ServerState,
    entry: DatasetEntry,
    files: dict[str, bytes],
) -> DatasetEntry:
    """``entry`` with the checksums of ``files`` and the local server as its mirrors (a dead
    one first, as a real mirror list may have), in the registry under its own name."""
    server.files.update(files)
    by_name = {name: archive_file(name, data) for name, data in files.items()}
    roles = {role: by_name[archive.filename] for role, archive in entry.files.items()}
    mirrors = (server.url("missing"), server.url("good"))
    local = replace(entry, files=roles, mirrors=mirrors)
    monkeypatch.setitem(registry.REGISTRY, entry.name, local)
    monkeypatch.delenv("DLCLI_MIRROR", raising=False)
    return local


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_config(folder: Path, dataset: str, input_shape: list[int]) -> Path:
    """A one-epoch CNN on the registry ``dataset`` in ``folder/data``."""
    config = folder / f"{dataset}.yaml"
    layers = [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "max_pool2d", "pool_size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ]
    document = {
        "data": {"dataset": dataset, "data_dir": str(folder / "data"), "validation_split": 0.25},
        "model": {"input_shape": input_shape, "layers": layers},
        "training": {"epochs": 1, "batch_size": 10},
        "output": {"dir": str(folder / "runs" / dataset)},
    }
    config.write_text(yaml.safe_dump(document))
    return config


def download(name: str, folder: Path) -> Result:
    return run("download", name, "--data-dir", folder / "data", "--retries", "0")


# --- the real registry entries ----------------------------------------------------------------


def test_the_new_entries_carry_published_sizes_and_checksums() -> None:
    kmnist, cifar = registry.get_entry("kmnist"), registry.get_entry("cifar-10")
    assert kmnist.format == "idx" and kmnist.input_shape == (28, 28, 1)
    assert cifar.format == "cifar-binary" and cifar.input_shape == (32, 32, 3)
    assert cifar.files["archive"] == ArchiveFile(
        "cifar-10-binary.tar.gz",
        170052171,
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "c32a1d4ab5d03f1284b67883e8d87530",
    )
    assert kmnist.files["train_images"].md5 == "bdb82020997e1d708af4cf47b453dcf7"
    for entry in (kmnist, cifar):
        assert entry.num_classes == len(entry.class_names) == 10
        assert entry.mirrors and entry.mirrors[0].startswith("https://")
        for archive in entry.files.values():
            assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256)
            assert archive.md5 is not None and re.fullmatch(r"[0-9a-f]{32}", archive.md5)


def test_list_shows_the_new_datasets_with_their_shapes() -> None:
    table = run("download", "--list")
    assert table.exit_code == 0
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert "28×28×1" in rows["kmnist"] and "32×32×3" in rows["cifar-10"]
    document = json.loads(run("download", "--list", "--json").stdout)
    shapes = {d["name"]: d["input_shape"] for d in document["datasets"]}
    assert shapes["kmnist"] == [28, 28, 1] and shapes["cifar-10"] == [32, 32, 3]


def test_a_config_may_name_the_new_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = Path(__file__).resolve().parents[2] / "configs" / "cifar-10-cnn.yaml"
    monkeypatch.setenv("DLCLI_DATA_DIR", str(tmp_path / "data"))
    result = run("config", "validate", shipped, "--no-data")
    assert result.exit_code == 0, result.output
    assert "10 classes" in result.stdout
    # with the data checked, as train would: not downloaded is a config error naming the fix
    missing = run("config", "validate", shipped)
    assert missing.exit_code == 2, missing.output
    assert f"cifar-10 is not in {tmp_path / 'data'}" in " ".join(missing.stderr.split())
    assert "dlcli download cifar-10" in missing.stderr


# --- download from a local mirror, then train -------------------------------------------------


def test_kmnist_downloads_from_its_mirrors_and_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    register(monkeypatch, server, registry.KMNIST, kmnist_archives(tmp_path / "made"))
    fetched = download("kmnist", tmp_path)
    assert fetched.exit_code == 0, fetched.output
    assert "(4 downloaded, 0 already present)" in fetched.stdout
    assert "HTTP 404 Not Found" in fetched.stderr  # the dead mirror, then the live one
    trained = run("train", write_config(tmp_path, "kmnist", [28, 28, 1]), "--quiet", "--json")
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((tmp_path / "runs" / "kmnist" / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "kmnist"
    assert metrics["dataset"]["class_names"][:3] == ["o", "ki", "su"]
    assert metrics["dataset"]["train_size"] + metrics["dataset"]["validation_size"] == TINY_TRAIN
    assert metrics["dataset"]["test_size"] == TINY_TEST


def test_cifar_downloads_and_trains_on_three_channels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    register(
        monkeypatch, server, registry.CIFAR10, {"cifar-10-binary.tar.gz": tar_gz(cifar_members())}
    )
    fetched = download("cifar-10", tmp_path)
    assert fetched.exit_code == 0, fetched.output
    assert "(1 downloaded, 0 already present)" in fetched.stdout
    config = write_config(tmp_path, "cifar-10", [32, 32, 3])
    checked = run("data", "check", config, "--json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)["splits"]
    assert report["train"]["modes"] == {"RGB": 40} and report["test"]["sizes"] == {"32x32": 8}
    trained = run("train", config, "--quiet", "--json")
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((tmp_path / "runs" / "cifar-10" / "metrics.json").read_text())
    assert metrics["dataset"]["class_names"][0] == "airplane"
    assert metrics["dataset"]["train_size"] + metrics["dataset"]["validation_size"] == 40
    assert metrics["dataset"]["test_size"] == PER_BATCH
    archive = registry.REGISTRY["cifar-10"].files["archive"]
    assert metrics["dataset"]["checksums"] == {"cifar-10-binary.tar.gz": archive.sha256}


def test_cifar_records_become_rgb_images_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    """Record i of data_batch_1 is train image i: label byte first, then R, G, B planes of 32
    rows; batches follow in order; the test batch is the test split."""
    register(
        monkeypatch, server, registry.CIFAR10, {"cifar-10-binary.tar.gz": tar_gz(cifar_members())}
    )
    assert download("cifar-10", tmp_path).exit_code == 0
    dataset = load_dataset("cifar-10", tmp_path / "data")
    assert dataset.test is not None
    first = np.frombuffer(cifar_records(PER_BATCH, 0), np.uint8).reshape(PER_BATCH, RECORD_BYTES)
    second = np.frombuffer(cifar_records(PER_BATCH, 1), np.uint8).reshape(PER_BATCH, RECORD_BYTES)
    images = dataset.train.images.numpy()
    assert images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert (images[3, 0, 0, :] == first[3, 1:33]).all()  # red, first row
    assert (images[3, 1].ravel() == first[3, 1025:2049]).all()  # the green plane
    assert (images[PER_BATCH + 2, 2].ravel() == second[2, 2049:]).all()  # batch 2, blue
    assert dataset.train.labels.tolist()[:PER_BATCH] == first[:, 0].tolist()
    assert len(dataset.test) == PER_BATCH and dataset.image_shape == (3, 32, 32)


def test_a_cifar_archive_that_is_not_the_published_one_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    entry = register(
        monkeypatch, server, registry.CIFAR10, {"cifar-10-binary.tar.gz": tar_gz(cifar_members())}
    )
    assert download("cifar-10", tmp_path).exit_code == 0
    path = tmp_path / "data" / "cifar-10" / "cifar-10-binary.tar.gz"
    path.write_bytes(bytes(entry.files["archive"].size))  # same size, other bytes: not a tar
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: checksum mismatch"):
        load_dataset("cifar-10", tmp_path / "data")


# --- hostile archives: exit 3, one line naming the file ---------------------------------------


def with_member(extra: Member) -> list[Member]:
    return [*cifar_members(), extra]


def symlink() -> list[Member]:
    info = tarfile.TarInfo("cifar-10-batches-bin/link.bin")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return with_member((info, None))


def hardlink() -> list[Member]:
    info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    info.type, info.linkname = tarfile.LNKTYPE, "../../outside.bin"
    return [m for m in cifar_members() if m[0].name != info.name] + [(info, None)]


def dotdot() -> list[Member]:
    return with_member(regular("cifar-10-batches-bin/../../evil.bin", b"x"))


def absolute() -> list[Member]:
    return with_member(regular("/tmp/evil.bin", b"x"))


def oversized() -> list[Member]:
    return with_member(
        regular("cifar-10-batches-bin/readme.html", bytes(PER_BATCH * RECORD_BYTES + 1))
    )


def truncated_records() -> list[Member]:
    name = TRAIN_MEMBERS[2]
    cut = cifar_records(PER_BATCH, 2)[:-100]
    return [m for m in cifar_members() if m[0].name != name] + [regular(name, cut)]


def missing_batch() -> list[Member]:
    return [m for m in cifar_members() if m[0].name != TEST_MEMBERS[0]]


def bad_label() -> list[Member]:
    data = bytearray(cifar_records(PER_BATCH, 0))
    data[RECORD_BYTES] = 200  # the second record's label
    return [m for m in cifar_members() if m[0].name != TRAIN_MEMBERS[0]] + [
        regular(TRAIN_MEMBERS[0], bytes(data))
    ]


HOSTILE: dict[str, tuple[Callable[[], list[Member]], str]] = {
    "symlink": (symlink, "member 'cifar-10-batches-bin/link.bin' is a symbolic link"),
    "hardlink": (hardlink, "member 'cifar-10-batches-bin/data_batch_1.bin' is a hard link"),
    "dotdot": (dotdot, "member 'cifar-10-batches-bin/../../evil.bin' has an unsafe name"),
    "absolute": (absolute, "member '/tmp/evil.bin' has an unsafe name"),
    "oversized": (oversized, "member 'cifar-10-batches-bin/readme.html' is 24585 bytes, over"),
    "truncated": (truncated_records, "data_batch_3.bin holds 24484 bytes, not a whole"),
    "missing": (missing_batch, "missing cifar-10-batches-bin/test_batch.bin"),
    "label": (bad_label, "data_batch_1.bin: 1 of 8 labels are outside [0, 10)"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_cifar_archives_stop_training_with_one_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    build, expected = HOSTILE[case]
    # A batch of the tiny archive is exactly at the limit; the oversized member one byte over.
    monkeypatch.setattr(limits, "TAR_MEMBER_MAX_BYTES", PER_BATCH * RECORD_BYTES)
    register(monkeypatch, server, registry.CIFAR10, {"cifar-10-binary.tar.gz": tar_gz(build())})
    assert download("cifar-10", tmp_path).exit_code == 0  # the checksums are this archive's
    result = run("train", write_config(tmp_path, "cifar-10", [32, 32, 3]), "--quiet")
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    path = tmp_path / "data" / "cifar-10" / "cifar-10-binary.tar.gz"
    assert errors[0].startswith(f"Error: {path}: ")
    assert expected in errors[0]
    assert not (tmp_path / "evil.bin").exists() and not Path("/tmp/evil.bin").exists()


def test_a_cut_archive_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    whole = tar_gz(cifar_members())
    register(
        monkeypatch, server, registry.CIFAR10, {"cifar-10-binary.tar.gz": whole[: len(whole) // 2]}
    )
    assert download("cifar-10", tmp_path).exit_code == 0
    result = run("train", write_config(tmp_path, "cifar-10", [32, 32, 3]), "--quiet")
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1
    assert "cifar-10-binary.tar.gz: " in result.stderr
    assert re.search(r"not a readable tar\.gz archive|is cut short", result.stderr)


def test_too_many_members_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerState
) -> None:
    extra = [
        regular(f"cifar-10-batches-bin/pad{i}.txt", b"") for i in range(limits.TAR_MAX_MEMBERS)
    ]
    register(
        monkeypatch,
        server,
        registry.CIFAR10,
        {"cifar-10-binary.tar.gz": tar_gz(cifar_members() + extra)},
    )
    assert download("cifar-10", tmp_path).exit_code == 0
    with pytest.raises(DataError, match=r"more than 64 members \(TAR_MAX_MEMBERS\)"):
        load_dataset("cifar-10", tmp_path / "data")


def plain_tar(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


TAR = plain_tar(cifar_members())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(TAR) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.none() | st.integers(0, len(TAR)),
    compress=st.booleans(),
)
def test_a_damaged_tar_is_read_or_refused_never_a_crash(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None, compress: bool
) -> None:
    """Bytes of the tar (headers and records) changed, the tar cut, the gzip stream changed:
    the reader returns arrays of the promised shapes or raises DataError naming the file."""
    data = bytearray(TAR[:cut] if cut is not None else TAR)
    if compress:
        data = bytearray(gzip.compress(bytes(data), mtime=0))
    for at, value in edits:
        if data:
            data[at % len(data)] = value
    if not compress:
        data = bytearray(gzip.compress(bytes(data), mtime=0))
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(bytes(data))
    try:
        arrays = read_cifar_binary(path)
    except DataError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
        return
    assert arrays.train_images.shape[1:] == (3, 32, 32) and arrays.train_images.dtype == np.uint8
    assert len(arrays.train_labels) == len(arrays.train_images)
    assert int(arrays.train_labels.max()) < 10 and int(arrays.test_labels.max()) < 10
