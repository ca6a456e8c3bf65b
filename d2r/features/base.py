"""The local feature extractor interface and the image handling every backend shares.

An extractor turns one (H, W, 3) uint8 RGB image into :class:`~d2r.types.LocalFeatures`
whose locations are (x, y) pixels of that image, where pixel centres sit at integer
coordinates.  With ``box=(x1, y1, x2, y2)`` the extractor sees only the crop
``image[floor(y1):ceil(y2), floor(x1):ceil(x2)]`` and the locations it returns are
shifted back into the full image, whose size ``image_size`` reports.

Backends subclass :class:`BaseExtractor` and implement ``_extract_full`` (features of a
whole image); box handling, input checks and the optional longest-side limit live here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from d2r.errors import InputError
from d2r.types import LocalFeatures

__all__ = [
    "LocalFeatureExtractor",
    "BaseExtractor",
    "check_image",
    "check_box",
    "crop_box",
    "resize_max_side",
    "to_original_pixels",
]

@runtime_checkable
class LocalFeatureExtractor(Protocol):
    """What the pipeline needs from a local feature backend."""

    @property
    def dim(self) -> int:
        """Descriptor dimension D of every :class:`LocalFeatures` returned."""

    def extract(self, image: np.ndarray, *, box: Sequence[float] | None = None) -> LocalFeatures:
        """Features of ``image`` (H, W, 3) uint8, optionally restricted to ``box`` (x1, y1, x2, y2)."""

    def config(self) -> dict[str, Any]:
        """JSON-serializable description of the extractor (provenance of stored features)."""


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous (H, W, 3) uint8 array or raise ``ValueError``."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image)


def crop_box(image: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop ``image`` (H, W, 3) to the pixels that ``box`` (x1, y1, x2, y2) touches.

    Returns the crop ``image[floor(y1):ceil(y2), floor(x1):ceil(x2)]`` (clipped to the
    image) and its offset ``(x0, y0)``: a location ``(u, v)`` in the crop is
    ``(u + x0, v + y0)`` in ``image``.  Raises ``ValueError`` for a malformed box or one
    that covers no pixel of the image.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = check_box(box, (width, height))
    x0, y0 = max(0, math.floor(x1)), max(0, math.floor(y1))
    xe, ye = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    return image[y0:ye, x0:xe], (int(x0), int(y0))


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``box`` (x1, y1, x2, y2) as four floats, refused (:class:`~d2r.errors.InputError`,
    plain numbers) unless finite, ordered and covering at least one pixel of an image of
    ``size`` (width, height)."""
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.all(np.isfinite(values)):
        raise InputError(f"box must be four finite numbers x1,y1,x2,y2, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in values)
    shown = ",".join(f"{v:g}" for v in (x1, y1, x2, y2))
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"box {shown} is empty: need x1 < x2 and y1 < y2")
    width, height = size
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise InputError(f"box {shown} misses the {width}x{height} image (x runs from 0 to "
                         f"{width}, y from 0 to {height}, in pixels of the original image)")
    return x1, y1, x2, y2


def resize_max_side(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, tuple[float, float]]:
    """Downscale ``image`` (bilinear) so its longer side is at most ``max_side``.

    Returns the (possibly unchanged) image and the per-axis factors ``(sx, sy)`` =
    new size / old size after rounding to whole pixels (``(1.0, 1.0)`` when unchanged).
    """
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image, (1.0, 1.0)
    factor = max_side / max(height, width)
    new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    return resized, (new_w / width, new_h / height)


def to_original_pixels(xy: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Map (N, 2) (x, y) on a resized image back to the image before resizing, float32.

    Pixel centres sit at integer coordinates on both grids: ``(x + 0.5) / s - 0.5``.
    """
    if factors == (1.0, 1.0):
        return np.asarray(xy, dtype=np.float32)
    f = np.asarray(factors, dtype=np.float64)
    return ((np.asarray(xy, dtype=np.float64) + 0.5) / f - 0.5).astype(np.float32)


def _check_max_side(max_image_side: int | None) -> int | None:
    if max_image_side is None:
        return None
    if isinstance(max_image_side, bool) or int(max_image_side) != max_image_side or max_image_side < 1:
        raise ValueError(f"max_image_side must be a positive integer or None, got {max_image_side!r}")
    return int(max_image_side)


class BaseExtractor(ABC):
    """Shared ``extract``: validates the image, crops to the box, limits the size, maps back.

    Subclasses implement :meth:`_extract_full` on an image that is already cropped and
    resized; they return locations in that image's pixels.
    """

    def __init__(self, *, max_image_side: int | None = None) -> None:
        self.max_image_side = _check_max_side(max_image_side)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Descriptor dimension D."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serializable description of the extractor."""

    @abstractmethod
    def _extract_full(self, image: np.ndarray) -> LocalFeatures:
        """Features of a whole (H, W, 3) uint8 image, locations in its pixels."""

    def extract(self, image: np.ndarray, *, box: Sequence[float] | None = None) -> LocalFeatures:
        """Features of ``image`` (H, W, 3) uint8, or of its ``box`` (x1, y1, x2, y2) crop.

        Locations are (x, y) pixels of ``image``; ``image_size`` is its (W, H).
        """
        image = check_image(image)
        height, width = image.shape[:2]
        offset = (0, 0)
        if box is not None:
            image, offset = crop_box(image, box)
        if image.shape[0] == 0 or image.shape[1] == 0:
            return LocalFeatures.empty(self.dim, (width, height))
        resized, factors = resize_max_side(image, self.max_image_side)
        feats = self._extract_full(resized)
        if feats.dim != self.dim:
            raise RuntimeError(
                f"{type(self).__name__} produced {feats.dim}-D descriptors, expected {self.dim}"
            )
        locations = to_original_pixels(feats.locations, factors)
        if offset != (0, 0):
            locations = locations + np.asarray(offset, dtype=np.float32)
        return LocalFeatures(
            locations=locations,
            descriptors=feats.descriptors,
            scales=feats.scales,
            scores=feats.scores,
            image_size=(width, height),
        )
