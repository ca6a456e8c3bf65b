"""Class activation maps (CAM) as masks for local R-MAC descriptors (pure numpy).

The CAM of class k is ``sum_c w[c, k] x_c``, where ``w`` is the kernel of the
classifier that follows global average pooling (ResNet's ImageNet head); k is the
predicted class unless given.  The mask keeps the cells whose heat is at least
``threshold`` (0.9) times the mean heat.  Global and local (masked) descriptors
are compared by the smaller of their two Manhattan distances.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial.distance import cdist

from d2r.cnn.pooling import check_activations

__all__ = ["cam_heatmap", "cam_mask", "min_manhattan_distance"]

logger = logging.getLogger(__name__)


def cam_heatmap(activations, kernel, bias=None, *, class_index: int | None = None) -> np.ndarray:
    """CAM of an (H, W, C) map for a (C, K) classifier ``kernel`` (and (K,) ``bias``): (H, W) float32."""
    x = check_activations(activations)
    w = np.asarray(kernel, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] != x.shape[2]:
        raise ValueError(f"kernel must have shape ({x.shape[2]}, K), got {w.shape}")
    if class_index is None:
        logits = x.mean(axis=(0, 1)) @ w
        if bias is not None:
            b = np.asarray(bias, dtype=np.float32).reshape(-1)
            if b.shape[0] != w.shape[1]:
                raise ValueError(f"bias must have {w.shape[1]} values, got {b.shape[0]}")
            logits = logits + b
        class_index = int(np.argmax(logits))
    elif not 0 <= int(class_index) < w.shape[1]:
        raise ValueError(f"class_index {class_index} outside [0, {w.shape[1]})")
    return (x @ w[:, int(class_index)]).astype(np.float32)


def cam_mask(heatmap, *, threshold: float = 0.9) -> np.ndarray:
    """Cells with heat >= ``threshold`` x mean heat: (H, W) -> (H, W) bool (all cells if none qualifies)."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2 or h.size == 0 or not np.all(np.isfinite(h)):
        raise ValueError(f"heatmap must be a finite, non-empty (H, W) array, got shape {h.shape}")
    mask = h >= threshold * h.mean()
    if not mask.any():
        logger.debug("CAM mask is empty; using the whole map")
        mask[:] = True
    return mask


def min_manhattan_distance(query_global, query_local, database_global, database_local) -> np.ndarray:
    """``min(|g_q - g_x|_1, |l_q - l_x|_1)``: (Q, D) x2, (N, D) x2 -> (Q, N) float32 distances."""
    arrays = [np.asarray(a, dtype=np.float64) for a in (query_global, query_local, database_global, database_local)]
    names = ("query_global", "query_local", "database_global", "database_local")
    for a, name in zip(arrays, names):
        if a.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    qg, ql, dg, dl = arrays
    if qg.shape != ql.shape or dg.shape != dl.shape or qg.shape[1] != dg.shape[1]:
        raise ValueError(f"shapes do not match: {qg.shape}, {ql.shape}, {dg.shape}, {dl.shape}")
    return np.minimum(cdist(qg, dg, "cityblock"), cdist(ql, dl, "cityblock")).astype(np.float32)
