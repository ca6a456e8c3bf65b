"""Multi-resolution, multi-layer R-MAC (the "R-MAC study" baseline) (pure numpy).

* Regions are those of a max-pooling layer (:func:`sliding_regions`, kernel
  ``2 min(W, H) / (l + 1)``, stride 40% of it); each region's MAC is l2-normalized
  (optionally whitened) and the region vectors are combined by square-sum pooling,
  ``sqrt(sum_r v_r^2)`` per dimension (``aggregation="sum"`` gives R-MAC's plain sum).
* Early fusion: the maps of one layer at several input resolutions (550 / 800 /
  1050 pixels) are resized (bilinear) to the largest and summed before pooling.
* Multi-layer: the descriptors of the last two conv blocks are l2-normalized and
  concatenated; :class:`~d2r.cnn.pfa.PFA` can then select a target dimension.
* A CAM mask (:mod:`d2r.cnn.cam`) zeroes the map outside the object for the
  "local" descriptor.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from d2r.cnn.pfa import PFA
from d2r.cnn.pooling import check_activations, l2_normalize, region_max_pool
from d2r.regions.grids import sliding_regions
from d2r.cnn.whitening import Whitening

__all__ = ["resize_map", "fuse_resolutions", "study_rmac", "multilayer_descriptor"]

Aggregation = Literal["square_sum", "sum"]


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, pixel centres aligned (half-pixel convention), edges clamped."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def resize_map(activations, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) map (or (H, W) mask) to (height, width[, C]) float32."""
    x = np.asarray(activations, dtype=np.float32)
    if x.ndim not in (2, 3) or min(x.shape[:2]) == 0:
        raise ValueError(f"activations must be a non-empty (H, W[, C]) array, got shape {x.shape}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    ry = _interp_matrix(int(height), x.shape[0]).astype(np.float32)
    rx = _interp_matrix(int(width), x.shape[1]).astype(np.float32)
    if x.ndim == 2:
        return ry @ x @ rx.T
    return np.einsum("ih,hwc,jw->ijc", ry, x, rx, optimize=True).astype(np.float32)


def fuse_resolutions(maps: Sequence) -> np.ndarray:
    """Early fusion: resize every (H_i, W_i, C) map to the largest (by area) and sum: -> (H, W, C) float32."""
    arrays = [check_activations(m, f"maps[{i}]") for i, m in enumerate(maps)]
    if not arrays:
        raise ValueError("maps is empty")
    channels = {a.shape[2] for a in arrays}
    if len(channels) != 1:
        raise ValueError(f"maps must share the channel count, got {sorted(channels)}")
    h, w = max((a.shape[:2] for a in arrays), key=lambda s: s[0] * s[1])
    out = np.zeros((h, w, arrays[0].shape[2]), np.float32)
    for a in arrays:
        out += a if a.shape[:2] == (h, w) else resize_map(a, h, w)
    return out


def study_rmac(activations, *, levels: int = 3, stride: float = 0.4, aggregation: Aggregation = "square_sum",
               whitening: Whitening | None = None, mask=None) -> np.ndarray:
    """Regional descriptor of one (H, W, C) map: -> (C,) or (whitening.dim,) float32, l2-normalized.

    Args:
        levels, stride: the region scales and the pooling stride (fraction of the kernel).
        aggregation: ``"square_sum"`` (sqrt of the sum of squared region vectors) or ``"sum"``.
        whitening: applied to every region vector (l2 -> whitening -> l2).
        mask: optional (H, W) bool / float mask multiplied into the map (CAM "local" descriptor).
    """
    x = check_activations(activations)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape {x.shape[:2]}, got {m.shape}")
        x = x * m[..., None]
    if aggregation not in ("square_sum", "sum"):
        raise ValueError(f"aggregation must be 'square_sum' or 'sum', got {aggregation!r}")
    regions = sliding_regions(x.shape[0], x.shape[1], levels=levels, stride=stride)
    v = l2_normalize(region_max_pool(x, regions))
    if whitening is not None:
        v = whitening.apply(v)
    v64 = v.astype(np.float64)
    pooled = np.sqrt(np.sum(v64**2, axis=0)) if aggregation == "square_sum" else v64.sum(axis=0)
    return l2_normalize(pooled)


def multilayer_descriptor(layers: Sequence[Sequence], *, levels: int = 3, stride: float = 0.4,
                          aggregation: Aggregation = "square_sum", mask=None,
                          pfa: PFA | None = None) -> np.ndarray:
    """Multi-resolution, multi-layer descriptor.

    Args:
        layers: one entry per layer (e.g. the last two conv blocks), each a sequence of
            that layer's (H_i, W_i, C_layer) maps at the input resolutions, fused early.
        mask: optional (h, w) mask, resized (bilinear, >= 0.5) to each layer's fused map.
        pfa: optional feature selection applied to the concatenation.

    Returns:
        (sum C_layer,) float32, or (pfa.dim,), l2-normalized.
    """
    if not layers:
        raise ValueError("layers is empty")
    parts = []
    for maps in layers:
        fused = fuse_resolutions(maps)
        layer_mask = None
        if mask is not None:
            layer_mask = resize_map(np.asarray(mask, np.float32), fused.shape[0], fused.shape[1]) >= 0.5
        parts.append(study_rmac(fused, levels=levels, stride=stride, aggregation=aggregation, mask=layer_mask))
    v = np.concatenate(parts)
    if pfa is not None:
        v = pfa.select(v)
    return l2_normalize(v)
