"""Uploaded images of ``d2r serve``: checked on arrival, kept in ``INDEX/uploads/``.

:func:`read_upload` takes an upload's bytes (at most the upload limit) and refuses an
empty file, a file that is not an image, and an image of too many pixels (its size read
from the header, also past Pillow's decompression-bomb limit).

:class:`Uploads` keeps the images added through the API.  A new image is written to a
fresh ``uploads/.incoming-<hex>`` file and indexed from there under its name; only after
the index committed does it take the place of ``uploads/NAME`` (one rename), so a failed
add or replace leaves the stored photo and the index as they were, and no file behind.
The index records ``uploads/`` as the folder of these images, so ``uploads/NAME`` is the
file of image NAME.  ``uploads`` must be a real folder of the index: a symbolic link is
refused, so API writes never land outside it.
"""

from __future__ import annotations

import io
import os
import struct
import uuid
from pathlib import Path

from PIL import Image

from d2r.errors import InputError

__all__ = ["UPLOADS", "MAX_NAME_BYTES", "UploadError", "check_name", "read_upload", "Uploads"]

UPLOADS = "uploads"
"""Folder of the index directory where images added through the API are kept."""

MAX_NAME_BYTES = 255
"""The longest image name in UTF-8 bytes: the usual limit of a file name."""

_INCOMING = ".incoming-"


class UploadError(InputError):
    """An upload refused: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: str) -> None:
    """Refuse an image name that cannot be a file name of ``uploads/`` (400)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UploadError(400, f"image name {name!r} is not valid UTF-8 text") from None
    if size > MAX_NAME_BYTES:
        raise UploadError(400, f"image name {name[:40]!r}... is {size} bytes in UTF-8, more "
                               f"than the limit of {MAX_NAME_BYTES}")
    if not name or name.startswith(".") or any(c in "/\\" or ord(c) < 32 or ord(c) == 127
                                                for c in name):
        raise UploadError(400, f"image name {name!r} must be 1-{MAX_NAME_BYTES} bytes without "
                               f"'/', '\\' or control characters, not starting with '.'")


def read_upload(data: bytes, label: str, *, max_bytes: int, max_pixels: int) -> None:
    """Refuse the upload ``data`` (named ``label`` in messages) when it is larger than
    ``max_bytes`` or ``max_pixels``, empty, or not an image."""
    if len(data) > max_bytes:
        raise UploadError(413, f"{label} is larger than the {max_bytes / 2**20:.1f} MiB upload "
                               f"limit")
    if not data:
        raise UploadError(400, f"{label} is empty")
    size = _image_size(data)
    if size is None:
        raise UploadError(400, f"{label} is not an image d2r can read (JPEG, PNG, WebP, TIFF, "
                               f"...)")
    width, height = size
    if width * height > max_pixels:
        raise UploadError(413, f"{label} has {width}x{height} pixels, more than the limit of "
                               f"{max_pixels}")


def _image_size(data: bytes):
    """(width, height) from the header of an image file, or None when Pillow cannot read it.

    Past ``2 * Image.MAX_IMAGE_PIXELS`` ``Image.open`` refuses to tell the size; the format
    plugins are then asked directly, as ``Image.open`` does, without that check.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError:
        pass
    except (OSError, ValueError, SyntaxError, EOFError):
        return None
    Image.init()
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        if accept is not None and not accept(data[:16]):
            continue
        try:
            with factory(io.BytesIO(data)) as image:
                return image.size
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                struct.error):
            continue
    return None


class Uploads:
    """``INDEX/uploads/``: the files of the images added through the API."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self.path = index / UPLOADS

    def folder(self) -> Path:
        """The folder, created when missing; refused (409) when it is not a real folder of
        the index."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise UploadError(409, "the index's uploads folder is a symbolic link or not a "
                                   "folder; the server writes images only inside the index")
        self.path.mkdir(exist_ok=True)
        resolved = self.path.resolve()
        if resolved.parent != self.index.resolve():
            raise UploadError(409, "the index's uploads folder leads outside the index; the "
                                   "server writes images only inside the index")
        return resolved

    def stage(self, data: bytes) -> Path:
        """``data`` written to a new ``.incoming-<hex>`` file of the folder."""
        file = self.folder() / f"{_INCOMING}{uuid.uuid4().hex}"
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        with open(fd, "wb") as out:
            out.write(data)
        return file

    def keep(self, staged: Path, name: str) -> None:
        """The staged file becomes ``uploads/NAME`` (after the index committed it)."""
        os.replace(staged, self.folder() / name)

    def discard(self, name: str) -> None:
        """Remove ``uploads/NAME`` (after the index stopped using it)."""
        (self.folder() / name).unlink(missing_ok=True)

    def holds(self, file) -> bool:
        """Whether ``file`` is a file of the folder."""
        return file is not None and Path(file).parent.resolve() == self.path.resolve()
