"""Shared checks for re-ranking a :class:`~d2r.types.SearchResult` (pure numpy)."""

from __future__ import annotations

import numpy as np

from d2r.types import SearchResult


def cap_tail(scores: np.ndarray, head: int) -> None:
    """Cap scores after column ``head`` at the row's lowest finite head score (rows stay descending)."""
    if 0 < head < scores.shape[1]:
        floor = np.where(np.isfinite(scores[:, :head]), scores[:, :head], np.inf).min(axis=1, keepdims=True)
        scores[:, head:] = np.minimum(scores[:, head:], floor)


def ranking_ids(ranking: SearchResult, num_queries: int, num_db: int) -> np.ndarray:
    """(Q, K) int64 ids of ``ranking``, checked against Q queries and N database items."""
    if not isinstance(ranking, SearchResult):
        raise TypeError(f"ranking must be a SearchResult, got {type(ranking).__name__}")
    ids = np.asarray(ranking.ids)
    if ids.shape[0] != num_queries:
        raise ValueError(f"ranking has {ids.shape[0]} rows for {num_queries} queries")
    if ids.size and ids.max() >= num_db:
        raise ValueError(f"ranking references database id {int(ids.max())} of {num_db}")
    return ids
