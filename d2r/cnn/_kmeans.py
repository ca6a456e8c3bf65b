"""Small dense k-means (Lloyd, k-means++ seeding) and global k-means (Likas et al. 2003) (pure numpy).

Meant for hundreds to a few thousand points: distances are computed as full matrices.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans", "global_kmeans", "squared_distances"]


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(..., P, K) squared distances of (P, D) points to (..., K, D) centres."""
    d = (np.einsum("pd,pd->p", points, points)[:, None]
         - 2.0 * points @ np.swapaxes(centres, -1, -2)
         + np.einsum("...kd,...kd->...k", centres, centres)[..., None, :])
    return np.maximum(d, 0.0)


def _lloyd(points: np.ndarray, centres: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Lloyd iterations: (P, D) points, (B, K, D) initial centres -> centres, labels (B, P), inertia (B,)."""
    centres = centres.copy()
    b, k, _ = centres.shape
    for _ in range(iters):
        labels = np.argmin(squared_distances(points, centres), axis=-1)
        onehot = np.zeros((b, points.shape[0], k))
        np.put_along_axis(onehot, labels[..., None], 1.0, axis=-1)
        counts = onehot.sum(axis=1)
        sums = np.einsum("bpk,pd->bkd", onehot, points)
        moved = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], centres)
        if np.allclose(moved, centres):
            centres = moved
            break
        centres = moved
    d = squared_distances(points, centres)
    labels = np.argmin(d, axis=-1)
    inertia = np.take_along_axis(d, labels[..., None], axis=-1)[..., 0].sum(axis=-1)
    return centres, labels, inertia


def kmeans(points, k: int, *, seed: int = 0, iters: int = 50, restarts: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """k-means with k-means++ seeding, best of ``restarts``: (P, D) -> centres (k, D), labels (P,) int64."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"need (P, D) points with P >= k={k}, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    inits = np.empty((restarts, k, x.shape[1]))
    for r in range(restarts):
        chosen = [int(rng.integers(x.shape[0]))]
        closest = squared_distances(x, x[chosen])[:, 0]
        for _ in range(1, k):
            total = closest.sum()
            nxt = int(rng.choice(x.shape[0], p=closest / total)) if total > 0 else int(rng.integers(x.shape[0]))
            chosen.append(nxt)
            closest = np.minimum(closest, squared_distances(x, x[nxt : nxt + 1])[:, 0])
        inits[r] = x[chosen]
    centres, labels, inertia = _lloyd(x, inits, iters)
    best = int(np.argmin(inertia))
    return centres[best], labels[best].astype(np.int64)


def global_kmeans(points, k: int, *, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic global k-means: add one centre at a time, trying every point as its start.

    (P, D) points -> centres (k', D), labels (P,) int64 with k' = min(k, distinct points).
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (P, D) array, got shape {x.shape}")
    k = min(int(k), np.unique(x, axis=0).shape[0])
    centres = x.mean(axis=0, keepdims=True)
    for _ in range(1, k):
        trials = np.concatenate([np.repeat(centres[None], x.shape[0], axis=0), x[:, None, :]], axis=1)
        found, _, inertia = _lloyd(x, trials, iters)
        centres = found[int(np.argmin(inertia))]
    labels = np.argmin(squared_distances(x, centres), axis=-1)
    return centres, labels.astype(np.int64)
