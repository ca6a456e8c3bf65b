"""Top-k selection over the scores of every database item, shared by the index kinds.

``scores`` is (N,) one score per item id; the best ``k`` come back best first, ties to the
lower id, padded with -inf / -1 when N < k.  :func:`top_k` gives float32 scores (what
``search`` returns), :func:`top_k_exact` the float64 scores the order was decided by (what
``ranking`` returns, for merging the lists of shards exactly).
"""

from __future__ import annotations

import numpy as np

from d2r.checks import check_positive_int

__all__ = ["check_k", "top_k", "top_k_exact"]


def check_k(k: int) -> int:
    """Validate the number of results ``k`` (a positive integer)."""
    return check_positive_int("k", k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` entries of ``scores`` (N,), descending; ties go to the lower id.

    Returns:
        (k,) float32 scores and (k,) int64 ids, padded with -inf / -1 when N < k.
    """
    n = scores.shape[0]
    kk = min(k, n)
    if kk < n:
        threshold = np.partition(scores, n - kk)[n - kk]
        candidates = np.flatnonzero(scores >= threshold)
        if candidates.size > kk:  # ties at the threshold: keep the lowest ids
            above = np.flatnonzero(scores > threshold)
            ties = np.flatnonzero(scores == threshold)[: kk - above.size]
            candidates = np.concatenate([above, ties])
    else:
        candidates = np.arange(n)
    top = scores[candidates]
    # equal scores appear in ascending id order among the candidates: a stable sort keeps it
    order = np.argsort(-top, kind="stable")
    if kk == k:
        return top[order].astype(np.float32), candidates[order].astype(np.int64)
    out_scores = np.full(k, -np.inf, np.float32)
    out_ids = np.full(k, -1, np.int64)
    out_scores[:kk] = top[order]
    out_ids[:kk] = candidates[order]
    return out_scores, out_ids


def top_k_exact(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` with the float64 scores that decided the order: (k,) float64, (k,) int64.

    Shards return these so that merging their lists orders near-ties as the unsharded index
    does (the float32 scores of ``top_k`` may tie where the float64 ones differ).
    """
    _, ids = top_k(scores, k)
    out = np.full(k, -np.inf)
    found = ids >= 0
    out[found] = scores[ids[found]]
    return out, ids
