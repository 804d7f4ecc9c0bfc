"""``dlcli predict``: run a saved model on new inputs.

Inputs, recognised by their first bytes (then by their suffix):

* **IDX archives**, gzip-compressed or raw (the MNIST files): ``uint8`` images N×H×W or N×H×W×C.
* **.npy arrays** (``np.save``; never unpickled): ``uint8`` pixel values 0-255, any integer type
  holding 0-255, or floats scaled to 0-1 (what the model sees after dividing by 255). Shapes
  H×W (one image), N×H×W (single-channel models), H×W×C, N×H×W×C or N×C×H×W, with exactly the
  model's height and width.
* **Images** (PNG, JPEG, and the other formats Pillow reads; the ``images`` extra): converted
  exactly as training converted them (:mod:`dlcli.data.images`, with the run's ``data.resize``
  and ``data.background``), decoded in parallel (:mod:`dlcli.data.decode`).
* **Folders** (every image file below, sorted by path) and **glob patterns** (``'pics/*.png'``,
  ``'pics/**/*.jpg'``, expanded by dlcli when the shell did not).

Every input is stacked into one uint8 (or float) tensor and run through the model in batches, so
10,000 images take one pass. Probabilities are the softmax of the model's outputs (the outputs
themselves when the last layer already applies softmax); classes are ranked by the outputs, so
the top class is exactly the one ``dlcli evaluate`` counts as the prediction.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from dlcli import untrusted
from dlcli.data.decode import bad_files_error, decode_files
from dlcli.data.idx import looks_like_idx
from dlcli.data.images import (
    CHANNEL_MODES,
    IMAGE_SUFFIXES,
    Conversion,
    float_pixels,
    is_image_name,
    pillow,
)
from dlcli.data.sources import check_npy_size, npy_header
from dlcli.errors import DataError, UsageError, named

Shape = tuple[int, ...]  # (channels, height, width)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Inputs:
    """Images stacked N×C×H×W (pixel values 0-255) and, per image, where it came from."""

    images: torch.Tensor
    sources: list[str]
    items: list[int]  # the image's index within its file (0 for an image file)


@dataclass
class Prediction:
    source: str
    item: int
    top: list[tuple[int, float]]  # (class index, probability), best first

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        best, probability = self.top[0]
        return {
            "input": self.source,
            "item": self.item,
            "class": best,
            "class_name": class_names[best],
            "probability": probability,
            "top_k": [
                {"class": c, "class_name": class_names[c], "probability": p} for c, p in self.top
            ],
        }


@dataclass
class PredictResult:
    model_dir: Path
    class_names: list[str]
    predictions: list[Prediction]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "count": len(self.predictions),
            "class_names": self.class_names,
            "seconds": round(self.seconds, 4),
            "predictions": [p.to_dict(self.class_names) for p in self.predictions],
        }

    def csv_rows(self, top_k: int) -> list[list[Any]]:
        """A header and one row per input: input, item, then class, name, probability per rank."""
        header: list[Any] = ["input", "item", "class", "class_name", "probability"]
        for rank in range(2, top_k + 1):
            header += [f"class_{rank}", f"class_name_{rank}", f"probability_{rank}"]
        rows = [header]
        for p in self.predictions:
            row: list[Any] = [p.source, p.item]
            for c, prob in p.top:
                row += [c, self.class_names[c], prob]
            rows.append(row)
        return rows


def predict(
    model_dir: Path,
    paths: Sequence[Path],
    *,
    top_k: int = 1,
    batch_size: int = 1000,
    device: str = "auto",
    weights: str = "saved",
    tta: str | None = None,
) -> PredictResult:
    """Verify and load ``model_dir`` (``weights``: saved, best or last), read ``paths`` and
    rank the classes of every image (``tta``: none or flip test-time augmentation; None: the
    run's ``training.tta``)."""
    from dlcli.pipeline import load_model

    loaded = load_model(model_dir, device, weights, tta)
    check_top_k(top_k, loaded.built.output_shape[0])  # before reading any input
    return rank(loaded, run_inputs(loaded, paths), top_k=top_k, batch_size=batch_size)


def run_inputs(loaded: Any, paths: Sequence[Path]) -> Inputs:
    """Input files as a loaded run (:class:`dlcli.pipeline.LoadedModel`) reads them: folders
    and patterns expanded, images converted with the run's ``data.resize`` and
    ``data.background`` (as its training images were)."""
    data = loaded.run.config.data
    return read_inputs(
        expand_inputs(paths),
        loaded.built.input_shape,
        resize=data.resize,
        background=data.background,
    )


def check_top_k(top_k: int, num_classes: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UsageError(
            f"{named('top_k')}: expected a whole number of at least 1, found {top_k!r}"
        )
    if top_k > num_classes:
        raise UsageError(
            f"{named('top_k')} {top_k}: the model has {num_classes} classes; expected at most "
            f"{num_classes}"
        )


def rank(loaded: Any, inputs: Inputs, *, top_k: int = 1, batch_size: int = 1000) -> PredictResult:
    """The ``top_k`` classes of every input and their probabilities, by a loaded model
    (:class:`dlcli.pipeline.LoadedModel`)."""
    num_classes = loaded.built.output_shape[0]
    check_top_k(top_k, num_classes)
    start = time.perf_counter()
    outputs = loaded.outputs(inputs.images, batch_size=batch_size)
    probabilities = outputs if _ends_in_softmax(loaded) else outputs.softmax(dim=1)
    # Rank by the raw outputs: the top class is the argmax `evaluate` scores, even where two
    # probabilities round to the same float.
    order = outputs.topk(top_k, dim=1).indices
    ranked = probabilities.gather(1, order)
    seconds = time.perf_counter() - start
    classes, probs = order.tolist(), ranked.tolist()
    predictions = [
        Prediction(source, item, [(c, round(p, 6)) for c, p in zip(cs, ps, strict=True)])
        for source, item, cs, ps in zip(inputs.sources, inputs.items, classes, probs, strict=True)
    ]
    return PredictResult(
        loaded.run.path, class_names(loaded.run.metrics, num_classes), predictions, seconds
    )


def array_inputs(array: npt.NDArray[Any] | torch.Tensor, shape: Shape) -> Inputs:
    """Images given as an array (numpy or torch), in any shape and value range a ``.npy``
    input may have (see the module doc), as :class:`Inputs` named ``array``."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    images = to_nchw(_pixel_values(np.asarray(array), "array"), shape, "array")
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return Inputs(tensor, ["array"] * len(images), list(range(len(images))))


def class_names(metrics: dict[str, Any], num_classes: int) -> list[str]:
    """The class names a run saved (metrics.json ``dataset.class_names``), else "0", "1", …"""
    names = metrics.get("dataset", {}).get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def _ends_in_softmax(loaded: Any) -> bool:
    layers = loaded.run.config.model.layers
    return bool(layers) and getattr(layers[-1], "activation", None) == "softmax"


# --- reading inputs ---------------------------------------------------------------------------


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a folder → every image file below it (sorted); a glob pattern that is
    not a file → its matches (sorted; ``**`` recurses)."""
    expanded: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise DataError(f"{path}: no image files in the folder ({_suffixes()})")
            expanded += found
        elif not path.exists() and glob.has_magic(str(path)):
            files = _unique_files(_glob(str(path)))
            if not files:
                raise DataError(f"{path}: no file matches the pattern")
            expanded += files
        else:
            expanded.append(path)
    return expanded


def _glob(pattern: str) -> list[str]:
    """The sorted matches of ``pattern``; ``**`` matches any run of folders, hidden ones and
    links to folders left out (as :func:`image_files`: a link loop is not followed)."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return sorted(glob.glob(pattern))  # no recursion, so no link loop
    at = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    top = os.sep.join(parts[:at]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if _matches(os.path.relpath(path, top).split(os.sep), parts[at:]):
                found.append(path if at else os.path.relpath(path))
    return sorted(found)


def _matches(names: list[str], parts: list[str]) -> bool:
    """Whether the path ``names`` matches the pattern ``parts`` (glob's rules per name)."""
    if not parts:
        return not names
    if parts[0] == "**":
        shown = next((i for i, name in enumerate(names) if name.startswith(".")), len(names))
        return any(_matches(names[i:], parts[1:]) for i in range(shown + 1))
    if not names or (names[0].startswith(".") and not parts[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], parts[0]) and _matches(names[1:], parts[1:])


def _unique_files(matches: list[str]) -> list[Path]:
    """The files among ``matches``, each once (two names of one file: the first kept)."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for match in matches:
        try:
            info = os.stat(match)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) or (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        files.append(Path(match))
    return files


def image_files(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (hidden ones skipped), sorted by path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, n) for n in filenames if is_image_name(n) and not n.startswith(".")]
    return sorted(found, key=lambda p: p.parts)


def _suffixes() -> str:
    return ", ".join(IMAGE_SUFFIXES)


def read_inputs(
    paths: Sequence[Path], shape: Shape, *, resize: str = "stretch", background: int = 0
) -> Inputs:
    """Read every input file as N×C×H×W pixel values 0-255 for a model taking ``shape``;
    image files are converted with ``resize`` and ``background`` (see dlcli.data.images)."""
    if not paths:
        raise UsageError("no INPUT given: name IDX archives, .npy arrays or image files")
    kinds = [input_kind(Path(path)) for path in paths]
    images = [Path(p) for p, kind in zip(paths, kinds, strict=True) if kind == "image"]
    decoded = iter(_read_images(images, shape, resize, background)) if images else iter([])
    arrays: list[npt.NDArray[Any]] = []
    sources: list[str] = []
    items: list[int] = []
    for path, kind in zip(paths, kinds, strict=True):
        array = next(decoded) if kind == "image" else read_input(Path(path), shape, kind)
        arrays.append(array)
        sources += [str(path)] * len(array)
        items += range(len(array))
    if any(a.dtype != np.uint8 for a in arrays):
        arrays = [a.astype(np.float32) for a in arrays]
    stacked = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays)))
    return Inputs(stacked, sources, items)


def _read_images(
    paths: list[Path], shape: Shape, resize: str, background: int
) -> list[npt.NDArray[np.uint8]]:
    """Image files decoded in parallel, each as a 1×C×H×W array; any bad file stops it."""
    c, h, w = shape
    if c not in CHANNEL_MODES:
        raise DataError(
            f"{paths[0]}: the model takes {c}-channel input; images can be fed only to 1-channel "
            "(grayscale), 3-channel (RGB) or 4-channel (RGBA) models: give a .npy array instead"
        )
    try:
        pillow()
    except UsageError as err:
        raise UsageError(f"{paths[0]}: {err.message}") from None
    decoded = decode_files(paths, Conversion(h, w, c, resize, background))
    if len(decoded.bad) == 1:
        path, reason = decoded.bad[0]
        raise DataError(f"{path}: {reason}")
    if decoded.bad:
        raise bad_files_error(decoded.bad, "")
    return [decoded.images[i : i + 1] for i in range(len(decoded.images))]


def read_input(path: Path, shape: Shape, kind: str | None = None) -> npt.NDArray[Any]:
    """One IDX or .npy input file as an N×C×H×W array: uint8, or float32 on the 0-255 scale."""
    kind = kind or input_kind(path)
    if kind == "image":
        return _read_images([path], shape, "stretch", 0)[0]
    if kind == "npy":
        array = _load_npy(path)
    else:
        from dlcli.data.idx import read_idx

        array = read_idx(path)
    return to_nchw(_pixel_values(array, str(path)), shape, str(path))


def input_kind(path: Path) -> str:
    """``idx``, ``npy`` or ``image``, from the file's first bytes (or, failing that, its name)."""
    with untrusted.open_regular(path, DataError, "input file") as f:  # never a FIFO
        try:
            head = f.read(8)
        except OSError as err:
            raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "image"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if looks_like_idx(head):
        return "idx"
    raise DataError(
        f"{path}: not a recognised input: expected an IDX archive (gzip or raw), a .npy "
        f"array, or an image ({', '.join(IMAGE_SUFFIXES)}); found first bytes "
        f"{head[:4].hex(' ') or '(empty file)'}"
    )


def _load_npy(path: Path) -> npt.NDArray[Any]:
    """A ``.npy`` array, its header checked against the file size before anything is
    allocated (a header may claim 10^12 images), never unpickled."""
    with untrusted.open_regular(path, DataError, "input file") as f:
        shape, fortran, dtype = npy_header(f, str(path))
        check_npy_size(shape, dtype, os.fstat(f.fileno()).st_size - f.tell(), str(path))
        try:
            array = np.fromfile(f, dtype=dtype, count=math.prod(shape))
        except (ValueError, OSError, MemoryError) as err:
            raise DataError(f"{path}: not a readable .npy array: {err}") from None
    return array.reshape(shape, order="F" if fortran else "C")


def _pixel_values(array: npt.NDArray[Any], source: str) -> npt.NDArray[Any]:
    """uint8 as is; integers holding 0-255 as uint8; floats in [0, 1] as float32 × 255."""
    if array.dtype == np.uint8:
        return array
    kind = array.dtype.kind
    if kind not in "iuf" or array.dtype == np.bool_:
        raise DataError(
            f"{source}: expected pixel values as uint8 (0-255) or floats (0-1), "
            f"found dtype {array.dtype}"
        )
    if array.size == 0:
        return array.astype(np.uint8)
    if kind == "f":
        return float_pixels(array, source)
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise DataError(
            f"{source}: an integer array must hold pixel values 0-255, "
            f"found values from {low} to {high}"
        )
    return array.astype(np.uint8)


def to_nchw(array: npt.NDArray[Any], shape: Shape, source: str) -> npt.NDArray[Any]:
    """An array of one of the accepted layouts (see the module doc) as N×C×H×W."""
    c, h, w = shape
    if array.ndim == 2 and c == 1 and array.shape == (h, w):
        return array.reshape(1, 1, h, w)
    if array.ndim == 3 and c == 1 and array.shape[1:] == (h, w):
        return array.reshape(-1, 1, h, w)
    if array.ndim == 3 and array.shape == (h, w, c):
        return np.expand_dims(array.transpose(2, 0, 1), 0)
    if array.ndim == 4 and array.shape[1:] == (h, w, c):
        return np.transpose(array, (0, 3, 1, 2))
    if array.ndim == 4 and array.shape[1:] == (c, h, w):
        return array
    layouts = [f"(N, {h}, {w}, {c})", f"(N, {c}, {h}, {w})", f"({h}, {w}, {c})"]
    if c == 1:
        layouts = [f"(N, {h}, {w})", f"({h}, {w})", *layouts]
    raise DataError(
        f"{source}: an array of shape {tuple(array.shape)} does not fit the model's input "
        f"{h}×{w}×{c} (height×width×channels); expected one of {', '.join(layouts)}"
    )
