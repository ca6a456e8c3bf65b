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

Speed: grid windows are cached per map size and aspect ratio; the grid search
screens windows in float32 and scores exactly only those near the best
(:meth:`IntegralMaxPool.best_windows`); refinement remembers the windows it has
scored; one :class:`IntegralMaxPool` is built per database image and shared by
every query whose top N holds it (queries of the same aspect ratio also share the
windows' approximate MACs); ``aml_rerank(..., workers=k)`` localizes k database
images at once in threads.  None of this changes a window; scores differ from the
former implementation by ~1e-16 (``benchmarks/aml_speed.py`` compares the two).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from d2r.checks import check_positive_int
from d2r.cnn._ranking import cap_tail, ranking_ids
from d2r.cnn.integral import IntegralMaxPool
from d2r.cnn.pooling import l2_normalize
from d2r.types import SearchResult

__all__ = [
    "Localization",
    "all_windows",
    "aml_rerank",
    "candidate_windows",
    "localize",
    "localize_exhaustive",
    "window_iou",
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
    return _grid_windows(height, width, step, aspect_ratio, aspect_ratio_factor).copy()


def _grid_windows(height, width, step, aspect_ratio, aspect_ratio_factor) -> np.ndarray:
    """:func:`candidate_windows`, validated, then cached (read-only: do not modify)."""
    step = check_positive_int("step", step)
    width = check_positive_int("width", width)
    height = check_positive_int("height", height)
    if aspect_ratio is None:
        return _cached_windows(height, width, step, None, None)
    if not np.isfinite(aspect_ratio) or aspect_ratio <= 0:
        raise ValueError(f"aspect_ratio must be a positive number, got {aspect_ratio!r}")
    if not aspect_ratio_factor >= 1.0:
        raise ValueError(f"aspect_ratio_factor must be >= 1, got {aspect_ratio_factor!r}")
    try:
        return _cached_windows(height, width, step, aspect_ratio, aspect_ratio_factor)
    except TypeError:  # unhashable (e.g. a 0-d array): no caching
        return _cached_windows.__wrapped__(height, width, step, aspect_ratio, aspect_ratio_factor)


@functools.lru_cache(maxsize=256, typed=True)
def _cached_windows(height: int, width: int, step: int, aspect_ratio, aspect_ratio_factor) -> np.ndarray:
    windows = _product(_pairs(width, step), _pairs(height, step))
    if aspect_ratio is not None:
        ratios = (windows[:, 2] - windows[:, 0]) / (windows[:, 3] - windows[:, 1])
        deviation = np.abs(np.log(ratios / aspect_ratio))
        keep = deviation <= np.log(aspect_ratio_factor) + 1e-12
        if not keep.any():
            logger.debug("no window within aspect factor %.2f of %.3f; keeping the closest",
                         aspect_ratio_factor, aspect_ratio)
            keep = deviation <= deviation.min() + 1e-12
        windows = windows[keep]
    windows.setflags(write=False)
    return windows


def _as_pool(activations, alpha: float, levels: int | None) -> IntegralMaxPool:
    if isinstance(activations, IntegralMaxPool):
        return activations
    return IntegralMaxPool(activations, alpha=alpha, levels=levels)


def _refine(pool: IntegralMaxPool, unit_query: np.ndarray, window, score: float,
            refine_step: int, refine_rounds: int) -> tuple[np.ndarray, float, int]:
    """Coordinate descent from ``window``; ``unit_query`` is :meth:`IntegralMaxPool.unit_query`.

    Scores are remembered: later rounds mostly revisit windows (a score depends on its
    window alone, so the result is the same); ``evaluated`` counts every candidate.
    """
    offsets = [*range(-refine_step, 0), *range(1, refine_step + 1)]
    width, height = pool.width, pool.height
    best_window = [int(v) for v in window]
    known = {tuple(best_window): score}
    evaluated = 0
    for _ in range(refine_rounds):
        improved = False
        for coord in range(4):
            cands = []
            for offset in offsets:
                cand = best_window.copy()
                cand[coord] += offset
                x1, y1, x2, y2 = cand
                if x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height and x2 > x1 and y2 > y1:
                    cands.append(cand)
            if not cands:
                continue
            keys = [tuple(c) for c in cands]
            todo = [c for c, k in zip(cands, keys) if k not in known]
            if todo:
                known.update(zip(map(tuple, todo), pool.cosines_few(todo, unit_query).tolist()))
            scores = np.array([known[k] for k in keys])
            evaluated += len(cands)
            best = int(np.argmax(scores))
            if scores[best] > score + 1e-12:
                best_window, score, improved = cands[best], float(scores[best]), True
        if not improved:
            break
    return np.array(best_window, np.int64), score, evaluated


def _localize_many(pool: IntegralMaxPool, query_macs: Sequence, query_aspect_ratio, *, step,
                   aspect_ratio_factor, refine_step, refine_rounds) -> list[Localization]:
    """:func:`localize` of several queries of the same aspect ratio in one map."""
    check_positive_int("refine_rounds", refine_rounds)
    refine_step = check_positive_int("refine_step", refine_step)
    windows = _grid_windows(pool.height, pool.width, step, query_aspect_ratio, aspect_ratio_factor)
    units = [pool.unit_query(q) for q in query_macs]
    out = []
    for unit, (best, score) in zip(units, pool.best_windows(windows, units)):
        window, score, refined = _refine(pool, unit, windows[best], score, refine_step, int(refine_rounds))
        out.append(Localization(window=window, score=score, num_evaluated=int(windows.shape[0]) + refined))
    return out


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
    return _localize_many(pool, [query_mac], query_aspect_ratio, step=step,
                          aspect_ratio_factor=aspect_ratio_factor, refine_step=refine_step,
                          refine_rounds=refine_rounds)[0]


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
    workers: int = 1,
) -> tuple[SearchResult, np.ndarray, np.ndarray]:
    """Re-rank the top ``top_n`` of each query by the similarity of its localized region.

    Args:
        ranking: initial :class:`SearchResult` (Q rows).
        query_macs: (Q, C) query MACs, used for localization.
        database_maps: indexable by database id, each an (H, W, C) map (a lazy
            sequence works: each database image in the top ``top_n`` of any query
            is read once, under a lock, so it need not be thread-safe).
        query_vectors: (Q, D) query descriptors compared with ``describe_region`` of the
            localized region (default: the l2-normalized MACs, with region MAC).
        query_aspect_ratios: (Q,) width / height of each query (None: no filter).
        describe_region: (h, w, C) map crop -> (D,) descriptor (default: l2(MAC));
            with ``workers > 1`` it is called from several threads.
        top_n: how many of each ranking to localize and re-rank.
        workers: database images localized at once, in threads (numpy releases
            the GIL); the result does not depend on it.

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
    top_n = check_positive_int("top_n", top_n)
    workers = check_positive_int("workers", workers)
    head = min(top_n, ids.shape[1])
    windows = np.full((macs.shape[0], head, 4), -1, np.int64)
    vectors = np.zeros((macs.shape[0], head, qvec.shape[1]), np.float32)
    sims = np.full((macs.shape[0], head), -np.inf, np.float32)
    # (query, rank) pairs by database image, images in order of first appearance
    groups: dict[int, list[tuple[int, int]]] = {}
    for q in range(macs.shape[0]):
        for j in np.flatnonzero(ids[q, :head] >= 0):
            groups.setdefault(int(ids[q, j]), []).append((q, int(j)))
    read_lock = threading.Lock()

    def localize_image(db: int, pairs: list[tuple[int, int]]) -> None:
        with read_lock:
            raw = database_maps[db]
        pool = IntegralMaxPool(raw, alpha=alpha, levels=levels, name=f"database_maps[{db}]")
        amap = pool.activations
        by_ratio: dict[object, list[tuple[int, int]]] = {}
        for q, j in pairs:
            by_ratio.setdefault(ratios[q], []).append((q, j))
        for ratio, members in by_ratio.items():
            locs = _localize_many(pool, [macs[q] for q, _ in members], ratio, step=step,
                                  aspect_ratio_factor=aspect_ratio_factor, refine_step=refine_step,
                                  refine_rounds=refine_rounds)
            for (q, j), loc in zip(members, locs):
                x1, y1, x2, y2 = loc.window
                vec = np.asarray(describe(amap[y1:y2, x1:x2]), dtype=np.float32)
                if vec.shape != (qvec.shape[1],):
                    raise ValueError(f"describe_region returned shape {vec.shape}, expected ({qvec.shape[1]},)")
                windows[q, j], vectors[q, j] = loc.window, vec
                sims[q, j] = float(vec @ qvec[q])

    if workers == 1 or len(groups) < 2:
        for db, pairs in groups.items():
            localize_image(db, pairs)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(groups))) as pool_executor:
            futures = [pool_executor.submit(localize_image, db, pairs) for db, pairs in groups.items()]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:
                    future.cancel()
    scores = np.array(ranking.scores, dtype=np.float32)
    new_ids = ids.copy()
    for q in range(macs.shape[0]):
        order = np.argsort(-sims[q], kind="stable")
        new_ids[q, :head] = ids[q, :head][order]
        scores[q, :head] = sims[q][order]
        windows[q], vectors[q] = windows[q][order], vectors[q][order]
    cap_tail(scores, head)
    return SearchResult(scores, new_ids, ranking.names), windows, vectors
