"""Approximate max-pooling localization (AML) and re-ranking (Tolias et al., ICLR 2016, Sec. 5).

The query's MAC is compared (cosine) with the approximate MAC of windows of a
database image's activation map, read from an :class:`IntegralMaxPool`:

1. windows on a grid of step ``step`` map cells (``t = 3``) whose aspect ratio is
   within a factor ``aspect_ratio_factor`` (``s = 1.1``) of the query's;
2. the best one is refined by coordinate descent: each coordinate in turn moves
   by up to ``refine_step`` cells (both ways), at most ``refine_rounds`` rounds,
   stopping early when a round brings no improvement.

Re-ranking describes the localized window of each of the top N images (MAC or
R-MAC of that part of the map) and sorts them by similarity to the query.

Windows are int64 ``x1, y1, x2, y2`` boxes in map cells, end-exclusive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from d2r.global_._ranking import cap_tail, ranking_ids
from d2r.global_.integral import IntegralMaxPool
from d2r.global_.pooling import check_activations, l2_normalize
from d2r.types import SearchResult

__all__ = [
    "Localization",
    "candidate_windows",
    "all_windows",
    "localize",
    "localize_exhaustive",
    "window_iou",
    "aml_rerank",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Localization:
    """Result of localizing a query in one activation map.

    Attributes:
        window: (4,) int64 ``x1, y1, x2, y2`` in map cells, end-exclusive.
        score: cosine similarity of the query MAC and the window's approximate MAC.
        num_evaluated: windows scored to find it (grid + refinement).
    """

    window: np.ndarray
    score: float
    num_evaluated: int


def _pairs(length: int, step: int) -> np.ndarray:
    """(P, 2) ``(start, end)`` with start < end from the coordinates 0, step, 2 step, ..., length."""
    coords = np.unique(np.append(np.arange(0, length, step), length))
    i, j = np.triu_indices(coords.size, 1)
    return np.stack([coords[i], coords[j]], axis=1)


def _product(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    ix, iy = np.meshgrid(np.arange(xs.shape[0]), np.arange(ys.shape[0]), indexing="ij")
    ix, iy = ix.reshape(-1), iy.reshape(-1)
    return np.stack([xs[ix, 0], ys[iy, 0], xs[ix, 1], ys[iy, 1]], axis=1).astype(np.int64)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def all_windows(height: int, width: int) -> np.ndarray:
    """Every window of an H x W map: (H(H+1)/2 * W(W+1)/2, 4) int64."""
    return _product(_pairs(int(width), 1), _pairs(int(height), 1))


def candidate_windows(height: int, width: int, *, step: int = 3, aspect_ratio: float | None = None,
                      aspect_ratio_factor: float = 1.1) -> np.ndarray:
    """Grid windows with corners on multiples of ``step`` (or the map border): (M, 4) int64.

    With ``aspect_ratio`` (width / height, e.g. the query's), keep windows whose aspect
    ratio differs from it by at most the factor ``aspect_ratio_factor``; when none does,
    those closest to it are kept.
    """
    step = _check_positive_int(step, "step")
    windows = _product(_pairs(_check_positive_int(width, "width"), step),
                       _pairs(_check_positive_int(height, "height"), step))
    if aspect_ratio is None:
        return windows
    if not np.isfinite(aspect_ratio) or aspect_ratio <= 0:
        raise ValueError(f"aspect_ratio must be a positive number, got {aspect_ratio!r}")
    if not aspect_ratio_factor >= 1.0:
        raise ValueError(f"aspect_ratio_factor must be >= 1, got {aspect_ratio_factor!r}")
    ratios = (windows[:, 2] - windows[:, 0]) / (windows[:, 3] - windows[:, 1])
    deviation = np.abs(np.log(ratios / aspect_ratio))
    keep = deviation <= np.log(aspect_ratio_factor) + 1e-12
    if not keep.any():
        logger.debug("no window within aspect factor %.2f of %.3f; keeping the closest",
                     aspect_ratio_factor, aspect_ratio)
        keep = deviation <= deviation.min() + 1e-12
    return windows[keep]


def _as_pool(activations, alpha: float, levels: int | None) -> IntegralMaxPool:
    if isinstance(activations, IntegralMaxPool):
        return activations
    return IntegralMaxPool(activations, alpha=alpha, levels=levels)


def _refine(pool: IntegralMaxPool, query: np.ndarray, window: np.ndarray, score: float,
            refine_step: int, refine_rounds: int) -> tuple[np.ndarray, float, int]:
    offsets = np.concatenate([np.arange(-refine_step, 0), np.arange(1, refine_step + 1)])
    limits = np.array([pool.width, pool.height, pool.width, pool.height])
    evaluated = 0
    for _ in range(refine_rounds):
        improved = False
        for coord in range(4):
            cands = np.repeat(window[None], offsets.size, axis=0)
            cands[:, coord] += offsets
            ok = ((cands[:, 0] >= 0) & (cands[:, 1] >= 0) & (cands[:, 2] <= limits[2])
                  & (cands[:, 3] <= limits[3]) & (cands[:, 2] > cands[:, 0]) & (cands[:, 3] > cands[:, 1]))
            cands = cands[ok]
            if not cands.shape[0]:
                continue
            scores = pool.cosine(cands, query)
            evaluated += cands.shape[0]
            best = int(np.argmax(scores))
            if scores[best] > score + 1e-12:
                window, score, improved = cands[best].copy(), float(scores[best]), True
        if not improved:
            break
    return window, score, evaluated


def localize(query_mac, activations, *, query_aspect_ratio: float | None = None, step: int = 3,
             aspect_ratio_factor: float = 1.1, refine_step: int = 3, refine_rounds: int = 5,
             alpha: float = 10.0, levels: int | None = None) -> Localization:
    """Find the window of ``activations`` whose approximate MAC best matches ``query_mac``.

    Args:
        query_mac: (C,) query MAC (any norm).
        activations: (H, W, C) map of the database image, or its :class:`IntegralMaxPool`.
        query_aspect_ratio: width / height of the query region (None: no aspect filter).
        step, aspect_ratio_factor: the grid step t and aspect factor s.
        refine_step, refine_rounds: coordinate-descent range (cells) and maximum rounds.
        alpha, levels: generalized-mean exponent and optional quantization (see
            :class:`IntegralMaxPool`), used when ``activations`` is a map.
    """
    pool = _as_pool(activations, alpha, levels)
    _check_positive_int(refine_rounds, "refine_rounds")
    refine_step = _check_positive_int(refine_step, "refine_step")
    windows = candidate_windows(pool.height, pool.width, step=step, aspect_ratio=query_aspect_ratio,
                                aspect_ratio_factor=aspect_ratio_factor)
    scores = pool.cosine(windows, query_mac)
    best = int(np.argmax(scores))
    window, score, refined = _refine(pool, np.asarray(query_mac, np.float64), windows[best].copy(),
                                     float(scores[best]), refine_step, int(refine_rounds))
    return Localization(window=window, score=score, num_evaluated=int(windows.shape[0]) + refined)


def localize_exhaustive(query_mac, activations, *, alpha: float = 10.0, levels: int | None = None) -> Localization:
    """The best of all windows by the same approximate-MAC cosine (reference for AML)."""
    pool = _as_pool(activations, alpha, levels)
    windows = all_windows(pool.height, pool.width)
    scores = pool.cosine(windows, query_mac)
    best = int(np.argmax(scores))
    return Localization(window=windows[best].copy(), score=float(scores[best]),
                        num_evaluated=int(windows.shape[0]))


def window_iou(a, b) -> float:
    """Intersection over union of two end-exclusive boxes ``x1, y1, x2, y2``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def aml_rerank(
    ranking: SearchResult,
    query_macs,
    database_maps: Sequence,
    *,
    query_vectors=None,
    query_aspect_ratios=None,
    describe_region: Callable[[np.ndarray], np.ndarray] | None = None,
    top_n: int = 1000,
    step: int = 3,
    aspect_ratio_factor: float = 1.1,
    refine_step: int = 3,
    refine_rounds: int = 5,
    alpha: float = 10.0,
    levels: int | None = None,
) -> tuple[SearchResult, np.ndarray, np.ndarray]:
    """Re-rank the top ``top_n`` of each query by the similarity of its localized region.

    Args:
        ranking: initial :class:`SearchResult` (Q rows).
        query_macs: (Q, C) query MACs, used for localization.
        database_maps: indexable by database id, each an (H, W, C) map (a lazy
            sequence works: only the top ``top_n`` of each query are read).
        query_vectors: (Q, D) query descriptors compared with ``describe_region`` of the
            localized region (default: the l2-normalized MACs, with region MAC).
        query_aspect_ratios: (Q,) width / height of each query (None: no filter).
        describe_region: (h, w, C) map crop -> (D,) descriptor (default: l2(MAC)).
        top_n: how many of each ranking to localize and re-rank.

    Returns:
        ``(result, windows, region_vectors)``: the re-ranked :class:`SearchResult`
        (tail scores capped to keep rows descending); (Q, n, 4) int64 localized
        windows of the re-ranked head in its new order (-1 for padding); (Q, n, D)
        float32 region descriptors in the same order (0 for padding), e.g. for
        query expansion.
    """
    macs = np.asarray(query_macs, dtype=np.float32)
    if macs.ndim != 2:
        raise ValueError(f"query_macs must have shape (Q, C), got {macs.shape}")
    ids = ranking_ids(ranking, macs.shape[0], len(database_maps))
    describe = describe_region if describe_region is not None else (lambda m: l2_normalize(m.max(axis=(0, 1))))
    qvec = l2_normalize(macs) if query_vectors is None else np.asarray(query_vectors, dtype=np.float32)
    if qvec.ndim != 2 or qvec.shape[0] != macs.shape[0]:
        raise ValueError(f"query_vectors must have shape ({macs.shape[0]}, D), got {qvec.shape}")
    ratios = [None] * macs.shape[0] if query_aspect_ratios is None else list(np.asarray(query_aspect_ratios, float))
    if len(ratios) != macs.shape[0]:
        raise ValueError(f"query_aspect_ratios has {len(ratios)} entries for {macs.shape[0]} queries")
    top_n = _check_positive_int(top_n, "top_n")
    head = min(top_n, ids.shape[1])
    windows = np.full((macs.shape[0], head, 4), -1, np.int64)
    vectors = np.zeros((macs.shape[0], head, qvec.shape[1]), np.float32)
    scores = np.array(ranking.scores, dtype=np.float32)
    new_ids = ids.copy()
    for q in range(macs.shape[0]):
        sims = np.full(head, -np.inf, np.float32)
        for j in np.flatnonzero(ids[q, :head] >= 0):
            amap = check_activations(database_maps[int(ids[q, j])], f"database_maps[{int(ids[q, j])}]")
            loc = localize(macs[q], amap, query_aspect_ratio=ratios[q], step=step,
                           aspect_ratio_factor=aspect_ratio_factor, refine_step=refine_step,
                           refine_rounds=refine_rounds, alpha=alpha, levels=levels)
            x1, y1, x2, y2 = loc.window
            vec = np.asarray(describe(amap[y1:y2, x1:x2]), dtype=np.float32)
            if vec.shape != (qvec.shape[1],):
                raise ValueError(f"describe_region returned shape {vec.shape}, expected ({qvec.shape[1]},)")
            windows[q, j], vectors[q, j] = loc.window, vec
            sims[j] = float(vec @ qvec[q])
        order = np.argsort(-sims, kind="stable")
        new_ids[q, :head] = ids[q, :head][order]
        scores[q, :head] = sims[order]
        windows[q], vectors[q] = windows[q][order], vectors[q][order]
    cap_tail(scores, head)
    return SearchResult(scores, new_ids, ranking.names), windows, vectors
