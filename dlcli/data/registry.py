"""The datasets ``dlcli download`` knows: their archives, checksums, mirrors and class names.

Two layouts (:data:`FORMATS`): ``idx``, four gzip IDX archives (MNIST, Fashion-MNIST, KMNIST),
and ``cifar-binary``, one tar.gz of fixed-size binary records (CIFAR-10's "binary version",
read by :mod:`dlcli.data.cifar`, never unpickled). Adding a dataset in either layout is one more
:class:`DatasetEntry` in :data:`REGISTRY`. No torch here.

Every size and checksum below is the one published by the dataset's authors, torchvision or
TensorFlow Datasets (each entry names its sources); they cannot be re-checked offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dlcli.errors import UsageError, did_you_mean

# The four archives every IDX dataset has, in download order.
ROLES = ("train_images", "train_labels", "test_images", "test_labels")
# Layout -> the roles of its archives (DatasetEntry.files' keys).
FORMATS: dict[str, tuple[str, ...]] = {"idx": ROLES, "cifar-binary": ("archive",)}


@dataclass(frozen=True)
class ArchiveFile:
    """One archive as published: its name on every mirror, its size and checksums."""

    filename: str
    size: int
    sha256: str
    md5: str | None = None  # checked too when published


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset: its archives (a train and a test split of images and labels) and classes."""

    name: str
    description: str
    files: Mapping[str, ArchiveFile]  # role (see FORMATS) -> archive
    num_classes: int
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; the file name is appended
    license: str
    homepage: str
    input_shape: tuple[int, int, int] = (28, 28, 1)  # (height, width, channels)
    format: str = "idx"  # a key of FORMATS: how the archives are laid out

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format must be one of {tuple(FORMATS)}")
        roles = FORMATS[self.format]
        if sorted(self.files) != sorted(roles):
            raise ValueError(
                f"{self.name}: files must have the roles {roles}, got {tuple(self.files)}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {self.num_classes} classes but {len(self.class_names)} names"
            )

    @property
    def total_size(self) -> int:
        """Bytes of all its archives."""
        return sum(f.size for f in self.files.values())


def _archives(*files: tuple[str, int, str, str]) -> dict[str, ArchiveFile]:
    """The four archives, given in :data:`ROLES` order as (filename, size, sha256, md5)."""
    return {role: ArchiveFile(*spec) for role, spec in zip(ROLES, files, strict=True)}


MNIST = DatasetEntry(
    name="mnist",
    description="Handwritten digits 0-9, 28×28 grey: 60,000 train and 10,000 test images",
    files=_archives(
        (
            "train-images-idx3-ubyte.gz",
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "d53e105ee54ea40749a09fcbcd1e9432",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "9fb629c4189551a2d022fa330f9573f3",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    num_classes=10,
    class_names=tuple(str(digit) for digit in range(10)),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        # The original site has answered 403 Forbidden for years; kept last in case it returns.
        "http://yann.lecun.com/exdb/mnist/",
    ),
    license="CC BY-SA 3.0 (LeCun, Cortes, Burges)",
    homepage="http://yann.lecun.com/exdb/mnist/",
)

FASHION_MNIST = DatasetEntry(
    name="fashion-mnist",
    description="Zalando article images in 10 classes, 28×28 grey: 60,000 train and 10,000 test",
    files=_archives(
        (
            "train-images-idx3-ubyte.gz",
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "25c81989df183df01b3e8a0aad5dffbe",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "bef4ecab320f06d8554ea6380940ec79",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ),
    num_classes=10,
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    license="MIT (Zalando SE)",
    homepage="https://github.com/zalandoresearch/fashion-mnist",
)

# Sizes and SHA-256: TensorFlow Datasets' url_checksums/kmnist.txt; MD5: torchvision's
# datasets/mnist.py (KMNIST.resources).
KMNIST = DatasetEntry(
    name="kmnist",
    description="Kuzushiji-MNIST: cursive Japanese hiragana in 10 classes, 28×28 grey: 60,000 "
    "train and 10,000 test images",
    files=_archives(
        (
            "train-images-idx3-ubyte.gz",
            18165135,
            "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            "bdb82020997e1d708af4cf47b453dcf7",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            29497,
            "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            "e144d726b3acfaa3e44228e80efcd344",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            3041136,
            "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            "5c965bf0a639b31b8f53240b1b52f4d7",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            5120,
            "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
    ),
    num_classes=10,
    # Romanised, in label order (the dataset's kmnist_classmap.csv; torchvision's classes).
    class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    mirrors=(
        "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",  # the address the checksums name
    ),
    license="CC BY-SA 4.0 (ROIS-DS CODH, NIJL)",
    homepage="https://github.com/rois-codh/kmnist",
)

# Size and SHA-256: TensorFlow Datasets' url_checksums/cifar10.txt; MD5: the CIFAR page's table.
CIFAR10 = DatasetEntry(
    name="cifar-10",
    description="Small colour photos in 10 classes, 32×32 RGB: 50,000 train and 10,000 test "
    "images (the binary version, read as records, never unpickled)",
    files={
        "archive": ArchiveFile(
            "cifar-10-binary.tar.gz",
            170052171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            "c32a1d4ab5d03f1284b67883e8d87530",
        )
    },
    num_classes=10,
    # batches.meta.txt, in label order.
    class_names=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    license="none stated (cite Krizhevsky 2009)",
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    input_shape=(32, 32, 3),
    format="cifar-binary",
)

# Name -> entry; ``dlcli download NAME`` and the ``data.name`` config key look names up here.
REGISTRY: dict[str, DatasetEntry] = {
    entry.name: entry for entry in (MNIST, FASHION_MNIST, KMNIST, CIFAR10)
}


def get_entry(name: str) -> DatasetEntry:
    """The registry entry called ``name``; a :class:`UsageError` with a suggestion otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = tuple(REGISTRY)
        raise UsageError(
            f"unknown dataset '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}"
        ) from None
