"""``dlcli export``: a saved model as an ONNX file, for serving without PyTorch or dlcli.

The file takes ``images``, float32 N×C×H×W with pixel values divided by 255 (what the model
sees inside dlcli), and returns ``logits``, float32 N×classes; N, the batch axis, is dynamic.
Its metadata holds the class names and the input convention. It is written by PyTorch's
``torch.export``-based exporter (the default since PyTorch 2.9; it needs ``onnxscript``), checked
with ``onnx.checker``, then run with onnxruntime on a batch of a size other than the export's and
compared with PyTorch's outputs before it is moved into place.

onnx, onnxscript and onnxruntime are the optional ``onnx`` extra: ``pip install 'dlcli[onnx]'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcli import atomic, untrusted
from dlcli.errors import DlcliError, ForeignFile, OutputError, UsageError, write_problem
from dlcli.untrusted import in_the_way

FORMATS = ("onnx",)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4  # largest absolute logit difference accepted between ONNX and PyTorch
_EXTRA_MODULES = ("onnx", "onnxscript", "onnxruntime")
_OURS_KEY = "dlcli.weights"  # the metadata key every ONNX file dlcli exports holds
_ONNX_MAX_BYTES = 2**31  # protobuf's limit: a larger file is no ONNX model dlcli wrote


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    opset: int
    max_abs_diff: float
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "input": {"name": INPUT_NAME, "shape": self.input_shape, "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": self.output_shape, "dtype": "float32"},
            "opset": self.opset,
            "max_abs_diff": self.max_abs_diff,
            "size": self.size,
        }


def require_onnx() -> None:
    """Raise a :class:`UsageError` naming the install command when the extra is missing."""
    missing = [name for name in _EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"ONNX export needs the onnx extra (missing: {', '.join(missing)}): "
            "pip install 'dlcli[onnx]'"
        )


def export_onnx(model_dir: Path, out: Path | None = None, weights: str = "saved") -> ExportResult:
    """Export ``model_dir``'s model (``weights``: saved, best or last) to ``out`` (default
    ``MODEL_DIR/model.onnx``, ``model-best.onnx``, ``model-last.onnx``), verified."""
    require_onnx()
    import torch

    from dlcli.pipeline import load_model
    from dlcli.predict import class_names

    loaded = load_model(model_dir, "cpu", weights)
    module = loaded.built.module.eval()
    channels, height, width = loaded.built.input_shape
    num_classes = loaded.built.output_shape[0]
    default = "model.onnx" if weights == "saved" else f"model-{weights}.onnx"
    target = Path(out) if out is not None else Path(model_dir) / default
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, channels, height, width, generator=generator)
    probe = torch.rand(5, channels, height, width, generator=generator)
    metadata = {
        "dlcli.input": "float32 N×C×H×W, pixel values / 255",
        "dlcli.class_names": json.dumps(class_names(loaded.run.metrics, num_classes)),
        "dlcli.model_dir": str(model_dir),
        _OURS_KEY: weights,
    }
    # The path as the user gave it: "--out PATH" only when they gave --out.
    shown = f"--out {target}" if out is not None else str(target)
    with _staging(target, shown) as staging:
        try:
            _torch_export(module, example, staging)
            opset = _finish(staging, metadata)
            diff = _compare(staging, module, probe)
            os.replace(staging, target)
        except OSError as err:  # a full disk, a directory made read-only or removed
            raise OutputError(
                f"{target}: cannot write the ONNX file: {write_problem(err)}"
            ) from None
    return ExportResult(
        target,
        "onnx",
        ["batch", channels, height, width],
        ["batch", num_classes],
        opset,
        diff,
        target.stat().st_size,
    )


@contextlib.contextmanager
def _staging(target: Path, shown: str) -> Iterator[Path]:
    """A temporary file next to ``target`` (removed unless it was moved into place; one an
    export killed while writing left there is removed once an hour old); ``shown`` names
    ``target`` in errors (with ``--out`` when the user gave it)."""
    if target.is_dir():
        raise UsageError(f"{shown}: is a directory, expected a file name")
    _refuse_foreign(target, shown)
    blocker = in_the_way(target.parent)
    if blocker is not None:  # a path that cannot be a file's folder: a usage error, as train -o
        raise UsageError(f"{shown}: cannot write the ONNX file there: {blocker}")
    prefix, suffix = f".{target.name}.", ".tmp"
    name: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # An export killed while it wrote left its temporary file: gone once an hour old.
        atomic.remove_abandoned(target.parent, atomic.mkstemp_names(prefix, suffix))
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    except OSError as err:
        if name is not None:
            Path(name).unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write the ONNX file: {write_problem(err)}") from None
    staging = Path(name)
    try:
        yield staging
    finally:
        staging.unlink(missing_ok=True)


def _refuse_foreign(target: Path, shown: str) -> None:
    """dlcli replaces only an ONNX file it exported (its ``dlcli.weights`` metadata says so):
    any other file at ``target`` is the user's, and is refused (:class:`ForeignFile`)."""
    if not target.exists() and not target.is_symlink():
        return
    ours = False
    if target.is_file() and not target.is_symlink() and _mentions_dlcli(target):
        import onnx

        try:
            props = onnx.load(str(target), load_external_data=False).metadata_props
            ours = any(prop.key == _OURS_KEY for prop in props)
        except Exception:  # not an ONNX file at all: certainly not one dlcli wrote
            ours = False
    if not ours:
        what = "a file"
        with contextlib.suppress(OSError):
            what = untrusted.kind_of(os.lstat(target).st_mode) or what  # /dev/null: a device
        raise ForeignFile(f"{shown}: {what}", "--out")


def _mentions_dlcli(path: Path) -> bool:
    """Whether ``path`` may be an ONNX file dlcli exported: at most 2 GiB and holding the
    metadata key, found by reading it in blocks (parsing the file whole took as much memory
    as the file: 3.4 GB to refuse a 3 GB file it would never overwrite)."""
    key = _OURS_KEY.encode()
    try:
        if path.stat().st_size > _ONNX_MAX_BYTES:
            return False
        with open(path, "rb") as f:
            tail = b""
            for block in iter(lambda: f.read(1 << 20), b""):
                if key in tail + block:
                    return True
                tail = block[-len(key) :]
    except OSError:
        return False
    return False


def _torch_export(module: Any, example: Any, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
        if program is None:  # pragma: no cover - only without dynamo
            raise DlcliError("torch.onnx.export returned no program")
        program.save(str(path))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's warnings and log lines are for PyTorch developers; stdout stays clean."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _finish(path: Path, metadata: dict[str, str]) -> int:
    """Add dlcli's metadata, check the model, save it; return its ONNX opset."""
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _compare(path: Path, module: Any, probe: Any) -> float:
    """Run the file with onnxruntime and return the largest logit difference from PyTorch."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: probe.numpy()})
    with torch.inference_mode():
        expected = module(probe).numpy()
    diff = float(np.max(np.abs(np.asarray(got) - expected))) if expected.size else 0.0
    if not diff <= TOLERANCE:
        raise DlcliError(
            f"the exported ONNX model's outputs differ from PyTorch's by {diff:g} "
            f"(more than {TOLERANCE:g}); this is a bug, please report it"
        )
    return diff
