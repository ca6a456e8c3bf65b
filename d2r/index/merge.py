"""Merging per-part top-k lists (shards, segments) into one exact top-k."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from d2r.index.topk import check_k

__all__ = ["merge_topk"]


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int, *,
               tie_rank: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-part top-k lists into one top-``k`` per query.

    Args:
        scores: per part (Q, k_s) scores (float64 for exact ties), -inf padded.
        ids: per part (Q, k_s) int64 global ids, -1 padded.
        k: results per query.
        tie_rank: (N,) int64 order of equal scores by global id (for segments: the rank
            of each image's name); None orders them by global id.

    Returns:
        (Q, k) float32 scores and (Q, k) int64 ids, by score descending and, among
        equal scores, ``tie_rank`` (or global id) ascending; -inf / -1 pad rows with
        fewer than ``k`` results.
    """
    k = check_k(k)
    if not scores:
        raise ValueError("merge_topk needs at least one part's results")
    all_scores = np.concatenate([np.asarray(s, np.float64) for s in scores], axis=1)
    all_ids = np.concatenate([np.asarray(i, np.int64) for i in ids], axis=1)
    if all_scores.shape != all_ids.shape:
        raise ValueError(f"scores {all_scores.shape} and ids {all_ids.shape} differ in shape")
    num_queries = all_scores.shape[0]
    out_scores = np.full((num_queries, k), -np.inf, np.float32)
    out_ids = np.full((num_queries, k), -1, np.int64)
    if all_scores.shape[1] == 0 or num_queries == 0:
        return out_scores, out_ids
    ranks = all_ids if tie_rank is None else np.asarray(tie_rank, np.int64)[np.maximum(all_ids, 0)]
    tie_key = np.where(all_ids < 0, np.iinfo(np.int64).max, ranks)
    order = np.lexsort((tie_key, -all_scores), axis=-1)[:, :k]
    kk = order.shape[1]
    best_ids = np.take_along_axis(all_ids, order, axis=1)
    best_scores = np.take_along_axis(all_scores, order, axis=1)
    best_scores[best_ids < 0] = -np.inf
    out_scores[:, :kk] = best_scores
    out_ids[:, :kk] = best_ids
    return out_scores, out_ids
