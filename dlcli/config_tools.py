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

from dlcli import atomic
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
from dlcli.untrusted import check_replaceable, shell_word

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
    shown = shell_word(path)  # the commands below are pasted into a shell as they are
    command = f"dlcli train {shown}"
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
        (f"# `dlcli config show {shown}` prints every key with its default and meaning;", ""),
        (
            f"# `dlcli config validate {shown}` checks an edit (and the model's shapes) in a "
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


MAX_SIDE = 64  # init --from shrinks larger images to this on their long side


def starter_from_data(path: str, data: Path, *, template: str | None = None) -> str:
    """A starter config for the data at ``data`` (a folder of class folders, a folder holding
    train/ and test/, a CSV, an .npz or an IDX archive): its classes, an input shape from
    its images (long side at most :data:`MAX_SIDE`) and a model for that shape (``cnn`` for
    colour or larger than 32×32 images unless ``template`` says otherwise)."""
    from dlcli.data.local import LocalData, describe
    from dlcli.data.sources import split_folders

    splits = split_folders(data) or {"train": data}
    paths = {name: split.resolve() for name, split in splits.items()}
    spec = LocalData(paths["train"], paths.get("test"), paths.get("validation"))
    home = Path(path).resolve().parent  # a config's data paths resolve against its folder
    names, conversion = describe(spec)
    (height, width), channels = _fitted(conversion.height, conversion.width), conversion.channels
    if template is None:
        template = "cnn" if channels > 1 or max(height, width) > 32 else "mlp"
    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    output = f"runs/{Path(path).stem}"
    comments = {"train": "class folders, a path,label CSV, an .npz or an IDX archive"}
    found = f"{conversion.height}×{conversion.width} {'greyscale' if channels == 1 else 'colour'}"
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    lines: list[tuple[str, str]] = [
        (f"# dlcli train {shell_word(path)}", ""),
        ("#", ""),
        (
            f"# A starter config for your own data ({data}), written by `dlcli init --from`:",
            "",
        ),
        (f"# {len(names)} classes ({shown}); the images are mostly {found}.", ""),
        (f"# It trains as is:  dlcli train {shell_word(path)}", ""),
        (
            f"# `dlcli data check {shell_word(data)}` lists the images per class, sizes, modes and "
            "unreadable files;",
            "",
        ),
        (
            f"# `dlcli config show {shell_word(path)}` prints every key with its default and "
            "meaning.",
            "",
        ),
        ("data:", ""),
        *(
            (f"  {name}: {_quoted(_portable(p, home))}", comments.get(name, f"the {name} data"))
            for name, p in paths.items()
        ),
        *(
            [("  validation_split: 0.1", "fraction of train held out for validation")]
            if "validation" not in paths
            else []
        ),
        ("  resize: stretch", "images to input_shape: stretch | pad | crop"),
        ("model:", ""),
        (
            f"  input_shape: {flow_yaml([height, width, channels])}",
            "height, width, channels every image is converted to",
        ),
        ("  layers:", "in order; every layer's input size is inferred"),
        *((f"    - {layer}", "") for layer in _LAYERS[template]),
        (f"    - {{type: dense, units: {len(names)}}}", "one output (logit) per class"),
        ("training:", ""),
        ("  optimizer: {name: adam, learning_rate: 0.001}", "adam, adamw, sgd or rmsprop"),
        ("  loss: softmax_cross_entropy_with_logits", ""),
        ("  metrics: [accuracy]", "and/or top_k_accuracy"),
        ("  epochs: 10", "passes over the training set"),
        (f"  batch_size: {32 if template == 'cnn' else 100}", "samples per step"),
        ("  seed: 0", "the same seed gives the same split, weights and run"),
        ("  device: auto", "auto | cpu | cuda | cuda:N | mps"),
        ("output:", ""),
        (f"  dir: {flow_yaml(output)}", "where the trained model is saved"),
    ]
    return aligned(lines)


def _fitted(height: int, width: int) -> tuple[int, int]:
    """(height, width) scaled so the long side is at most :data:`MAX_SIDE`."""
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _portable(data: Path, home: Path) -> Path:
    """``data`` relative to ``home`` (the config's folder) when it lies inside it, so the config
    and its data can be moved, copied or committed together; else ``data`` (absolute)."""
    return data.relative_to(home) if data.is_relative_to(home) else data


def _quoted(path: Path) -> str:
    return flow_yaml(str(path))


def write_starter(
    path: Path,
    *,
    template: str = "mlp",
    dataset: str = "fashion-mnist",
    force: bool = False,
    data: Path | None = None,
    template_given: bool = True,
) -> str:
    """Write :func:`starter_config` (or, with ``data``, :func:`starter_from_data`) to ``path``
    (refusing to replace a file unless ``force``)."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a file name, e.g. {path / 'config.yaml'}")
    check_replaceable(path, UsageError, "config")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to overwrite it")
    if data is not None:
        text = starter_from_data(str(path), data, template=template if template_given else None)
    else:
        text = starter_config(str(path), template=template, dataset=dataset)
    parse_config(parse_yaml(text), source=str(path), as_written=True)  # init must load
    write_atomically(path, text.encode("utf-8"), "the config")
    return text


def write_atomically(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to a temporary sibling and rename it to ``path``: a full disk or a
    read-only directory is an :class:`OutputError` naming ``path``, and leaves nothing; so does
    an interruption (Ctrl-C), which is raised on."""
    check_replaceable(path, OutputError, what.removeprefix("the "))
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    tmp = atomic.temp_sibling(path)  # one a killed write left is removed once an hour old
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as err:  # a full disk, or Ctrl-C while writing: nothing is left
        tmp.unlink(missing_ok=True)
        for folder in created:  # innermost first; only the folders this call made
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write {what}: {write_problem(err)}") from None
        raise


# --- config show ------------------------------------------------------------------------------


def commented_yaml(cfg: Config, source: str | None = None) -> str:
    """The resolved config as YAML, each key followed by its one-line doc as a comment.

    It loads back to the same config (``parse_config(yaml.safe_load(text)) == cfg``).
    """
    header = [f"{source}, resolved: defaults filled in, --set overrides applied"] if source else []
    return dump_yaml(cfg, header)


# --- config validate --------------------------------------------------------------------------


def validate_config(
    path: Path, overrides: list[str] | tuple[str, ...] = (), *, check_data: bool = True
) -> dict[str, Any]:
    """Load ``path`` and build its model (no optimizer, no Trainer); any problem is a
    :class:`ConfigError`.

    Checks the schema and values, the device name, the input shape against a registry
    dataset's images, and every layer's shape (a kernel larger than its input, a missing
    flatten, a last layer with the wrong number of classes). With ``check_data``, also what
    ``train`` checks before its first step: the data files exist and are readable archives of
    consistent shapes and labels, and ``model.input_shape`` matches their images (a registry
    dataset: its archives are downloaded, each of its registry size).
    """
    cfg = load_config(path, overrides)
    where = str(path)
    num_classes = _num_classes(cfg, where)
    if check_data and cfg.data.dataset is None:  # a registry dataset's shape is known above
        _check_data(cfg, where)
    elif check_data:
        _check_registry_files(cfg, where)
    built = _build(cfg, num_classes, where)
    from dlcli.model import hwc  # torch: imported by _build already
    from dlcli.pipeline import check_translate

    try:
        check_translate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err.message}") from None

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


def _check_data(cfg: Config, where: str) -> None:
    """Read the data as ``train`` will (a problem is a config error here: exit 2)."""
    from dlcli.errors import DataError
    from dlcli.pipeline import config_data, record_input_shape

    try:
        record_input_shape(cfg, config_data(cfg))
    except (DataError, ConfigError) as err:
        raise ConfigError(f"{where}: {err.message}", details=err.details) from None


def _check_registry_files(cfg: Config, where: str) -> None:
    """A registry dataset's archives are where ``train`` looks, each of its registry size (as
    ``train`` checks before reading them; ``dlcli download`` verified their SHA-256)."""
    from dlcli.data.download import registry_root, verify_dataset
    from dlcli.data.registry import REGISTRY
    from dlcli.errors import DataError

    assert cfg.data.dataset is not None
    try:
        verify_dataset(REGISTRY[cfg.data.dataset], registry_root(cfg.data, None))
    except DataError as err:
        raise ConfigError(f"{where}: {err.message}") from None


def _num_classes(cfg: Config, where: str) -> int:
    from dlcli.data.images import check_input_shape
    from dlcli.data.registry import REGISTRY

    if cfg.data.train is not None:
        return infer_from_data(cfg)
    if cfg.data.dataset is None:
        assert cfg.data.num_classes is not None  # guaranteed by parse_config
        return cfg.data.num_classes
    entry = REGISTRY[cfg.data.dataset]
    try:
        check_input_shape(cfg.model.input_shape, entry.input_shape, entry.name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err.message}") from None
    return entry.num_classes


def infer_from_data(cfg: Config) -> int:
    """``data.train``'s class count, from its listing; an input shape left out is inferred
    from the train images' headers (as training will)."""
    from dlcli.data.local import LocalData, describe

    names, conversion = describe(LocalData.from_config(cfg.data, cfg.model.input_shape))
    if cfg.model.input_shape is None:
        cfg.model.input_shape = [conversion.height, conversion.width, conversion.channels]
    return len(names)


def _build(cfg: Config, num_classes: int, where: str) -> Any:
    from dlcli.model import build_model

    try:
        return build_model(cfg.model, num_classes=num_classes)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err.message}", details=err.details) from None
