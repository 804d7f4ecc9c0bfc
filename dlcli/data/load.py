"""The dataset a config's ``data`` section names: a registry entry, four IDX archives, or
your own data (a folder of class folders, a CSV, an .npz), as one :class:`Dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlcli.config import DataConfig
from dlcli.data.dataset import Dataset, load_archives, load_dataset
from dlcli.data.download import registry_root
from dlcli.data.local import LocalData, load_local
from dlcli.errors import DataError

DATA_FILES = ("train_images", "train_labels", "test_images", "test_labels")


def load_data(
    data: DataConfig,
    data_dir: str | None = None,
    *,
    recorded: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
) -> Dataset:
    """The dataset a config names: a registry entry, your own data (``data.train``, converted
    to ``input_shape``, or with the shape inferred when None), or four explicit IDX archives
    (absolute paths: ``load_config`` resolved them against the config file's directory).

    ``recorded`` is a saved run's ``metrics.json`` ``dataset`` section: a registry dataset is
    looked for where the run found it when neither ``data_dir``, ``data.data_dir`` nor
    $DLCLI_DATA_DIR says otherwise (:func:`dlcli.pipeline.open_run` compares the files'
    SHA-256).
    """
    if data.dataset is not None:
        return load_dataset(data.dataset, registry_root(data, data_dir, recorded))
    if data.train is not None:  # own data: images converted to input_shape (None: inferred)
        return load_local(LocalData.from_config(data, input_shape))
    assert data.num_classes is not None  # guaranteed by config validation
    paths = {key: Path(str(getattr(data, key))) for key in DATA_FILES}
    for key, path in paths.items():
        if path.is_dir():
            raise DataError(f"data.{key}: {path} is a directory, expected a data file")
        if not path.exists():  # a FIFO or a device is refused by the reader, by its kind
            raise DataError(
                f"data.{key}: file not found: {path} (relative paths in a config resolve "
                "against the config file's directory)"
            )
    dataset = load_archives(
        paths["train_images"],
        paths["train_labels"],
        paths["test_images"],
        paths["test_labels"],
        data.num_classes,
        class_names=tuple(data.class_names) if data.class_names else None,
    )
    dataset.files = _data_files(paths, dataset.checksums)
    return dataset


def _data_files(paths: dict[str, Path], checksums: dict[str, str]) -> dict[str, Any]:
    """``{key: {"path": absolute path, "sha256": ...}}`` for metrics.json."""
    files = {}
    for key, path in paths.items():
        sha = checksums.get(path.name) or checksums.get(os.fspath(path))
        files[key] = {"path": os.path.abspath(path), "sha256": sha}
    return files
