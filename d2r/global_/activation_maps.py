"""Activation maps kept in a feature store (for AML re-ranking), as "features on the map grid".

A (H', W', C) map becomes :class:`~d2r.types.LocalFeatures` with one row per cell in
row-major order, the cell's (x, y) = (column, row) as location and the map's (W', H') as
``image_size``, so the resumable, atomic feature store holds maps unchanged (pure numpy).
"""

from __future__ import annotations

import numpy as np

from d2r.types import LocalFeatures

__all__ = ["map_to_features", "features_to_map"]


def map_to_features(activations: np.ndarray) -> LocalFeatures:
    """(H', W', C) activation map -> LocalFeatures with H' W' rows, cell (x, y) locations, size (W', H')."""
    amap = np.asarray(activations, np.float32)
    if amap.ndim != 3 or min(amap.shape) == 0:
        raise ValueError(f"activations must be a non-empty (H', W', C) map, got shape {amap.shape}")
    h, w, c = amap.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    ones = np.ones(h * w, np.float32)
    return LocalFeatures(np.stack([cols, rows], axis=1), amap.reshape(h * w, c), ones, ones, (w, h))


def features_to_map(features: LocalFeatures) -> np.ndarray:
    """Inverse of :func:`map_to_features`: -> (H', W', C) float32."""
    w, h = features.image_size
    if len(features) != w * h:
        raise ValueError(f"{len(features)} rows cannot be a {w}x{h} activation map")
    return features.descriptors.reshape(h, w, features.dim)
