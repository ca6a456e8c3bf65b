"""Image decoding for real collections: every Pillow format to (H, W, 3) uint8 RGB.

``load_image_with_info`` decodes one file fully (truncated files are errors even
when ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set), applies the EXIF
orientation, converts every pixel mode to 8-bit RGB and optionally downscales so
the longer side is at most ``max_side``.  The returned :class:`LoadedImage`
maps coordinates measured on its pixels back to the original (EXIF-transposed)
image.  Mode conversion rules:

* ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ... : Pillow's conversion to RGB.
* Any alpha (``RGBA``, ``LA``, ``PA``, a palette or colour-key transparency):
  composited over a **white** background.
* ``I;16*`` (16-bit): ``round(v / 257)``, so 0..65535 maps onto 0..255.
* ``I`` (32-bit int): ``round(v / 257)`` when all values lie in 0..65535,
  otherwise the min..max range is stretched onto 0..255.
* ``F`` (32-bit float): ``v * 255`` when all values lie in [0, 1], unchanged
  when in [0, 255], otherwise min..max stretched; NaN becomes 0.

Multi-frame files (GIF, multi-page TIFF) yield their first frame.  Every
rejection raises :class:`ImageError` (a ``ValueError``) naming the file and the
reason.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from d2r.errors import InputError

__all__ = [
    "EncodedImage",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "ImageIterator",
    "LoadedImage",
    "iter_images",
    "list_images",
    "load_image",
    "load_image_with_info",
    "read_skipped",
    "write_skipped",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 2 * 89_478_485
"""Largest accepted width * height: Pillow's own decompression-bomb error threshold."""

DEFAULT_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm",
)
"""File extensions :func:`list_images` picks up by default (matched case-insensitively)."""

_TRUNCATION_LOCK = threading.Lock()
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


@dataclass(frozen=True)
class EncodedImage:
    """An encoded image file held in memory (what a caller passed as bytes, a file object
    or pixels), named ``label`` in messages."""

    data: bytes
    label: str


class ImageError(InputError):
    """An image file that cannot be used; ``path`` and ``reason`` are attributes."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and how it relates to the file's original pixels.

    Attributes:
        pixels: (H, W, 3) uint8 RGB, possibly downscaled.
        original_size: (width, height) of the file's image after EXIF orientation.
        scale: factor applied to the original, ``<= 1`` (1.0 when not resized).
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    scale: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of ``pixels``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Exact per-axis factors (pixels size / original size) after rounding to whole pixels."""
        (w, h), (ow, oh) = self.size, self.original_size
        return w / ow, h / oh

    def to_original(self, xy) -> np.ndarray:
        """Map (N, 2) (x, y) coordinates on ``pixels`` to original-image pixels, float32.

        Pixel centres sit at integer coordinates on both grids, so the mapping is
        ``(x + 0.5) / sx - 0.5`` per axis (the identity when not resized).
        """
        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        factors = np.asarray(self.scale_xy, dtype=np.float64)
        return ((pts + 0.5) / factors - 0.5).astype(np.float32)

    def rotated(self, degrees: int) -> LoadedImage:
        """This image turned ``degrees`` clockwise (a multiple of 90).

        The turned image is the new original: ``original_size`` turns with the
        pixels, so coordinates refer to the upright image. ``0`` returns ``self``.
        """
        if int(degrees) != degrees or int(degrees) % 90:
            raise ValueError(f"rotation must be a multiple of 90 degrees, got {degrees!r}")
        turns = int(degrees) // 90 % 4
        if turns == 0:
            return self
        width, height = self.original_size
        return LoadedImage(
            pixels=np.ascontiguousarray(np.rot90(self.pixels, k=-turns, axes=(0, 1))),
            original_size=(height, width) if turns % 2 else (width, height),
            scale=self.scale,
        )


def load_image(
    path: str | os.PathLike, *, max_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode ``path`` to (H, W, 3) uint8 RGB; see :func:`load_image_with_info`."""
    return load_image_with_info(path, max_side=max_side, max_pixels=max_pixels).pixels


def load_image_with_info(
    path: str | os.PathLike | EncodedImage, *, max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Decode ``path`` fully, apply EXIF orientation, convert to RGB uint8, optionally downscale.

    Args:
        path: any file Pillow can read, or an :class:`EncodedImage` holding one (decoded
            from memory, named by its label).
        max_side: when set, images whose longer side exceeds it are downscaled
            (Lanczos, aspect ratio kept) so the longer side equals ``max_side``.
        max_pixels: images with more than this many pixels are refused before
            decoding (decompression-bomb guard).  Values above Pillow's own
            limit (``2 * Image.MAX_IMAGE_PIXELS``) also need that limit raised.

    Raises:
        ImageError: missing, empty, non-image, truncated, corrupt, too large or
            unsupported files.
    """
    if max_side is not None and (isinstance(max_side, bool) or int(max_side) != max_side or max_side < 1):
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")
    if isinstance(max_pixels, bool) or int(max_pixels) != max_pixels or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(path, EncodedImage):
        path, source = path.label, io.BytesIO(path.data)
        if not source.getbuffer().nbytes:
            raise ImageError(path, "file is empty")
    else:
        source = path
        _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_pixel_count(path, im.size, max_pixels)
                _decode_fully(im)
                im = _exif_transpose(path, im)
                rgb = _to_rgb(path, im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"image too large, refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not an image file Pillow can identify") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"corrupt or truncated image ({exc})") from exc
    original_size = rgb.size
    scale = 1.0
    if max_side is not None and max(original_size) > max_side:
        scale = max_side / max(original_size)
        new_size = tuple(max(1, round(v * scale)) for v in original_size)
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    pixels = np.asarray(rgb, dtype=np.uint8)
    return LoadedImage(pixels=pixels, original_size=original_size, scale=scale)


def _check_file(path: str | os.PathLike) -> None:
    """Refuse a directory, an empty or an unreadable file before decoding."""
    if os.path.isdir(path):
        raise ImageError(path, "is a directory, not an image file")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, "file is empty")
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc


def _check_pixel_count(path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(path, f"image has no pixels (size {width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            path,
            f"image has {width}x{height} = {width * height} pixels, more than the limit "
            f"{max_pixels} (decompression-bomb guard)",
        )


def _decode_fully(im: Image.Image) -> None:
    """Decode all pixel data, refusing truncated files whatever LOAD_TRUNCATED_IMAGES says."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()
        return
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _exif_transpose(path, im: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(im)
    except Exception as exc:  # malformed EXIF must not lose an otherwise good image
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", os.fspath(path), exc)
        return im
    return im if transposed is None else transposed


def _to_rgb(path, im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    try:
        if has_alpha:
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(path, f"unsupported pixel mode {mode!r} ({exc})") from exc


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a (H, W) 16/32-bit integer or float image onto uint8 following the module rules."""
    data = values.astype(np.float64)
    if mode == "F":
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        data = data / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        data = data * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255:
        pass
    elif hi > lo:
        data = (data - lo) * (255.0 / (hi - lo))
    else:
        data = np.zeros_like(data)
    return np.clip(np.rint(data), 0, 255).astype(np.uint8)


class ImageIterator:
    """Iterable over ``(name, LoadedImage)``; made by :func:`iter_images`.

    Attributes:
        skipped: ``(name, reason)`` of every file refused so far (``on_error="skip"``).
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        root: str | os.PathLike | None,
        max_side: int | None,
        max_pixels: int,
        on_error: str,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self._paths = paths
        self._root = None if root is None else Path(root)
        self._max_side = max_side
        self._max_pixels = max_pixels
        self._on_error = on_error
        self.skipped: list[tuple[str, str]] = []

    def __iter__(self) -> Iterator[tuple[str | os.PathLike, LoadedImage]]:
        for name in self._paths:
            path = name if self._root is None else self._root / name
            try:
                loaded = load_image_with_info(
                    path, max_side=self._max_side, max_pixels=self._max_pixels
                )
            except ImageError as exc:
                if self._on_error == "raise":
                    raise
                logger.warning("skipping image %s", exc)
                self.skipped.append((os.fspath(name), exc.reason))
                continue
            yield name, loaded


def iter_images(
    paths: Iterable[str | os.PathLike],
    *,
    root: str | os.PathLike | None = None,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_error: Literal["raise", "skip"] = "raise",
) -> ImageIterator:
    """Decode many images lazily, yielding ``(name, LoadedImage)`` in input order.

    ``paths`` are file paths, or names relative to ``root`` when it is given
    (the form :func:`list_images` returns).  With ``on_error="skip"`` a refused
    file is logged as a warning and recorded in the iterator's ``skipped`` list
    instead of raising :class:`ImageError`.
    """
    return ImageIterator(
        paths, root=root, max_side=max_side, max_pixels=max_pixels, on_error=on_error
    )


def list_images(
    directory: str | os.PathLike, *, extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    skip: Callable[[Path], bool] | None = None,
) -> list[str]:
    """Sorted recursive listing of image files under ``directory``.

    Returns names relative to ``directory`` with ``/`` separators.  Extensions
    match case-insensitively, with or without the leading dot.  Sub-folders for which
    ``skip(folder)`` is true are not entered.
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"image directory {os.fspath(directory)!r} does not exist or is not a directory")
    wanted = {("." + e.lstrip(".")).lower() for e in extensions}
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if not skip(Path(dirpath, d))]
        for filename in filenames:
            if os.path.splitext(filename)[1].lower() in wanted:
                names.append(Path(dirpath, filename).relative_to(root).as_posix())
    return sorted(names)


_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
_HEADER = "name\treason"


def _escape(text: str) -> str:
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _unescape(text: str) -> str:
    out, i = [], 0
    table = {escaped[1]: raw for raw, escaped in _ESCAPES}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def write_skipped(skipped: Iterable[tuple[str, str]], path: str | os.PathLike) -> None:
    """Write ``(name, reason)`` pairs as UTF-8 TSV with a ``name<TAB>reason`` header.

    Backslash, tab, newline and carriage return are written as ``\\\\``, ``\\t``,
    ``\\n``, ``\\r``.  The file is replaced atomically.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(_HEADER + "\n")
        for name, reason in skipped:
            f.write(f"{_escape(os.fspath(name))}\t{_escape(str(reason))}\n")
    os.replace(tmp, path)


def read_skipped(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a file written by :func:`write_skipped`."""
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    if not lines or lines[0] != _HEADER:
        raise ValueError(f"{os.fspath(path)}: not a skipped-images file (missing {_HEADER!r} header)")
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{os.fspath(path)}:{number}: expected 2 tab-separated fields, got {len(fields)}")
        pairs.append((_unescape(fields[0]), _unescape(fields[1])))
    return pairs
