"""Region-wise first- and second-order pooling of CNN activation maps (pure numpy).

After Jeong et al., "regional deep feature aggregation": each candidate region
(:mod:`d2r.cnn.salient_regions`) is described by

* first order: ``sum_{p in R} alpha(p) x(p)`` weighted per channel by CroW's beta, l2;
* second order: the log-Euclidean covariance of the region's features reduced by
  PCA to K' = 128 dimensions, ``vec(logm(Sigma + eps I))`` with off-diagonal entries
  scaled by sqrt(2) (so inner products equal Frobenius products), l2;

(``order="both"`` concatenates the two, each l2-normalized), then PCA-whitened to D
(:func:`~d2r.cnn.whitening.learn_whitening` on region vectors of another data
set).  Two images are as similar as their best pair of regions: the region vectors are
searched, and queries expanded (every query region plus its best-matching region in each
of the top-k images), by :class:`d2r.index.region_vectors.RegionVectorIndex`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from d2r.cnn.pooling import check_activations, l2_normalize
from d2r.cnn.salient_regions import crow_channel_weights
from d2r.cnn.whitening import Whitening

__all__ = [
    "first_order_pooling",
    "log_euclidean_vector",
    "region_vectors",
    "second_order_pooling",
]

Order = Literal["first", "second", "both"]


def _check_masks(masks, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != tuple(shape):
        raise ValueError(f"masks must have shape (R, {shape[0]}, {shape[1]}), got {np.shape(masks)}")
    empty = np.flatnonzero(~m.any(axis=(1, 2)))
    if empty.size:
        raise ValueError(f"region mask {int(empty[0])} is empty")
    return m


def first_order_pooling(activations, masks, alpha, beta=None) -> np.ndarray:
    """``l2(beta * sum_{p in R} alpha(p) x(p))`` per region: (H, W, C), (R, H, W), (H, W), (C,) -> (R, C) float32."""
    x = check_activations(activations)
    m = _check_masks(masks, x.shape[:2])
    a = np.asarray(alpha, dtype=np.float32)
    if a.shape != x.shape[:2]:
        raise ValueError(f"alpha must have shape {x.shape[:2]}, got {a.shape}")
    weights = m.astype(np.float32) * a[None]
    pooled = np.einsum("rhw,hwc->rc", weights, x, optimize=True)
    if beta is not None:
        bw = np.asarray(beta, dtype=np.float32).reshape(-1)
        if bw.shape[0] != x.shape[2]:
            raise ValueError(f"beta must have {x.shape[2]} values, got {bw.shape[0]}")
        pooled = pooled * bw
    return l2_normalize(pooled)


def log_euclidean_vector(covariance, *, eps: float = 1e-3) -> np.ndarray:
    """``vec(logm(S + eps I))``, upper triangle row by row, off-diagonals x sqrt(2): (K, K) -> (K(K+1)/2,) float32."""
    s = np.asarray(covariance, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {s.shape}")
    s = (s + s.T) / 2 + eps * np.eye(s.shape[0])
    evals, evecs = np.linalg.eigh(s)
    if evals.min() <= 0:
        raise ValueError(f"covariance + eps I is not positive definite (smallest eigenvalue {evals.min():.3g}); "
                         "increase eps")
    log_s = (evecs * np.log(evals)) @ evecs.T
    iu = np.triu_indices(s.shape[0])
    scale = np.where(iu[0] == iu[1], 1.0, np.sqrt(2.0))
    return (log_s[iu] * scale).astype(np.float32)


def second_order_pooling(activations, masks, *, reduction: Whitening | None = None, eps: float = 1e-3) -> np.ndarray:
    """l2 log-Euclidean covariance of each region's (reduced) features: -> (R, K'(K'+1)/2) float32.

    The features of a region are its cells' activation vectors, passed through
    ``reduction`` (l2 -> PCA to K' -> l2; None: used as they are).  The covariance is
    the maximum-likelihood one (divided by the number of cells n).
    """
    x = check_activations(activations)
    m = _check_masks(masks, x.shape[:2])
    feats = x.reshape(-1, x.shape[2])
    if reduction is not None:
        feats = reduction.apply(feats)
    out = []
    for region in m.reshape(m.shape[0], -1):
        f = feats[region].astype(np.float64)
        centred = f - f.mean(axis=0)
        out.append(log_euclidean_vector(centred.T @ centred / f.shape[0], eps=eps))
    return l2_normalize(np.stack(out))


def region_vectors(activations, masks, alpha, *, order: Order = "both", reduction: Whitening | None = None,
                   eps: float = 1e-3, whitening: Whitening | None = None) -> np.ndarray:
    """Region descriptors of one image: (H, W, C) map, (R, H, W) masks, (H, W) alpha -> (R, D) float32.

    ``order`` picks first-order, second-order or both (concatenated); ``whitening``
    (learned on such vectors of another data set) maps them to its ``dim``.
    """
    if order not in ("first", "second", "both"):
        raise ValueError(f"order must be 'first', 'second' or 'both', got {order!r}")
    x = check_activations(activations)
    parts = []
    if order in ("first", "both"):
        parts.append(first_order_pooling(x, masks, alpha, crow_channel_weights(x)))
    if order in ("second", "both"):
        parts.append(second_order_pooling(x, masks, reduction=reduction, eps=eps))
    v = l2_normalize(np.concatenate(parts, axis=1))
    return v if whitening is None else whitening.apply(v)

