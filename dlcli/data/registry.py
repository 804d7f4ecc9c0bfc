"""The datasets ``dlcli download`` knows: their archives, checksums, mirrors and class names.

Adding a dataset in the same four-archive IDX layout (e.g. KMNIST) is one more
:class:`DatasetEntry` in :data:`REGISTRY`. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dlcli.errors import UsageError, did_you_mean

# The four archives every dataset has, in download order.
ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class ArchiveFile:
    """One archive as published: its name on every mirror, its size and checksums."""

    filename: str
    size: int
    sha256: str
    md5: str | None = None  # checked too when published


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of IDX archives (images and labels for a train and a test split)."""

    name: str
    description: str
    files: Mapping[str, ArchiveFile]  # role (see ROLES) -> archive
    num_classes: int
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; the file name is appended
    license: str
    homepage: str
    input_shape: tuple[int, int, int] = (28, 28, 1)  # (height, width, channels)

    def __post_init__(self) -> None:
        if sorted(self.files) != sorted(ROLES):
            raise ValueError(
                f"{self.name}: files must have the roles {ROLES}, got {tuple(self.files)}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {self.num_classes} classes but {len(self.class_names)} names"
            )

    @property
    def total_size(self) -> int:
        """Bytes of all four archives."""
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

# Name -> entry; ``dlcli download NAME`` and the ``data.name`` config key look names up here.
REGISTRY: dict[str, DatasetEntry] = {entry.name: entry for entry in (MNIST, FASHION_MNIST)}


def get_entry(name: str) -> DatasetEntry:
    """The registry entry called ``name``; a :class:`UsageError` with a suggestion otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = tuple(REGISTRY)
        raise UsageError(
            f"unknown dataset '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}"
        ) from None
