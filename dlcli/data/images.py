"""Image files → the model's input: the one conversion training, ``evaluate --data`` and
``predict`` share, so a picture gives the same pixels wherever it goes in.

:func:`read_image` opens a file (the only place dlcli opens an image file), and
:func:`convert` turns it into an H×W×C ``uint8`` array for a :class:`Conversion` (a file of
several frames, an animated GIF, PNG or WebP or a multi-page TIFF, gives its first), in order:

1. **EXIF orientation** applied (a phone photo taken sideways stands up).
2. **Mode normalised**: 16-bit greyscale (``I;16``, ``I;16B``, ``I``) is scaled to 8 bits
   (value / 257, rounded); an ``I`` (32-bit integer) image holding values outside 0-65535 is
   refused. Float greyscale (``F``, e.g. a float32 TIFF) holds pixel / 255, the rule of float
   ``.npy`` inputs (:func:`float_pixels`): values in [0, 1] are scaled × 255 and rounded, and
   an image with values outside [0, 1] (or NaN) is refused naming the file. Palette images
   become RGB (RGBA when the palette has transparency); 1-bit, CMYK, YCbCr and the other
   modes become RGB.
3. **Transparency composited** on a solid background, the grey level ``background``
   (``data.background``, default 0: black, like MNIST's background).
4. **Channels**: 1 → greyscale ``L`` (ITU-R 601-2 luma: L = R·299/1000 + G·587/1000 +
   B·114/1000), 3 → ``RGB``, 4 → ``RGBA`` (kept, not composited).
5. **Size** (``data.resize``): ``stretch`` (default) resizes to the model's height × width,
   ignoring the aspect ratio; ``pad`` fits the image inside and fills the rest with
   ``background``, centred; ``crop`` fills the size and cuts the overflow, centred. The filter
   is bilinear, with Pillow's antialiasing when shrinking. An image already at the size is not
   resampled.

Pillow (the ``images`` extra) is imported on first use; no torch here, so decoding workers
start fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dlcli import limits, untrusted
from dlcli.errors import ConfigError, DataError, Interrupted, UsageError

if TYPE_CHECKING:
    from PIL.Image import Image

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad", "crop")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Modes Pillow gives greyscale files; anything else is colour (inferring input_shape).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
DIGEST_BYTES = 16  # the size of ImageInfo.digest (BLAKE2b of the file's bytes)
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def check_input_shape(
    declared: Sequence[int] | None, found: Sequence[int], source: str
) -> list[int]:
    """The one check that the data fits ``model.input_shape`` (a config error, exit 2).

    ``found`` is the data's image shape (height, width, channels), ``source`` names the data
    ("mnist", "the dataset"). Returns the shape the model takes: ``declared``, or ``found``
    when the config leaves it out (inferred from the data).
    """
    shape = [int(d) for d in found]
    if declared is not None and list(declared) != shape:
        raise ConfigError(
            f"model.input_shape: the config says {list(declared)}, but {source}'s images are "
            f"{shape} (height, width, channels)"
        )
    return shape


def check_image_size(height: int, width: int, source: str = "") -> None:
    """The one bound on the model's image size: at most
    :data:`~dlcli.limits.IMAGE_MAX_PIXELS` pixels (height × width), the most dlcli decodes
    from a file; otherwise a :class:`ConfigError` naming ``model.input_shape``, or, for a
    size read from data, a :class:`DataError` naming that ``source``."""
    if height * width <= limits.IMAGE_MAX_PIXELS:
        return
    size = f"{height} × {width} is {height * width:,} pixels, more than the "
    size += f"{limits.IMAGE_MAX_PIXELS:,} dlcli decodes from an image"
    if source:
        raise DataError(f"{source}: images of {size}")
    raise ConfigError(f"model.input_shape: {size}")


@dataclass(frozen=True)
class Conversion:
    """How an image becomes the model's input (height, width, channels as the model takes
    them; ``resize`` and ``background`` as documented above)."""

    height: int
    width: int
    channels: int
    resize: str = "stretch"
    background: int = 0

    def __post_init__(self) -> None:
        check_image_size(self.height, self.width)
        if self.channels not in CHANNEL_MODES:
            raise UsageError(
                f"model.input_shape: images can be fed to 1-channel (greyscale), 3-channel "
                f"(RGB) or 4-channel (RGBA) models, found {self.channels} channels"
            )
        if self.resize not in RESIZE_MODES:
            raise UsageError(
                f"data.resize: expected one of {', '.join(RESIZE_MODES)}, found {self.resize!r}"
            )

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, stored: Conversion) -> bool:
        """Whether pixels converted as ``stored`` are what this conversion makes."""
        return stored == self


def pillow() -> None:
    """Check Pillow is installed; a :class:`UsageError` saying how to install it otherwise."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise UsageError(
            "reading images needs Pillow, the images extra: pip install 'dlcli[images]'"
        ) from None


@dataclass(frozen=True)
class ImageInfo:
    """What a file held before conversion (what ``dlcli data check`` reports)."""

    mode: str
    width: int
    height: int
    digest: str  # BLAKE2b of the file's bytes: duplicates, files in both train and test


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file: a regular file (:func:`dlcli.untrusted.open_regular`),
    not empty, at most :data:`~dlcli.limits.IMAGE_MAX_BYTES`; a :class:`DataError` otherwise
    (a 3 GB file named ``.png`` was read whole, by every decoding process at once)."""
    shown = os.fspath(path)
    with untrusted.open_regular(path, DataError, "image file") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.IMAGE_MAX_BYTES:
            raise DataError(
                f"{shown}: the image file is {size:,} bytes, more than the "
                f"{limits.IMAGE_MAX_BYTES:,} an image of at most {limits.IMAGE_MAX_PIXELS:,} "
                "pixels needs"
            )
        try:
            data = f.read(size)  # the size it has, not the limit: read(n) allocates n first
        except OSError as err:
            raise DataError(f"{shown}: cannot read the image: {err.strerror or err}") from None
        except MemoryError:
            raise DataError(f"{shown}: not enough memory to read its {size:,} bytes") from None
    if not data:
        raise DataError(f"{shown}: empty file (0 bytes), expected an image")
    return data


def decode_image(data: bytes, source: str) -> Image:
    """Decode an image file's bytes fully; a :class:`DataError` naming ``source`` on anything
    wrong with them (not an image, truncated, corrupt, more pixels than
    :data:`~dlcli.limits.IMAGE_MAX_PIXELS`: refused from the header, before decoding)."""
    pillow()
    import PIL.Image

    damage = _png_damage(data) if data.startswith(_PNG_SIGNATURE) else None
    if damage:
        raise DataError(f"{source}: cannot read the image: {damage}")
    warned: list[str] = []
    try:
        with _pillow_guard(warned):
            image = PIL.Image.open(io.BytesIO(data))
            image.load()
    except (DataError, Interrupted):
        raise
    except PIL.UnidentifiedImageError:
        if warned:  # what Pillow found wrong ("Truncated File Read"), not "not an image"
            raise DataError(f"{source}: cannot read the image: {warned[0]}") from None
        raise DataError(f"{source}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise DataError(_too_large(source, err)) from None
    except Exception as err:  # a malformed file makes decoders raise almost anything
        raise DataError(f"{source}: cannot read the image: {_reason(err)}") from None
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_damage(data: bytes) -> str | None:
    """What is wrong with a PNG file's chunks, or None. Every chunk's CRC is checked: Pillow
    checks none of the pixel data's (IDAT), so a flipped bit there decoded to wrong pixels
    without a word; and the file must end with its IEND chunk: one cut short only a few
    bytes before decoded as if whole."""
    view = memoryview(data)
    at = len(_PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(view[at : at + 4], "big")
        kind = bytes(view[at + 4 : at + 8]).decode("latin-1")
        end = at + 8 + length
        if end + 4 > len(data):
            return f"truncated PNG: its {kind!r} chunk at byte {at:,} runs past the end of the file"
        if zlib.crc32(view[at + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return f"corrupt PNG: the CRC of its {kind!r} chunk at byte {at:,} does not match"
        if kind == "IEND":
            return None
        at = end + 4
    return "truncated PNG: the file ends before its IEND chunk"


@contextlib.contextmanager
def _pillow_guard(warned: list[str] | None = None) -> Iterator[None]:
    """Around every Pillow call on a file's bytes: the decompression-bomb check at dlcli's
    limit (above it Pillow warns, made an error; above twice it refuses), and Pillow's other
    warnings ("Truncated File Read", "Corrupt EXIF data") kept out of stderr, where they went
    as a source path and a line of Pillow's code: their text is appended to ``warned``, for
    the message of a file that then cannot be read."""
    import PIL.Image

    saved = PIL.Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings(record=True) as caught:
            PIL.Image.MAX_IMAGE_PIXELS = limits.IMAGE_MAX_PIXELS
            warnings.simplefilter("always")
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            try:
                yield
            finally:
                if warned is not None:
                    warned += [untrusted.shorten(str(w.message).strip()) for w in caught]
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


def _too_large(source: str, err: Exception) -> str:
    """The bomb refusal, with the pixel count the header declares. Not Pillow's own text: above
    twice the limit it names its error threshold ("exceeds limit of 100000000 pixels"), not
    dlcli's limit."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    declared = f": the image declares {int(found.group(1)):,}" if found else ""
    return (
        f"{source}: refused: more than the {limits.IMAGE_MAX_PIXELS:,} pixels dlcli decodes"
        f"{declared} (a decompression bomb?)"
    )


def read_image(
    path: str | os.PathLike[str], conversion: Conversion
) -> tuple[npt.NDArray[np.uint8], ImageInfo]:
    """An image file as an H×W×C ``uint8`` array for ``conversion``, and what it was."""
    shown = os.fspath(path)
    data = read_image_bytes(path)
    image = decode_image(data, shown)
    info = ImageInfo(image.mode, image.width, image.height, _digest(data))
    try:
        return convert(image, conversion, shown), info
    except (Interrupted, DataError):
        raise
    except Exception as err:  # e.g. a broken EXIF block found while rotating
        raise DataError(f"{shown}: cannot convert the image: {_reason(err)}") from None
    finally:
        image.close()


def inspect_image(path: str | os.PathLike[str]) -> ImageInfo:
    """Decode an image file fully (so a truncated one is found) and say what it holds; pixel
    values ``train`` would refuse (a float image outside [0, 1], a 32-bit one beyond 16 bits)
    are a :class:`DataError` here too."""
    shown = os.fspath(path)
    data = read_image_bytes(path)
    with decode_image(data, shown) as image:
        if image.mode == "F" or image.mode in _SIXTEEN_BIT:
            _eight_bit(image, shown)
        return ImageInfo(image.mode, image.width, image.height, _digest(data))


def peek_image(path: str | os.PathLike[str]) -> ImageInfo:
    """Mode and size from an image file's header, without decoding its pixels (no digest)."""
    pillow()
    import PIL.Image
    import PIL.ImageOps

    try:
        with (
            untrusted.open_regular(path, DataError, "image file") as f,
            _pillow_guard(),
            PIL.Image.open(f) as image,
        ):
            return ImageInfo(str(image.mode), int(image.width), int(image.height), "")
    except (Interrupted, DataError):
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
        raise DataError(_too_large(os.fspath(path), err)) from None
    except Exception as err:
        raise DataError(f"{os.fspath(path)}: cannot read the image: {_reason(err)}") from None


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text if isinstance(err, OSError | ValueError) else f"{type(err).__name__}: {text}"


def convert(
    image: Image, conversion: Conversion, source: str = "the image"
) -> npt.NDArray[np.uint8]:
    """A decoded Pillow image as an H×W×C ``uint8`` array (see the module doc for the steps);
    a :class:`DataError` naming ``source`` for pixel values with no 8-bit meaning."""
    pillow()
    import PIL.Image
    import PIL.ImageOps

    with _pillow_guard():  # a broken EXIF block warns while rotating: the image is kept
        image = PIL.ImageOps.exif_transpose(image)
        image = _eight_bit(image, source)
        target = CHANNEL_MODES[conversion.channels]
        if target != "RGBA" and _has_alpha(image):
            image = _composite(image, conversion.background)
        if image.mode != target:
            image = image.convert(target)
        image = _resize(image, conversion)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(conversion.height, conversion.width, conversion.channels)


def _eight_bit(image: Image, source: str) -> Image:
    """16-bit greyscale scaled to 8 bits, float greyscale from [0, 1]; palette, 1-bit and
    other modes to RGB(A)/L."""
    pillow()
    import PIL.Image
    import PIL.ImageOps

    if image.mode in _SIXTEEN_BIT:
        wide = np.asarray(image, dtype=np.int64)
        if wide.size and (int(wide.min()) < 0 or int(wide.max()) > 65535):
            raise DataError(
                f"{source}: an integer image (mode {image.mode}) must hold 16-bit values 0-65535, "
                f"found values "
                f"from {int(wide.min())} to {int(wide.max())}; save it as 8 or 16 bits"
            )
        narrow = ((wide + 128) // 257).astype(np.uint8)
        return PIL.Image.fromarray(narrow, mode="L")
    if image.mode == "F":
        values = float_pixels(np.asarray(image), source, "a float image")
        return PIL.Image.fromarray(np.rint(values).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if _has_alpha(image) else "RGB")
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "La":
        return image.convert("LA")
    if image.mode == "RGBa":
        return image.convert("RGBA")
    return image.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV, RGBX ...


def float_pixels(
    values: npt.NDArray[Any], source: str, what: str = "a float array"
) -> npt.NDArray[np.float32]:
    """The one rule for float pixel values (float ``.npy`` inputs, mode ``F`` images): they
    hold pixel / 255, so values in [0, 1] come back × 255 as float32 on the 0-255 scale; NaN,
    infinities or values outside [0, 1] are a :class:`DataError` naming ``source``."""
    if values.size == 0:
        return values.astype(np.float32)
    low, high = values.min(), values.max()
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 1):
        found = "NaN values" if bool(np.isnan(values).any()) else f"values from {low:g} to {high:g}"
        raise DataError(
            f"{source}: {what} must hold values in [0, 1] (pixel / 255), found {found}; "
            "divide by 255, or save it as uint8"
        )
    scaled: npt.NDArray[np.float32] = values.astype(np.float32) * np.float32(255)
    return scaled


def _has_alpha(image: Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _composite(image: Image, background: int) -> Image:
    pillow()
    import PIL.Image
    import PIL.ImageOps

    rgba = image.convert("RGBA")
    base = PIL.Image.new("RGBA", rgba.size, (background, background, background, 255))
    return PIL.Image.alpha_composite(base, rgba).convert("RGB")


def _resize(image: Image, conversion: Conversion) -> Image:
    pillow()
    import PIL.Image
    import PIL.ImageOps

    size = (conversion.width, conversion.height)
    if image.size == size:
        return image
    bilinear = PIL.Image.Resampling.BILINEAR
    if conversion.resize == "crop":
        return PIL.ImageOps.fit(image, size, method=bilinear)
    if conversion.resize == "pad":
        fill: int | tuple[int, ...] = conversion.background
        if image.mode != "L":
            fill = (conversion.background,) * 3 + ((255,) if image.mode == "RGBA" else ())
        return PIL.ImageOps.pad(image, size, method=bilinear, color=fill)
    return image.resize(size, bilinear)


_SUFFIXES = frozenset(suffix[1:] for suffix in IMAGE_SUFFIXES)


def is_image_name(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_SUFFIXES` (any case)."""
    stem, dot, suffix = name.rpartition(".")
    return bool(dot and stem) and suffix.lower() in _SUFFIXES
