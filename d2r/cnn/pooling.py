"""Spatial pooling of CNN activation maps into vectors (pure numpy).

An activation map is an (H, W, C) array of non-negative (ReLU'd) responses.
Regions are integer boxes ``x1, y1, x2, y2`` in map cells, end-exclusive, so
``activations[y1:y2, x1:x2]`` is the region.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_activations",
    "check_regions",
    "l2_normalize",
    "mac",
    "spoc",
    "gem",
    "generalized_mean",
    "region_max_pool",
]

_EPS = 1e-12


def check_activations(activations, name: str = "activations") -> np.ndarray:
    """(H, W, C) float32 view/copy of ``activations``; raises on bad shape, empty or non-finite maps."""
    arr = np.asarray(activations)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be an (H, W, C) map, got shape {arr.shape}")
    if min(arr.shape) == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def check_regions(regions, height: int, width: int, name: str = "regions") -> np.ndarray:
    """(R, 4) int64 boxes ``x1, y1, x2, y2`` (end-exclusive) inside an H x W map, each non-empty."""
    arr = np.asarray(regions)
    if arr.size == 0:
        return np.zeros((0, 4), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (R, 4), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer map cells, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    x1, y1, x2, y2 = arr.T
    bad = (x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height) | (x2 <= x1) | (y2 <= y1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {arr[i].tolist()} is empty or outside the {height}x{width} map")
    return arr


def l2_normalize(x, axis: int = -1) -> np.ndarray:
    """``x / max(||x||, 1e-12)`` along ``axis``, float32 (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=axis, keepdims=True))
    return (x / np.maximum(norm, _EPS)).astype(np.float32)


def mac(activations) -> np.ndarray:
    """Maximum activations of convolutions: (H, W, C) -> (C,) float32 per-channel max (not normalized)."""
    return check_activations(activations).max(axis=(0, 1))


def spoc(activations) -> np.ndarray:
    """Sum-pooled convolutional features: (H, W, C) -> (C,) float32 per-channel sum (not normalized)."""
    return check_activations(activations).sum(axis=(0, 1), dtype=np.float64).astype(np.float32)


def gem(activations, *, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """Generalized-mean pooling ``(mean_x max(x, eps)^p)^(1/p)``: (H, W, C) -> (C,) float32."""
    if not np.isfinite(p) or p <= 0:
        raise ValueError(f"p must be a positive finite number, got {p!r}")
    x = np.maximum(check_activations(activations).astype(np.float64), eps)
    return (np.mean(x**p, axis=(0, 1)) ** (1.0 / p)).astype(np.float32)


def generalized_mean(activations, *, alpha: float = 10.0) -> np.ndarray:
    """``(sum_p x(p)^alpha)^(1/alpha)`` per channel (Tolias et al. Eq. 4; -> max as alpha grows).

    (H, W, C) -> (C,) float32.  Computed with each channel scaled by its maximum so
    that large ``alpha`` cannot overflow; the result is unchanged by the scaling.
    """
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    x = check_activations(activations).astype(np.float64)
    if np.any(x < 0):
        raise ValueError("generalized_mean needs non-negative (ReLU'd) activations")
    peak = x.max(axis=(0, 1))
    scale = np.where(peak > 0, peak, 1.0)
    sums = np.sum((x / scale) ** alpha, axis=(0, 1))
    return (sums ** (1.0 / alpha) * scale).astype(np.float32)


def region_max_pool(activations, regions) -> np.ndarray:
    """Per-region MAC: (H, W, C) map, (R, 4) boxes -> (R, C) float32 (not normalized)."""
    x = check_activations(activations)
    boxes = check_regions(regions, x.shape[0], x.shape[1])
    out = np.empty((boxes.shape[0], x.shape[2]), np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        out[i] = x[y1:y2, x1:x2].max(axis=(0, 1))
    return out
