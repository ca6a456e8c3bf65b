"""MAC and R-MAC descriptors (Tolias et al., ICLR 2016) (pure numpy).

R-MAC: the MAC of every region of :func:`d2r.regions.grids.rmac_regions` is
l2-normalized, PCA-whitened (learned on another data set) and l2-normalized again;
the region vectors are summed and the sum l2-normalized.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from d2r.cnn.pooling import check_activations, l2_normalize, region_max_pool
from d2r.regions.grids import rmac_regions
from d2r.cnn.whitening import Whitening

__all__ = ["mac_descriptor", "rmac_region_vectors", "aggregate_regions", "rmac", "rmac_training_vectors"]


def mac_descriptor(activations, *, whitening: Whitening | None = None) -> np.ndarray:
    """l2(MAC), optionally whitened (then l2 -> whitening -> l2): (H, W, C) -> (C,) or (dim,) float32."""
    v = l2_normalize(check_activations(activations).max(axis=(0, 1)))
    return v if whitening is None else whitening.apply(v)


def rmac_region_vectors(activations, *, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """l2-normalized MAC of each R-MAC region: (H, W, C) -> (R, C) float32."""
    x = check_activations(activations)
    regions = rmac_regions(x.shape[0], x.shape[1], levels=levels, overlap=overlap)
    return l2_normalize(region_max_pool(x, regions))


def aggregate_regions(region_vectors, *, whitening: Whitening | None = None) -> np.ndarray:
    """l2 -> (whitening -> l2) -> sum -> l2 of (R, D) region vectors: -> (D,) or (dim,) float32."""
    v = np.asarray(region_vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"region_vectors must be a non-empty (R, D) array, got shape {v.shape}")
    v = l2_normalize(v) if whitening is None else whitening.apply(v)
    return l2_normalize(v.sum(axis=0, dtype=np.float64))


def rmac(activations, *, levels: int = 3, overlap: float = 0.4, whitening: Whitening | None = None) -> np.ndarray:
    """The R-MAC vector of an (H, W, C) map: (C,) float32, or (dim,) with ``whitening``."""
    return aggregate_regions(rmac_region_vectors(activations, levels=levels, overlap=overlap),
                             whitening=whitening)


def rmac_training_vectors(maps: Iterable, *, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """Stacked region vectors of several maps, the input of :func:`learn_whitening`: (sum R, C) float32."""
    parts = [rmac_region_vectors(m, levels=levels, overlap=overlap) for m in maps]
    if not parts:
        raise ValueError("maps is empty: no region vectors to learn from")
    return np.concatenate(parts)
