"""Candidate regions from clustered salient points (Jeong et al., regional deep feature aggregation).

1. Salient points of the image: a scale-space blob detector (scikit-image's
   Laplacian-of-Gaussian ``blob_log``) stands in for the paper's Hessian-affine
   detector; points are mapped onto the activation map.
2. They are ranked by the spatial saliency alpha (channel-summed activations,
   CroW-normalized) at their cell; the best ``n_max`` are kept, and when fewer than
   ``n_min`` remain the most salient cells are added.
3. Global k-means groups them into L = 3 clusters.
4. Candidate regions: the convex hull of the points of every non-empty subset of
   clusters (2^L - 1 regions), plus the whole image (first).

Pure numpy / scipy / scikit-image.  Map coordinates are (x, y) with cell (r, c)
centred at (c, r).
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import blob_log
from skimage.morphology import convex_hull_image

from d2r.cnn._kmeans import global_kmeans
from d2r.cnn.pooling import check_activations

__all__ = [
    "crow_spatial_weights",
    "crow_channel_weights",
    "detect_salient_points",
    "image_to_map",
    "select_points",
    "cluster_points",
    "candidate_regions",
    "salient_regions",
]


def crow_spatial_weights(activations, *, a: float = 2.0, b: float = 2.0) -> np.ndarray:
    """Spatial saliency alpha: channel sums ``S``, ``(S / ||S||_a)^(1/b)``: (H, W, C) -> (H, W) float32."""
    s = check_activations(activations).sum(axis=2, dtype=np.float64)
    norm = np.sum(np.abs(s) ** a) ** (1.0 / a)
    if norm <= 0:
        return np.zeros(s.shape, np.float32)
    return (np.maximum(s, 0.0) / norm) ** (1.0 / b)


def crow_channel_weights(activations, *, eps: float = 1e-6) -> np.ndarray:
    """CroW channel weights beta: ``log((C eps + sum_j Q_j) / (eps + Q_k))``, Q_k the fraction of
    non-zero cells of channel k: (H, W, C) -> (C,) float32."""
    x = check_activations(activations)
    q = np.mean(x > 0, axis=(0, 1), dtype=np.float64)
    return np.log((x.shape[2] * eps + q.sum()) / (eps + q)).astype(np.float32)


def detect_salient_points(image, *, min_sigma: float = 2.0, max_sigma: float = 16.0, num_sigma: int = 5,
                          threshold: float = 0.05) -> np.ndarray:
    """Scale-space blobs of an (H, W[, 3]) image (integers or floats in [0, 255], or floats in [0, 1]).

    Returns:
        (N, 3) float32 ``x, y, sigma`` in pixels (pixel centres at integer coordinates).
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or min(img.shape[:2]) == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, 3) array, got shape {img.shape}")
    pixels = img.astype(np.float64)
    if img.dtype.kind in "iu" or pixels.max(initial=0.0) > 1.0:
        pixels = pixels / 255.0
    gray = rgb2gray(pixels) if img.ndim == 3 else pixels
    blobs = blob_log(gray, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=num_sigma, threshold=threshold)
    if blobs.size == 0:
        return np.zeros((0, 3), np.float32)
    return np.stack([blobs[:, 1], blobs[:, 0], blobs[:, 2]], axis=1).astype(np.float32)


def image_to_map(points_xy, image_size: tuple[int, int], map_shape: tuple[int, int]) -> np.ndarray:
    """Map (N, 2) image (x, y) (pixel centres at integers) onto an (H', W') map: (N, 2) float32."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    w, h = image_size
    mh, mw = map_shape
    if min(w, h, mh, mw) < 1:
        raise ValueError(f"sizes must be positive, got image {image_size} and map {map_shape}")
    scale = np.array([mw / w, mh / h])
    return ((pts + 0.5) * scale - 0.5).astype(np.float32)


def _cells(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) int (row, col) cells of (N, 2) map (x, y) points, clipped to the map."""
    col = np.clip(np.rint(points[:, 0]), 0, shape[1] - 1).astype(np.int64)
    row = np.clip(np.rint(points[:, 1]), 0, shape[0] - 1).astype(np.int64)
    return np.stack([row, col], axis=1)


def select_points(points, alpha, *, n_max: int = 200, n_min: int = 20) -> np.ndarray:
    """The ``n_max`` points of highest saliency, topped up to ``n_min`` with the most salient cells.

    Args:
        points: (N, 2) map (x, y) points (any N, including 0).
        alpha: (H, W) saliency map.

    Returns:
        (M, 2) float32 map (x, y) points, most salient first, ``min(n_min, H W) <= M <= n_max``.
    """
    sal = np.asarray(alpha, dtype=np.float64)
    if sal.ndim != 2 or sal.size == 0:
        raise ValueError(f"alpha must be a non-empty (H, W) map, got shape {sal.shape}")
    if not 1 <= n_min <= n_max:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cells = _cells(pts, sal.shape)
    order = np.argsort(-sal[cells[:, 0], cells[:, 1]], kind="stable")[:n_max]
    chosen, chosen_cells = pts[order], cells[order]
    need = min(n_min, sal.size) - chosen.shape[0]
    if need > 0:
        taken = np.zeros(sal.shape, bool)
        taken[chosen_cells[:, 0], chosen_cells[:, 1]] = True
        flat = np.argsort(-np.where(taken, -np.inf, sal).reshape(-1), kind="stable")[:need]
        rows, cols = np.unravel_index(flat, sal.shape)
        chosen = np.concatenate([chosen, np.stack([cols, rows], axis=1).astype(np.float64)])
    return chosen.astype(np.float32)


def cluster_points(points, *, num_clusters: int = 3) -> np.ndarray:
    """Global k-means labels of (M, 2) points: (M,) int64 in [0, min(num_clusters, distinct points))."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] == 0:
        return np.zeros(0, np.int64)
    _, labels = global_kmeans(pts, num_clusters)
    return labels


def candidate_regions(points, labels, map_shape: tuple[int, int]) -> np.ndarray:
    """Whole map, then the convex hull of each non-empty subset of clusters: (R, H, W) bool.

    Subsets are in increasing bitmask order over the cluster ids present in ``labels``.
    """
    h, w = int(map_shape[0]), int(map_shape[1])
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if lab.shape[0] != pts.shape[0]:
        raise ValueError(f"labels has {lab.shape[0]} entries for {pts.shape[0]} points")
    cells = _cells(pts, (h, w))
    clusters = np.unique(lab)
    masks = [np.ones((h, w), bool)]
    for subset in range(1, 2 ** clusters.size):
        members = clusters[[(subset >> i) & 1 == 1 for i in range(clusters.size)]]
        sel = cells[np.isin(lab, members)]
        seed = np.zeros((h, w), bool)
        seed[sel[:, 0], sel[:, 1]] = True
        masks.append(convex_hull_image(seed) | seed)
    return np.stack(masks)


def salient_regions(activations, points_xy, image_size: tuple[int, int], *, n_max: int = 200, n_min: int = 20,
                    num_clusters: int = 3, a: float = 2.0, b: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-4 for one image: (H', W', C) map, (N, 2) image points -> masks (R, H', W') bool, alpha (H', W').

    ``image_size`` is the (width, height) of the image the points were detected in.
    """
    x = check_activations(activations)
    alpha = crow_spatial_weights(x, a=a, b=b)
    pts = image_to_map(points_xy, image_size, x.shape[:2])
    chosen = select_points(pts, alpha, n_max=n_max, n_min=n_min)
    labels = cluster_points(chosen, num_clusters=num_clusters)
    return candidate_regions(chosen, labels, x.shape[:2]), alpha
