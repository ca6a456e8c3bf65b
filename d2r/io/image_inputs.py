"""The images a Python caller hands to :class:`d2r.Index`, as what the one decoder reads.

Accepted: a path (``str`` / ``os.PathLike``), a ``PIL.Image.Image``, a numpy array
((H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, or float in [0, 1]), ``bytes``
(an encoded image file) or a binary file object.  :func:`image_source` (searching) keeps
everything but a path in memory as an :class:`~d2r.io.images.EncodedImage` (bytes and file
objects unchanged, pixels as a lossless PNG, or TIFF for pixel modes PNG lacks);
:func:`image_file` (adding, which records files) writes it to a private temporary file
removed afterwards.  Either way every input goes through
:func:`d2r.io.images.load_image_with_info` (EXIF orientation, mode conversion,
``images.max_side``) exactly as a file would, and messages name the input by its
:func:`label`, never by a temporary file.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from d2r.errors import InputError
from d2r.io.images import EncodedImage, ImageError

__all__ = ["ImageInput", "image_file", "image_source", "label"]

ImageInput = Any
"""``str | os.PathLike | PIL.Image.Image | np.ndarray | bytes | BinaryIO``."""

_MODES = {(): "L", (3,): "RGB", (4,): "RGBA"}
"""Pillow mode of an array by its shape after (H, W)."""


def label(image: ImageInput) -> str:
    """How messages name ``image``: its path, or what kind of object it is."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, np.ndarray):
        return f"the numpy array {image.shape} {image.dtype}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"the {len(image)} bytes"
    name = getattr(image, "filename", None) or getattr(image, "name", None)
    kind = "PIL image" if _is_pil(image) else "file object"
    return f"the {kind} {name}" if isinstance(name, str) and name else f"the {kind}"


def image_source(image: ImageInput, name: str | None = None) -> str | os.PathLike | EncodedImage:
    """What the decoder reads for ``image``: a path as given, anything else encoded in
    memory (no file is written) and named ``name`` in messages (default: :func:`label`)."""
    if isinstance(image, (str, os.PathLike)):
        return image
    name = label(image) if name is None else name
    if isinstance(image, bytes):
        return EncodedImage(image, name)  # an upload is not copied
    buffer = io.BytesIO()
    _write(image, buffer)
    return EncodedImage(buffer.getvalue(), name)


@contextlib.contextmanager
def image_file(image: ImageInput) -> Iterator[str | os.PathLike]:
    """A file holding ``image`` while the block runs (a path: itself, as given);
    :class:`~d2r.io.images.ImageError` raised in the block names :func:`label` instead of
    a temporary file."""
    if isinstance(image, (str, os.PathLike)):
        yield image
        return
    handle, name = tempfile.mkstemp(prefix="d2r-image-")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            _write(image, file)
        try:
            yield path
        except ImageError as exc:
            if exc.path != name:
                raise
            raise ImageError(label(image), exc.reason) from None
    finally:
        path.unlink(missing_ok=True)


def _write(image: ImageInput, file) -> None:
    """Write ``image`` (anything but a path) to the binary ``file``."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        file.write(image)
    elif isinstance(image, np.ndarray):
        _save(_from_array(image), file)
    elif _is_pil(image):
        _save(image, file)
    elif callable(getattr(image, "read", None)):
        data = image.read()
        if not isinstance(data, (bytes, bytearray)):
            raise InputError(f"{label(image)}: is open in text mode; open the image with 'rb'")
        file.write(data)
    else:
        raise InputError(f"{type(image).__name__} is not an image: give a path, a PIL image, "
                         f"a numpy array, bytes or a binary file object")


def _from_array(pixels: np.ndarray):
    """A PIL image of (H, W), (H, W, 3) or (H, W, 4) uint8 or [0, 1] float ``pixels``."""
    from PIL import Image

    mode = _MODES.get(pixels.shape[2:]) if pixels.ndim >= 2 else None
    if mode is None or 0 in pixels.shape:
        raise InputError(f"{label(pixels)}: not an image array; give (H, W) gray, (H, W, 3) "
                         f"RGB or (H, W, 4) RGBA pixels")
    if np.issubdtype(pixels.dtype, np.floating):
        if not (np.all(np.isfinite(pixels)) and pixels.min() >= 0 and pixels.max() <= 1):
            raise InputError(f"{label(pixels)}: float pixels must lie in [0, 1]")
        pixels = np.rint(pixels.astype(np.float64) * 255)
    elif pixels.dtype != np.uint8:
        raise InputError(f"{label(pixels)}: pixels must be uint8, or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode)


def _save(picture, file) -> None:
    """``picture`` as PNG (its EXIF kept), or TIFF when PNG cannot hold its mode."""
    buffer = io.BytesIO()
    try:
        picture.save(buffer, "PNG", exif=picture.getexif())
    except (OSError, ValueError):
        buffer = io.BytesIO()
        picture.save(buffer, "TIFF")
    file.write(buffer.getvalue())


def _is_pil(image: ImageInput) -> bool:
    """Whether ``image`` is a PIL image (without importing Pillow for other inputs)."""
    module = type(image).__module__
    return module.startswith("PIL.") and hasattr(image, "getexif")
