"""Small image trees the own-data tests make: learnable class folders, and a tree of every kind
of file a user's folder holds (modes, formats, broken files, nested folders, unicode names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from conftest import learnable_patterns
from PIL import Image

CLASSES = ("row0", "row2", "row4", "row6")  # learnable_patterns' class k lights row 2k


def write_learnable_tree(
    root: Path, count: int, *, seed: int = 0, suffix: str = ".png", mode: str = "L"
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 8×8 images of :func:`learnable_patterns` as ``root/<row2k>/<i>.png``; returns
    the images and labels written (labels index :data:`CLASSES`)."""
    images, labels = learnable_patterns(count, np.random.default_rng(seed))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").convert(mode).save(folder / f"{i:05d}{suffix}")
    return images, labels


def write_odd_tree(root: Path) -> dict[str, Path]:
    """One class folder per kind of image, and the broken files a real folder has.

    Readable: ``grey`` (L PNG), ``rgb`` (RGB JPEG), ``rgba`` (RGBA PNG, half transparent),
    ``deep`` (16-bit greyscale PNG), ``palette`` (P PNG with a transparent index),
    ``nested`` (``nested/a/b/deep.png``), ``ünïcødé`` (``ünïcødé/画像.png``). Unreadable:
    ``broken/corrupt.png`` (a PNG cut short), ``broken/empty.png`` (0 bytes). Ignored:
    ``grey/notes.txt``. Returns the notable paths by name.
    """
    rng = np.random.default_rng(7)
    paths: dict[str, Path] = {}

    def save(image: Image.Image, rel: str, name: str, **kwargs: object) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)  # type: ignore[arg-type]
        paths[name] = path

    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    save(Image.fromarray(grey, mode="L"), "grey/a.png", "grey")
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    save(Image.fromarray(rgb, mode="RGB"), "rgb/b.jpg", "jpeg", quality=95)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    rgba[:, :5, 3] = 0  # left half fully transparent
    rgba[:, 5:, 3] = 255
    save(Image.fromarray(rgba, mode="RGBA"), "rgba/c.png", "rgba")
    deep = (rng.integers(0, 65536, (12, 10))).astype(np.uint16)
    save(Image.fromarray(deep), "deep/d.png", "deep")  # mode I;16
    palette = Image.fromarray(grey, mode="L").convert("P")
    palette.info["transparency"] = 0
    save(palette, "palette/e.png", "palette", transparency=0)
    save(Image.fromarray(grey, mode="L"), "nested/a/b/deep.png", "nested")
    save(Image.fromarray(grey, mode="L"), "ünïcødé/画像.png", "unicode")
    good = root / "grey" / "a.png"
    corrupt = root / "broken" / "corrupt.png"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(good.read_bytes()[:60])
    paths["corrupt"] = corrupt
    empty = root / "broken" / "empty.png"
    empty.write_bytes(b"")
    paths["empty"] = empty
    notes = root / "grey" / "notes.txt"
    notes.write_text("not an image\n")
    paths["notes"] = notes
    return paths


def write_resized_config(folder: Path, count: int = 80) -> Path:
    """``folder/resized.yaml``: a dense model on ``count`` 8×8 class-folder images that it
    takes at 4×4 (``model.input_shape``, the images resized as they are read); 1 epoch, no
    cache, saving to ``folder/runs/resized``."""
    write_learnable_tree(folder / "train", count)
    cfg = {
        "data": {"train": str(folder / "train"), "validation_split": 0.25, "cache": False},
        "model": {
            "input_shape": [4, 4, 1],
            "layers": [{"type": "flatten"}, {"type": "dense", "units": 4}],
        },
        "training": {"epochs": 1, "batch_size": 10},
        "output": {"dir": str(folder / "runs" / "resized")},
    }
    path = folder / "resized.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
