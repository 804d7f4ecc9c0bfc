"""Archives → tensors, their consistency checks, the seeded split, and the real archives."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_DATA, TINY_TEST, TINY_TRAIN, TinyArchives, tiny_arrays

from dlcli.data.dataset import Split, load_archives, load_dataset, split
from dlcli.data.idx import write_idx
from dlcli.data.registry import get_entry
from dlcli.errors import DataError, UsageError


def test_load_archives_shapes_and_dtypes(tiny_archives: TinyArchives) -> None:
    data = load_archives(*tiny_archives[:4], num_classes=10)
    assert data.train.images.shape == (TINY_TRAIN, 1, 28, 28)
    assert data.test.images.shape == (TINY_TEST, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert len(data.train) == TINY_TRAIN and len(data.test) == TINY_TEST
    assert data.image_shape == (1, 28, 28)
    assert data.class_names == tuple("0123456789") and data.name is None
    images, labels = tiny_arrays(TINY_TRAIN, 0)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(images))
    assert data.train.labels.tolist() == labels.tolist()


def test_load_archives_checksums_are_the_files_sha256(tiny_archives: TinyArchives) -> None:
    data = load_archives(*tiny_archives[:4], num_classes=10)
    assert data.checksums == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_archives[:4]
    }


def test_channels_last_images_become_channels_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)  # N, H, W, C
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    for name, array in (("img", images), ("lbl", labels)):
        write_idx(tmp_path / f"{name}.idx", array)
    img, lbl = tmp_path / "img.idx", tmp_path / "lbl.idx"
    data = load_archives(img, lbl, img, lbl, num_classes=3, class_names=["a", "b", "c"])
    assert data.train.images.shape == (6, 3, 5, 4)
    assert data.train.images.is_contiguous()
    assert torch.equal(data.train.images[2, 1], torch.from_numpy(images[2, :, :, 1]))
    assert data.class_names == ("a", "b", "c")


def test_count_mismatch_names_both_files(tiny_archives: TinyArchives, tmp_path: Path) -> None:
    short = tmp_path / "short-labels.gz"
    write_idx(short, np.zeros(TINY_TRAIN - 1, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        load_archives(tiny_archives.train_images, short, *tiny_archives[2:4], num_classes=10)
    assert str(err.value) == (
        f"train images and labels differ in count: {tiny_archives.train_images} has "
        f"{TINY_TRAIN} images, {short} has {TINY_TRAIN - 1} labels"
    )


def test_label_out_of_range(tiny_archives: TinyArchives) -> None:
    with pytest.raises(DataError) as err:
        load_archives(*tiny_archives[:4], num_classes=8)
    # labels cycle 0-9: in the 32 train labels, 8 and 9 occur 3 times each
    assert str(err.value) == (
        f"{tiny_archives.train_labels}: 6 of 32 labels are outside [0, 8) for num_classes 8 "
        "(found 8, 9)"
    )


def test_images_must_be_uint8_3d_or_4d(tiny_archives: TinyArchives, tmp_path: Path) -> None:
    floats = tmp_path / "float-images.idx"
    write_idx(floats, np.zeros((TINY_TRAIN, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match=r"float-images\.idx: expected images of shape \(N, H, W\)"):
        load_archives(floats, *tiny_archives[1:4], num_classes=10)
    flat = tmp_path / "flat-images.idx"
    write_idx(flat, np.zeros((TINY_TRAIN, 784), dtype=np.uint8))
    with pytest.raises(DataError, match=r"found shape \(32, 784\) of uint8"):
        load_archives(flat, *tiny_archives[1:4], num_classes=10)


def test_labels_must_be_1d_integers(tiny_archives: TinyArchives, tmp_path: Path) -> None:
    labels = tmp_path / "2d-labels.idx"
    write_idx(labels, np.zeros((TINY_TRAIN, 2), dtype=np.uint8))
    with pytest.raises(DataError, match=r"2d-labels\.idx: expected labels of shape \(N,\)"):
        load_archives(tiny_archives.train_images, labels, *tiny_archives[2:4], num_classes=10)


def test_train_and_test_image_sizes_must_agree(tiny_archives: TinyArchives, tmp_path: Path) -> None:
    small = tmp_path / "small.idx"
    write_idx(small, np.zeros((TINY_TEST, 14, 14), dtype=np.uint8))
    with pytest.raises(DataError, match=r"are 1×28×28 but test images .* are 1×14×14"):
        load_archives(*tiny_archives[:2], small, tiny_archives.test_labels, num_classes=10)


def test_class_names_must_match_num_classes(tiny_archives: TinyArchives) -> None:
    with pytest.raises(UsageError, match="expected 10 class names"):
        load_archives(*tiny_archives[:4], num_classes=10, class_names=["a", "b"])


def test_a_broken_archive_is_a_data_error(tiny_archives: TinyArchives) -> None:
    tiny_archives.test_images.write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz starts like a gzip file"):
        load_archives(*tiny_archives[:4], num_classes=10)


# --- registry datasets ------------------------------------------------------------------------


def test_missing_registry_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    message = str(err.value)
    assert message.startswith(
        f"fashion-mnist is not in {tmp_path / 'nowhere'}/: missing train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz. "
        "Run `dlcli download fashion-mnist --data-dir "
    )


def test_unknown_registry_dataset() -> None:
    with pytest.raises(UsageError) as err:
        load_dataset("fashon-mnist")
    assert str(err.value) == (
        "unknown dataset 'fashon-mnist' (did you mean 'fashion-mnist'?); known: mnist, "
        "fashion-mnist, kmnist, cifar-10"
    )


def test_damaged_registry_file_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for archive in get_entry("mnist").files.values():
        shutil.copy(REPO_DATA / "mnist" / archive.filename, folder)
    with (folder / "t10k-labels-idx1-ubyte.gz").open("ab") as f:
        f.write(b"x")
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    assert str(err.value) == (
        f"mnist in {folder}/ is damaged: t10k-labels-idx1-ubyte.gz: size mismatch: expected "
        f"4542 bytes, got 4543. Run `dlcli download mnist --data-dir {tmp_path} --force` to "
        "download it again."
    )


def test_real_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist", REPO_DATA)
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert data.test.images.shape == (10000, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8 and data.test.labels.dtype == torch.int64
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.name == "fashion-mnist"
    assert data.checksums["train-images-idx3-ubyte.gz"].startswith("3aede38d6186")


def test_real_mnist_label_counts() -> None:
    data = load_dataset("mnist", REPO_DATA)
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(data.train.labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert torch.bincount(data.test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]  # fmt: skip


# --- split ------------------------------------------------------------------------------------


def numbered(n: int, classes: int = 4, sorted_labels: bool = False) -> Split:
    """``n`` 1×1×1 images whose pixel is their index, so a split's samples can be traced."""
    labels = torch.arange(n) % classes
    if sorted_labels:
        labels = labels.sort().values
    return Split(torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1), labels)


def ids(part: Split) -> list[int]:
    return [int(v) for v in part.images.flatten()]


def test_split_sizes_and_no_overlap() -> None:
    train, val = split(numbered(100), 0.9, seed=0)
    assert (len(train), len(val)) == (90, 10)
    assert sorted(ids(train) + ids(val)) == list(range(100))
    assert [int(part.labels[i]) for part in (train, val) for i in range(3)] == [
        ids(part)[i] % 4 for part in (train, val) for i in range(3)
    ]  # images and labels stay paired


def test_split_fraction_is_floored_like_kotlindl_but_not_float_noise() -> None:
    assert len(split(numbered(100), 0.57, seed=0)[0]) == 57  # 0.57 * 100 == 56.99999999999999
    assert len(split(numbered(10), 0.55, seed=0)[0]) == 5


def test_split_same_seed_same_split_other_seed_other_split() -> None:
    part = numbered(100)
    first, second, other = (split(part, 0.8, seed=s)[1] for s in (7, 7, 8))
    assert ids(first) == ids(second)
    assert ids(first) != ids(other)
    assert ids(first) != list(range(80, 100))  # it did shuffle


def test_split_draws_from_a_seeded_torch_generator() -> None:
    # torch's CPU generator gives the same numbers on every machine
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(0))[7:].tolist()
    assert ids(split(numbered(10), 0.7, seed=0)[1]) == expected


def test_split_without_shuffle_takes_the_tail_for_validation() -> None:
    train, val = split(numbered(20), 0.75, seed=123, shuffle=False)
    assert ids(train) == list(range(15))
    assert ids(val) == list(range(15, 20))


def test_stratified_split_keeps_class_proportions() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    part = Split(torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1), labels)
    train, val = split(part, 0.9, seed=3, stratify=True)
    assert torch.bincount(val.labels).tolist() == [5, 3, 2]
    assert torch.bincount(train.labels).tolist() == [45, 27, 18]
    assert sorted(ids(train) + ids(val)) == list(range(100))
    again = split(part, 0.9, seed=3, stratify=True)[1]
    assert ids(again) == ids(val)
    assert ids(split(part, 0.9, seed=4, stratify=True)[1]) != ids(val)


def test_stratified_split_totals_match_plain_split() -> None:
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    part = Split(torch.zeros(21, 1, 1, 1, dtype=torch.uint8), labels)
    train, val = split(part, 0.5, seed=0, stratify=True)
    assert (len(train), len(val)) == (10, 11)  # floor(0.5 * 21), shared out by remainder
    assert sorted(torch.bincount(val.labels).tolist()) == [3, 4, 4]


def test_stratified_split_of_sorted_labels_without_shuffle() -> None:
    part = numbered(40, classes=4, sorted_labels=True)
    _, val = split(part, 0.8, seed=0, shuffle=False, stratify=True)
    assert torch.bincount(val.labels).tolist() == [2, 2, 2, 2]
    assert ids(val) == [8, 9, 18, 19, 28, 29, 38, 39]  # each class's tail


def test_plain_tail_split_of_sorted_labels_loses_classes() -> None:
    # documented KotlinDL behaviour: on a label-sorted file the tail is one class
    _, val = split(numbered(40, sorted_labels=True), 0.75, seed=0, shuffle=False)
    assert set(val.labels.tolist()) == {3}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_split_fraction_must_be_between_0_and_1(fraction: float) -> None:
    with pytest.raises(UsageError, match=f"between 0 and 1 \\(exclusive\\), got {fraction}"):
        split(numbered(10), fraction, seed=0)


def test_split_refuses_an_empty_side() -> None:
    with pytest.raises(UsageError) as err:
        split(numbered(10), 0.99999999, seed=0)
    assert str(err.value) == (
        "splitting 10 samples with fraction 0.99999999 gives 10 for training and 0 for "
        "validation; both need at least one sample"
    )
    with pytest.raises(UsageError, match="gives 0 for training and 3 for validation"):
        split(numbered(3), 0.2, seed=0)
