"""Exhaustive index for global + CAM-masked local descriptor pairs, min-of-L1 distance.

For the multi-resolution R-MAC with CAM masks (:func:`d2r.cnn.cam.cam_mask`) every image
has a global descriptor ``g`` (D,) and a CAM-masked local descriptor ``l`` (D,), stored
together as one (N, 2, D) float32 array (``vectors.npy``, memory-mapped when loaded; slot 0
global, slot 1 local).  A query ``(g_q, l_q)`` is at distance::

    d(q, x) = min(|g_q - g_x|_1, |l_q - l_x|_1)

from image ``x`` (:func:`d2r.cnn.cam.min_manhattan_distance`), and the index reports the
score ``-d`` so that :class:`~d2r.types.SearchResult` stays "higher is better, descending".

Search is exact.  For a chunk of database rows, ``faiss.knn(..., metric=METRIC_L1)`` finds the
``k`` nearest images on the global slot and, separately, on the local slot; the chunk's ``k``
nearest images by ``d`` are among the union of the two lists (see :func:`_chunk_candidates`),
whose distances are then recomputed exactly on both slots and merged into the running top
``k``.  Ties are broken by the lower id.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from d2r.index.dense import DenseIndex
from d2r.index.registry import register_index
from d2r.index.topk import check_k
from d2r.types import SearchResult

__all__ = ["GlobalLocalIndex"]

# Bytes of database rows copied into contiguous per-slot matrices for faiss at a time.
_CHUNK_BYTES = 1 << 26
# Bytes of float64 gathered candidate vectors per exact-distance block.
_GATHER_BYTES = 1 << 25
# Sorts after every real id: marks duplicate candidates and padding during the merge.
_NO_ID = np.iinfo(np.int64).max


def _exact_min_l1(queries: np.ndarray, database: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``min`` over the two slots of the L1 distance, in float64, as float32.

    Args:
        queries: (Q, 2, D) float32.
        database: (M, 2, D) float32 database rows.
        cand: (Q, C) int64 rows of ``database`` for every query.

    Returns:
        (Q, C) float32 distances (rounded like :func:`d2r.cnn.cam.min_manhattan_distance`).
    """
    num_queries, num_cand = cand.shape
    dim = queries.shape[2]
    out = np.empty((num_queries, num_cand), np.float32)
    step = max(1, _GATHER_BYTES // max(1, 16 * num_cand * dim))
    for a in range(0, num_queries, step):
        b = min(a + step, num_queries)
        diff = np.subtract(database[cand[a:b]], queries[a:b, None], dtype=np.float64)  # (q, C, 2, D)
        out[a:b] = np.abs(diff, out=diff).sum(axis=3).min(axis=2)
    return out


def _chunk_candidates(queries: np.ndarray, chunk: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``chunk`` (M, 2, D) holding every query's ``k`` nearest by ``d``: (Q, 2 min(k, M)) int64.

    Order images by ``(d, id)`` and each slot by ``(distance on that slot, id)``; faiss keeps
    the lower id on ties, so its two lists are the first ``k`` of the two slot orders.  Claim:
    the first ``k`` images by ``(d, id)`` are in the union of the two lists.  Let ``i`` be one
    of them and say ``d(i) = d_g(i)`` (the local case is symmetric).  If ``i`` were not in the
    global list, ``k`` images ``j`` would precede it in the global order: ``d_g(j) < d_g(i)``,
    or ``d_g(j) = d_g(i)`` and ``j < i``.  Since ``d(j) <= d_g(j)``, the first case gives
    ``d(j) < d(i)`` and the second ``d(j) <= d(i)`` with ``j < i``: each ``j`` also precedes
    ``i`` by ``(d, id)``, so ``i`` would not be among the first ``k``.  In short: an image whose
    min distance is its global one and that is in the top ``k`` of min distances has fewer
    than ``k`` images (by ``(d_g, id)``) before it on the global slot.  Membership in one list
    says nothing about the distance on the other slot, so the caller recomputes both exactly.

    The lists come from faiss's float32 distances: images whose exact distances differ by
    less than float32 rounding may be ordered differently at the ``k``-th place.

    Returns the two lists side by side, sorted by row within each query, duplicates kept.
    """
    k = min(k, chunk.shape[0])
    lists = []
    for slot in (0, 1):
        base = np.ascontiguousarray(chunk[:, slot])
        lists.append(faiss.knn(np.ascontiguousarray(queries[:, slot]), base, k, metric=faiss.METRIC_L1)[1])
    return np.sort(np.concatenate(lists, axis=1), axis=1)


@register_index
class GlobalLocalIndex(DenseIndex):
    """(global, CAM-local) descriptor pairs searched by ``min`` of the two L1 distances.

    Args:
        dim: dimension D of each of the two descriptors.
    """

    kind = "global_local"
    slots = (2,)
    metric = "min_global_local_l1"

    def _pairs(self, x: np.ndarray, what: str) -> np.ndarray:
        """(n, 2, D) float32 C-contiguous, finite."""
        arr = np.asarray(x)
        if arr.size == 0:
            arr = arr.reshape(0, 2, self.dim)
        if arr.ndim != 3 or arr.shape[1:] != (2, self.dim):
            raise ValueError(f"{what} must have shape (n, 2, {self.dim}) (global, local), got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinite values")
        return arr

    def add(self, vectors: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        """Append images.

        Args:
            vectors: (n, 2, D) float32, ``[:, 0]`` global and ``[:, 1]`` CAM-masked local descriptors.
            names: n image names, or None (every batch named, or none).

        Returns:
            (n,) int64 image ids.
        """
        return self._rows.append(self._pairs(vectors, "vectors"), names)

    def search(self, queries: np.ndarray, *, k: int = 100) -> SearchResult:
        """Top-``k`` images of every query by ``min(|g_q - g_x|_1, |l_q - l_x|_1)`` (exact).

        Args:
            queries: (Q, 2, D) float32 (global, local) query pairs.
            k: results per query; rows are padded with id -1 / score -inf beyond N images.

        Returns:
            SearchResult with (Q, k) float32 scores ``-d`` descending (ties: lower id first)
            and (Q, k) int64 image ids.
        """
        q = self._pairs(queries, "queries")
        k = check_k(k)
        db = self.vectors
        num_queries = q.shape[0]
        best_dist = np.full((num_queries, k), np.inf, np.float32)
        best_ids = np.full((num_queries, k), _NO_ID, np.int64)
        if num_queries:
            step = max(1, _CHUNK_BYTES // (8 * self.dim))
            for a in range(0, db.shape[0], step):
                chunk = db[a:a + step]
                cand = _chunk_candidates(q, chunk, k)
                dist = _exact_min_l1(q, chunk, cand)
                ids = cand + a
                duplicate = np.zeros(cand.shape, bool)
                duplicate[:, 1:] = cand[:, 1:] == cand[:, :-1]
                dist[duplicate], ids[duplicate] = np.inf, _NO_ID
                merged_dist = np.concatenate([best_dist, dist], axis=1)
                merged_ids = np.concatenate([best_ids, ids], axis=1)
                order = np.lexsort((merged_ids, merged_dist), axis=1)[:, :k]
                best_dist = np.take_along_axis(merged_dist, order, axis=1)
                best_ids = np.take_along_axis(merged_ids, order, axis=1)
        padding = best_ids == _NO_ID
        scores = np.where(padding, -np.inf, -best_dist).astype(np.float32)
        return SearchResult(scores, np.where(padding, -1, best_ids), self.names)
