"""Typed values passed between pipeline stages.

Every type is a frozen dataclass whose arrays are validated (shape, dtype,
finiteness) at construction.  Coordinates are pixels in the original image,
(x, y) order.  Empty inputs (zero features, zero boxes) are ordinary values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "LocalFeatures",
    "GlobalDescriptors",
    "ActivationMap",
    "Boxes",
    "AggregatedImage",
    "SearchResult",
]


def _as_array(name: str, value, dtype, ndim: int, *, finite: bool = True) -> np.ndarray:
    """Copy ``value`` into a C-contiguous read-only array of ``dtype`` and ``ndim``."""
    arr = np.array(value, dtype=dtype, order="C")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if finite and arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    arr.flags.writeable = False
    return arr


def _as_rows(name: str, value, dtype, width: int) -> np.ndarray:
    """Like :func:`_as_array` for an (M, width) table; any empty input becomes (0, width)."""
    if np.size(value) == 0:
        value = np.zeros((0, width), dtype)
    arr = _as_array(name, value, dtype, 2)
    if arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (M, {width}), got {arr.shape}")
    return arr


def _check_rows(cls_name: str, n: int, **arrays: np.ndarray) -> None:
    for name, arr in arrays.items():
        if arr.shape[0] != n:
            raise ValueError(
                f"{cls_name}.{name} has {arr.shape[0]} rows, expected {n} (one per item)"
            )


@dataclass(frozen=True)
class LocalFeatures:
    """Local features of one image.

    Attributes:
        locations: (N, 2) float32, keypoint (x, y) in original-image pixels.
        descriptors: (N, D) float32.
        scales: (N,) float32, keypoint scale (pyramid scale for DELF, SIFT size/2 for SIFT).
        scores: (N,) float32, attention / detector response.
        image_size: (width, height) of the original image in pixels.
    """

    locations: np.ndarray
    descriptors: np.ndarray
    scales: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        loc = _as_array("locations", self.locations, np.float32, 2)
        if loc.shape[1] != 2:
            raise ValueError(f"locations must have shape (N, 2), got {loc.shape}")
        desc = _as_array("descriptors", self.descriptors, np.float32, 2)
        scales = _as_array("scales", self.scales, np.float32, 1)
        scores = _as_array("scores", self.scores, np.float32, 1)
        n = loc.shape[0]
        _check_rows("LocalFeatures", n, descriptors=desc, scales=scales, scores=scores)
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 0:
            raise ValueError(f"image_size must be (width, height) >= 0, got {self.image_size!r}")
        object.__setattr__(self, "locations", loc)
        object.__setattr__(self, "descriptors", desc)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "image_size", size)

    def __len__(self) -> int:
        return int(self.locations.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor dimension D (defined even for zero features)."""
        return int(self.descriptors.shape[1])

    @classmethod
    def empty(cls, dim: int, image_size: tuple[int, int] = (0, 0)) -> "LocalFeatures":
        """Zero features of dimension ``dim``."""
        return cls(
            locations=np.zeros((0, 2), np.float32),
            descriptors=np.zeros((0, dim), np.float32),
            scales=np.zeros((0,), np.float32),
            scores=np.zeros((0,), np.float32),
            image_size=image_size,
        )

    def mapped(self, transform: Callable[[np.ndarray], np.ndarray],
               image_size: tuple[int, int]) -> "LocalFeatures":
        """The same features with locations ``transform((N, 2)) -> (N, 2)`` in an image of
        ``image_size`` (e.g. from a downscaled copy back to original pixels)."""
        locations = transform(self.locations) if len(self) else self.locations
        return LocalFeatures(locations, self.descriptors, self.scales, self.scores, image_size)

    def select(self, index) -> "LocalFeatures":
        """Subset of the features by boolean mask or integer index array."""
        return LocalFeatures(
            locations=self.locations[index],
            descriptors=self.descriptors[index],
            scales=self.scales[index],
            scores=self.scores[index],
            image_size=self.image_size,
        )

    def in_box(self, xyxy: Sequence[float]) -> "LocalFeatures":
        """Features whose location lies inside box ``(x1, y1, x2, y2)`` (inclusive)."""
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        x, y = self.locations[:, 0], self.locations[:, 1]
        return self.select((x >= x1) & (x <= x2) & (y >= y1) & (y <= y2))


@dataclass(frozen=True)
class GlobalDescriptors:
    """One or several CNN descriptor vectors of one image (global, CAM-local or regional).

    Attributes:
        vectors: (R, D) float32, one row per descriptor (R = 1 for a global descriptor;
            2 for global + CAM-local; one per candidate region, whole image first).
        centres: (R, 2) float32, (x, y) original-image pixels each row describes (the
            image or query-box centre, or a region's centroid).
        image_size: (width, height) of the original image in pixels.
    """

    vectors: np.ndarray
    centres: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        vectors = _as_array("vectors", self.vectors, np.float32, 2)
        centres = _as_rows("centres", self.centres, np.float32, 2)
        _check_rows("GlobalDescriptors", vectors.shape[0], centres=centres)
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 0:
            raise ValueError(f"image_size must be (width, height) >= 0, got {self.image_size!r}")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "centres", centres)
        object.__setattr__(self, "image_size", size)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        return int(self.vectors.shape[1])

    def mapped(self, transform: Callable[[np.ndarray], np.ndarray],
               image_size: tuple[int, int]) -> "GlobalDescriptors":
        """The same vectors with centres ``transform((R, 2)) -> (R, 2)`` in an image of ``image_size``."""
        centres = transform(self.centres) if len(self) else self.centres
        return GlobalDescriptors(self.vectors, centres, image_size)


@dataclass(frozen=True)
class ActivationMap:
    """A CNN activation map kept for AML re-ranking.

    Attributes:
        values: (H', W', C) float32, non-empty.
    """

    values: np.ndarray

    def __post_init__(self) -> None:
        values = _as_array("values", self.values, np.float32, 3)
        if min(values.shape) == 0:
            raise ValueError(f"an activation map must be non-empty (H', W', C), got {values.shape}")
        object.__setattr__(self, "values", values)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]



@dataclass(frozen=True)
class Boxes:
    """Boxes in one image.

    Attributes:
        xyxy: (M, 4) float32 pixel boxes ``x1, y1, x2, y2`` with x1 <= x2, y1 <= y2.
        scores: (M,) float32 detector scores.
        labels: (M,) int32 class labels.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    labels: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        xyxy = _as_rows("xyxy", self.xyxy, np.float32, 4)
        if np.any(xyxy[:, 2] < xyxy[:, 0]) or np.any(xyxy[:, 3] < xyxy[:, 1]):
            raise ValueError("xyxy boxes must satisfy x1 <= x2 and y1 <= y2")
        scores = _as_array("scores", self.scores, np.float32, 1)
        labels = self.labels
        if labels is None:
            labels = np.zeros(xyxy.shape[0], np.int32)
        labels = _as_array("labels", labels, np.int32, 1)
        _check_rows("Boxes", xyxy.shape[0], scores=scores, labels=labels)
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls) -> "Boxes":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def select(self, index) -> "Boxes":
        """Subset by boolean mask or integer index array."""
        return Boxes(self.xyxy[index], self.scores[index], self.labels[index])


@dataclass(frozen=True)
class AggregatedImage:
    """An image (or region) aggregated over a visual-word codebook.

    Attributes:
        words: (W,) int32, sorted ascending, unique visual-word ids.
        vectors: (W, D) float32 per-word vectors, or (W, ceil(D/8)) uint8 sign bits
            packed with ``np.packbits`` (big-endian bit order) for binarized kernels.
        dim: descriptor dimension D (needed to interpret packed bits).
        binary: whether ``vectors`` are packed sign bits.
    """

    words: np.ndarray
    vectors: np.ndarray
    dim: int
    binary: bool = False

    def __post_init__(self) -> None:
        words = _as_array("words", self.words, np.int32, 1)
        if words.size > 1 and np.any(np.diff(words) <= 0):
            raise ValueError("words must be sorted ascending and unique")
        dim = int(self.dim)
        width = (dim + 7) // 8 if self.binary else dim
        vectors = _as_rows("vectors", self.vectors, np.uint8 if self.binary else np.float32, width)
        _check_rows("AggregatedImage", words.shape[0], vectors=vectors)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "binary", bool(self.binary))

    def __len__(self) -> int:
        return int(self.words.shape[0])

    @classmethod
    def empty(cls, dim: int, binary: bool = False) -> "AggregatedImage":
        width = (dim + 7) // 8 if binary else dim
        dtype = np.uint8 if binary else np.float32
        return cls(np.zeros((0,), np.int32), np.zeros((0, width), dtype), dim, binary)


@dataclass(frozen=True)
class SearchResult:
    """Top-k search results for a batch of queries, best first (faiss convention).

    Attributes:
        scores: (Q, K) float32 similarities, descending along each row; -inf pads.
        ids: (Q, K) int64 database ids; -1 pads rows with fewer than K results.
        names: database image names indexed by id (may be empty when unknown).
    """

    scores: np.ndarray
    ids: np.ndarray
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        scores = _as_array("scores", self.scores, np.float32, 2, finite=False)
        ids = _as_array("ids", self.ids, np.int64, 2)
        if scores.shape != ids.shape:
            raise ValueError(f"scores {scores.shape} and ids {ids.shape} must have the same shape")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "names", tuple(self.names))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def names_of(self, query: int) -> list[str]:
        """Database names of query ``query``'s results, best first (padding dropped)."""
        row = self.ids[query]
        return [self.names[i] for i in row[row >= 0]]
