"""Receptive fields of convolutional feature maps and keypoint positions (pure numpy).

A feature map cell ``(row, col)`` of a network with receptive field ``size``, effective
``stride`` and effective ``padding`` sees the input pixels
``[stride * col - padding, stride * col - padding + size - 1]`` horizontally (likewise
vertically); its keypoint is the centre of that box.  Pixel centres sit at integer
coordinates.  A pyramid level built at image scale ``s`` maps back to the original
image by dividing by ``s`` (the DELF reference's convention).

Boxes here are (x1, y1, x2, y2); the DELF reference's boxes are
(ymin, xmin, ymax, xmax) and are converted only at that boundary
(:func:`centers_from_yxyx`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

__all__ = [
    "ReceptiveField",
    "RESNET50_CONV4",
    "RESNET50_CONV4_SLIM",
    "receptive_field_of",
    "receptive_boxes",
    "box_centers",
    "feature_centers",
    "centers_from_yxyx",
]


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field ``size``, effective ``stride`` and effective ``padding`` in input pixels."""

    size: float
    stride: float
    padding: float

    def __post_init__(self) -> None:
        if not (self.size > 0 and self.stride > 0):
            raise ValueError(f"receptive field size and stride must be positive, got {self}")

    def to_dict(self) -> dict[str, float]:
        return {"size": float(self.size), "stride": float(self.stride), "padding": float(self.padding)}


RESNET50_CONV4 = ReceptiveField(size=291.0, stride=16.0, padding=145.0)
"""Keras ResNet-50 conv4 output (stride 16), the package's DELF backbone."""

RESNET50_CONV4_SLIM = ReceptiveField(size=291.0, stride=32.0, padding=145.0)
"""TF-Slim ``resnet_v1_50/block3`` (stride 32), used by the released TF1 DELF models."""


def receptive_field_of(layers: Iterable[tuple[int, int, int]]) -> ReceptiveField:
    """Receptive field of a chain of layers, each ``(kernel, stride, padding)``.

    ``padding`` is the number of pixels added before the first input pixel (e.g. 3 for
    ``ZeroPadding2D(3)`` + 7x7 'valid' conv, 1 for a 3x3 'same' conv, 0 for a 1x1 conv).
    Composing a layer onto ``(R, J, P)`` gives ``(R + (k - 1) J, J s, P + p J)``.
    """
    size, stride, padding = 1, 1, 0
    for kernel, layer_stride, layer_padding in layers:
        if kernel < 1 or layer_stride < 1 or layer_padding < 0:
            raise ValueError(f"invalid layer (kernel, stride, padding) = {(kernel, layer_stride, layer_padding)}")
        size += (kernel - 1) * stride
        padding += layer_padding * stride
        stride *= layer_stride
    return ReceptiveField(size=float(size), stride=float(stride), padding=float(padding))


def receptive_boxes(height: int, width: int, rf: ReceptiveField) -> np.ndarray:
    """Receptive boxes of every cell of a (height, width) feature map.

    Returns (height * width, 4) float32 (x1, y1, x2, y2) in the map's input pixels,
    row-major over cells (index ``row * width + col``), like a flattened feature map.
    """
    if height < 0 or width < 0:
        raise ValueError(f"feature map size must be >= 0, got {height}x{width}")
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    x1 = rf.stride * cols.reshape(-1) - rf.padding
    y1 = rf.stride * rows.reshape(-1) - rf.padding
    extent = rf.size - 1.0
    return np.stack([x1, y1, x1 + extent, y1 + extent], axis=1).astype(np.float32)


def box_centers(boxes: np.ndarray) -> np.ndarray:
    """Centres (N, 2) float32 (x, y) of (N, 4) (x1, y1, x2, y2) boxes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0], axis=1).astype(np.float32)


def feature_centers(height: int, width: int, rf: ReceptiveField, *, scale: float = 1.0) -> np.ndarray:
    """Keypoint (x, y) of every cell of a feature map computed on an image resized by ``scale``.

    Returns (height * width, 2) float32 in pixels of the image before resizing.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return (box_centers(receptive_boxes(height, width, rf)) / np.float32(scale)).astype(np.float32)


def centers_from_yxyx(boxes: np.ndarray) -> np.ndarray:
    """Centres (N, 2) float32 (x, y) of (N, 4) (ymin, xmin, ymax, xmax) boxes (DELF reference order)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 1] + b[:, 3]) / 2.0, (b[:, 0] + b[:, 2]) / 2.0], axis=1).astype(np.float32)
