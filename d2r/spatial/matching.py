"""Putative matches between two images' local features, by descriptor nearest neighbour.

:func:`match_descriptors` pairs every query feature with its nearest database feature (L2 on
the (N, D) and (M, D) descriptors), kept when the distance is below ``descriptor_threshold``
(strict, as ``scipy.spatial.cKDTree``'s ``distance_upper_bound`` in the DELF reference),
optionally passing Lowe's ratio test and a mutual nearest-neighbour check; matches are (P, 2)
int64 ``(query index, database index)`` pairs.  :func:`matched_locations` gives their (P, 2)
(x, y) locations; :func:`check_matches` checks a given array of them.  The distances are
computed in blocks of at most ``_MAX_BLOCK`` entries.  Next step:
:func:`d2r.spatial.ransac.verify_pair`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from d2r.config import VerificationConfig
from d2r.spatial.checks import check_features, positive_number
from d2r.types import LocalFeatures

__all__ = ["check_matches", "match_descriptors", "matched_locations"]

_DEFAULTS = VerificationConfig()
_MAX_BLOCK = 1 << 22  # distance-matrix entries computed at once (16 MiB of float32)


def match_descriptors(
    query: LocalFeatures,
    db: LocalFeatures,
    *,
    descriptor_threshold: float = _DEFAULTS.descriptor_threshold,
    ratio_test: float | None = _DEFAULTS.ratio_test,
    mutual: bool = _DEFAULTS.mutual,
) -> np.ndarray:
    """Putative matches by nearest neighbour from query to database descriptors.

    Args:
        query: N query features; db: M database features (same dimension D).
        descriptor_threshold: keep a match when its L2 distance is ``<`` this.
        ratio_test: when set (0 < r <= 1), also require ``d1 < r * d2`` with
            ``d2`` the distance to the second nearest database descriptor
            (a single database descriptor always passes).
        mutual: also require the query feature to be its match's nearest one.

    Returns:
        (P, 2) int64 ``(query index, database index)``, ascending query index;
        ``P <= N``, every query feature used at most once.
    """
    query = check_features(query, "query")
    db = check_features(db, "db")
    if query.dim != db.dim:
        raise ValueError(
            f"descriptor dimensions differ: query has {query.dim}, db has {db.dim}"
        )
    threshold = positive_number(descriptor_threshold, "descriptor_threshold")
    if ratio_test is not None:
        ratio = positive_number(ratio_test, "ratio_test")
        if ratio > 1:
            raise ValueError(f"ratio_test must be in (0, 1], got {ratio_test!r}")
    n, m = len(query), len(db)
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64)

    q_desc, d_desc = query.descriptors, db.descriptors
    d_sq = np.einsum("ij,ij->i", d_desc, d_desc)
    nearest = np.empty(n, np.int64)
    best = np.empty(n, np.float32)
    second = np.full(n, np.inf, np.float32)
    col_best = np.full(m, np.inf, np.float32)
    col_arg = np.zeros(m, np.int64)
    rows = max(1, _MAX_BLOCK // m)
    for start in range(0, n, rows):
        block = q_desc[start:start + rows]
        dist = np.einsum("ij,ij->i", block, block)[:, None] + d_sq[None, :]
        dist -= 2.0 * (block @ d_desc.T)
        np.maximum(dist, 0.0, out=dist)
        stop = start + block.shape[0]
        if mutual:
            arg = np.argmin(dist, axis=0)
            value = dist[arg, np.arange(m)]
            better = value < col_best
            col_best[better] = value[better]
            col_arg[better] = arg[better] + start
        arg = np.argmin(dist, axis=1)
        local = np.arange(block.shape[0])
        nearest[start:stop] = arg
        best[start:stop] = dist[local, arg]
        if ratio_test is not None and m > 1:
            dist[local, arg] = np.inf
            second[start:stop] = dist.min(axis=1)

    best_d = np.sqrt(best)
    keep = best_d < threshold
    if ratio_test is not None:
        keep &= best_d < ratio * np.sqrt(second)
    if mutual:
        keep &= col_arg[nearest] == np.arange(n)
    index = np.flatnonzero(keep)
    return np.stack([index, nearest[index]], axis=1).astype(np.int64)


def matched_locations(
    query: LocalFeatures, db: LocalFeatures, matches: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Locations of matched features: ((P, 2), (P, 2)) float32 query and database (x, y)."""
    pairs = check_matches(matches, len(query), len(db))
    return query.locations[pairs[:, 0]], db.locations[pairs[:, 1]]


def check_matches(matches: Any, n_query: int, n_db: int) -> np.ndarray:
    """``matches`` as a (P, 2) int64 array of indices into ``n_query`` query and ``n_db``
    database features (ValueError otherwise); (0, 2) when empty."""
    pairs = np.asarray(matches)
    if pairs.size == 0:
        return np.zeros((0, 2), np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.kind not in "iu":
        raise ValueError(f"matches must be a (P, 2) integer array, got {pairs.dtype} {pairs.shape}")
    pairs = pairs.astype(np.int64)
    if pairs.min() < 0 or pairs[:, 0].max() >= n_query or pairs[:, 1].max() >= n_db:
        raise ValueError(
            f"matches index outside the features ({n_query} query, {n_db} database)"
        )
    return pairs

