"""Average query expansion for global descriptors (pure numpy).

The expanded query is ``l2(q + sum of the top-k database vectors)`` (Tolias et al.
use the top 5, described by their localized regions); it re-scores the top N of
the initial ranking, the rest keeps its order.
"""

from __future__ import annotations

import numpy as np

from d2r.checks import check_positive_int
from d2r.cnn._ranking import cap_tail, ranking_ids
from d2r.cnn.pooling import l2_normalize
from d2r.types import SearchResult

__all__ = ["expand_queries", "average_query_expansion", "rescore_head", "rerank_top"]


def _matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, D)"
        raise ValueError(f"{name} must have shape {want}, got {np.shape(x)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def expand_queries(queries, neighbours, valid=None) -> np.ndarray:
    """``l2(q + sum_j n_j)``: (Q, D) queries, (Q, k, D) neighbours, (Q, k) bool ``valid`` -> (Q, D) float32."""
    q = _matrix(queries, "queries")
    nb = np.asarray(neighbours, dtype=np.float32)
    if nb.ndim != 3 or nb.shape[0] != q.shape[0] or nb.shape[2] != q.shape[1]:
        raise ValueError(f"neighbours must have shape ({q.shape[0]}, k, {q.shape[1]}), got {nb.shape}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != nb.shape[:2]:
            raise ValueError(f"valid must have shape {nb.shape[:2]}, got {valid.shape}")
        nb = np.where(valid[:, :, None], nb, 0.0)
    return l2_normalize(q + nb.sum(axis=1))


def average_query_expansion(queries, database, ranking: SearchResult, *, top_k: int = 5) -> np.ndarray:
    """Expanded queries from the top ``top_k`` of ``ranking``: (Q, D), (N, D) -> (Q, D) float32."""
    q = _matrix(queries, "queries")
    db = _matrix(database, "database", q.shape[1])
    ids = ranking_ids(ranking, q.shape[0], db.shape[0])
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
    top = ids[:, : int(top_k)]
    return expand_queries(q, db[np.maximum(top, 0)], top >= 0)


def rescore_head(ranking: SearchResult, queries, head_vectors, valid=None) -> SearchResult:
    """Re-sort the first n entries of each row by inner product with their own vectors.

    Args:
        ranking: Q rows, at least n columns.
        queries: (Q, D) query vectors.
        head_vectors: (Q, n, D) one vector per head entry (e.g. its localized region).
        valid: (Q, n) bool; invalid entries (padding) sink to the end of the head.

    The tail keeps its order, its scores capped at the lowest re-scored value so rows
    stay descending.
    """
    q = _matrix(queries, "queries")
    vectors = np.asarray(head_vectors, dtype=np.float32)
    if vectors.ndim != 3 or vectors.shape[0] != q.shape[0] or vectors.shape[2] != q.shape[1]:
        raise ValueError(f"head_vectors must have shape ({q.shape[0]}, n, {q.shape[1]}), got {vectors.shape}")
    head = vectors.shape[1]
    ids = np.array(ranking.ids, dtype=np.int64)
    if ids.shape[0] != q.shape[0] or ids.shape[1] < head:
        raise ValueError(f"ranking of shape {ids.shape} has no {head}-column head for {q.shape[0]} queries")
    valid = ids[:, :head] >= 0 if valid is None else np.asarray(valid, dtype=bool) & (ids[:, :head] >= 0)
    sims = np.where(valid, np.einsum("qd,qkd->qk", q, vectors), -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    scores = np.array(ranking.scores, dtype=np.float32)
    ids[:, :head] = np.take_along_axis(ids[:, :head], order, axis=1)
    scores[:, :head] = np.take_along_axis(sims, order, axis=1)
    cap_tail(scores, head)
    return SearchResult(scores, ids, ranking.names)


def rerank_top(queries, database, ranking: SearchResult, *, top_n: int = 1000) -> SearchResult:
    """Re-score the top ``top_n`` of ``ranking`` by inner product with ``queries``; the rest keeps its order.

    Scores of the tail are capped at the lowest re-scored value so rows stay descending.
    """
    q = _matrix(queries, "queries")
    db = _matrix(database, "database", q.shape[1])
    ids = ranking_ids(ranking, q.shape[0], db.shape[0])
    head_ids = ids[:, : min(check_positive_int("top_n", top_n), ids.shape[1])]
    return rescore_head(ranking, q, db[np.maximum(head_ids, 0)])
