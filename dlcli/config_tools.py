"""Config tools: ``dlcli init`` (a commented starter config), ``dlcli config show`` (the resolved
config, every field's doc as a comment) and ``dlcli config validate`` (schema, values, and the
model built with shape inference, without loading any data).

Only :func:`validate_config` imports torch (to build the model).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from dlcli.config import (
    Config,
    aligned,
    dump_yaml,
    flow_yaml,
    load_config,
    parse_config,
    parse_yaml,
)
from dlcli.errors import ConfigError, OutputError, UsageError, write_problem

TEMPLATES = ("mlp", "cnn")

_LAYERS = {
    "mlp": [
        "{type: flatten}",
        "{type: dense, units: 300, activation: relu}",
        "{type: dense, units: 100, activation: relu}",
    ],
    "cnn": [
        "{type: conv2d, filters: 16, kernel_size: 3, padding: same, activation: relu}",
        "{type: max_pool2d, pool_size: 2}",
        "{type: conv2d, filters: 32, kernel_size: 3, padding: same, activation: relu}",
        "{type: max_pool2d, pool_size: 2}",
        "{type: flatten}",
        "{type: dense, units: 128, activation: relu}",
        "{type: dropout, rate: 0.25}",
    ],
}


def starter_config(path: str, *, template: str = "mlp", dataset: str = "fashion-mnist") -> str:
    """The text of a commented starter config that trains ``dataset`` as is."""
    from dlcli.data.registry import REGISTRY, get_entry

    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    entry = get_entry(dataset)
    command = f"dlcli train {path}"
    lines: list[tuple[str, str]] = [
        (f"# {command}", ""),
        ("#", ""),
        (
            f"# A starter config ({template} on {entry.name}), written by `dlcli init`. It trains "
            "as is:",
            "",
        ),
        (f"#   dlcli download {entry.name}", "once: fetch and verify the archives"),
        (f"#   {command}", ""),
        (f"# `dlcli config show {path}` prints every key with its default and meaning;", ""),
        (
            f"# `dlcli config validate {path}` checks an edit (and the model's shapes) in a "
            "second.",
            "",
        ),
        ("data:", ""),
        (f"  dataset: {entry.name}", f"registry name ({', '.join(REGISTRY)}), or 4 IDX files"),
        ("  validation_split: 0.05", "fraction of the training set held out for validation"),
        ("model:", ""),
        (f"  input_shape: {flow_yaml(list(entry.input_shape))}", "height, width, channels"),
        ("  layers:", "in order; every layer's input size is inferred"),
        *((f"    - {layer}", "") for layer in _LAYERS[template]),
        (f"    - {{type: dense, units: {entry.num_classes}}}", "one output (logit) per class"),
        ("training:", ""),
        ("  optimizer:", ""),
        ("    name: adam", "adam, adamw, sgd or rmsprop"),
        ("    learning_rate: 0.001", "the step size"),
        ("  loss: softmax_cross_entropy_with_logits", ""),
        ("  metrics: [accuracy]", "and/or top_k_accuracy"),
        ("  epochs: 10", "passes over the training set"),
        ("  batch_size: 100", "samples per step"),
        ("  seed: 0", "the same seed gives the same split, weights and run"),
        ("  device: auto", "auto | cpu | cuda | cuda:N | mps"),
        ("output:", ""),
        (f"  dir: {flow_yaml(f'runs/{Path(path).stem}')}", "where the trained model is saved"),
    ]
    return aligned(lines)


def write_starter(
    path: Path, *, template: str = "mlp", dataset: str = "fashion-mnist", force: bool = False
) -> str:
    """Write :func:`starter_config` to ``path`` (refusing to replace a file unless ``force``)."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a file name, e.g. {path / 'config.yaml'}")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to overwrite it")
    text = starter_config(str(path), template=template, dataset=dataset)
    parse_config(parse_yaml(text), source=str(path))  # what init writes must load
    write_atomically(path, text.encode("utf-8"), "the config")
    return text


def write_atomically(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to a temporary sibling and rename it to ``path``: a full disk or a
    read-only directory is an :class:`OutputError` naming ``path``, and leaves nothing."""
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        for folder in created:  # innermost first; only the folders this call made
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise OutputError(f"{path}: cannot write {what}: {write_problem(err)}") from None


# --- config show ------------------------------------------------------------------------------


def commented_yaml(cfg: Config, source: str | None = None) -> str:
    """The resolved config as YAML, each key followed by its one-line doc as a comment.

    It loads back to the same config (``parse_config(yaml.safe_load(text)) == cfg``).
    """
    header = [f"{source}, resolved: defaults filled in, --set overrides applied"] if source else []
    return dump_yaml(cfg, header)


# --- config validate --------------------------------------------------------------------------


def validate_config(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Load ``path`` and build its model (no optimizer, no Trainer); any problem is a
    :class:`ConfigError`.

    Checks the schema and values, the device name, the input shape against a registry
    dataset's images, and every layer's shape (a kernel larger than its input, a missing
    flatten, a last layer with the wrong number of classes). Reads no data.
    """
    cfg = load_config(path, overrides)
    where = str(path)
    num_classes = _num_classes(cfg, where)
    built = _build(cfg, num_classes, where)
    from dlcli.model import hwc  # torch: imported by _build already

    return {
        "config": where,
        "valid": True,
        "dataset": cfg.data.dataset,
        "num_classes": num_classes,
        "layers": len(built.layers),
        "output_shape_hwc": list(hwc(built.output_shape)),
        "total_params": built.total_params,
        "output_dir": cfg.output.dir,
    }


def _num_classes(cfg: Config, where: str) -> int:
    from dlcli.data.registry import REGISTRY

    if cfg.data.dataset is None:
        assert cfg.data.num_classes is not None  # guaranteed by parse_config
        return cfg.data.num_classes
    entry = REGISTRY[cfg.data.dataset]
    if tuple(cfg.model.input_shape) != entry.input_shape:
        raise ConfigError(
            f"{where}: model.input_shape: the config says {list(cfg.model.input_shape)}, but "
            f"{entry.name}'s images are {list(entry.input_shape)} (height, width, channels)"
        )
    return entry.num_classes


def _build(cfg: Config, num_classes: int, where: str) -> Any:
    from dlcli.model import build_model

    try:
        return build_model(cfg.model, num_classes=num_classes)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err.message}", details=err.details) from None
