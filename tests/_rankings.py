"""Comparing rankings and float scores computed on another machine.

Float arithmetic (TensorFlow convolutions, BLAS sums, OpenCV's SIMD paths) may
differ in the last bits from one CPU to another, so results stored in
``tests/data`` are compared to a stated tolerance, and rankings up to near-ties:
an item may change places only with items whose scores are within the tolerance
of its own.  Bit-identity is kept where the arithmetic is exact (binary codes,
integer ids, two computations on one machine).
"""

from __future__ import annotations

import numpy as np

SCORE_ATOL = 1e-5
"""Largest difference between a score computed here and the stored one (float32 scores
in [-1, 1] or inlier-weighted ones of the same scale)."""


def assert_same_ranking(ranks: np.ndarray, scores: np.ndarray, expected_ranks: np.ndarray,
                        expected_scores: np.ndarray, *, atol: float = SCORE_ATOL,
                        what: str = "ranking") -> None:
    """Fail unless two rankings agree up to near-ties.

    ``ranks`` (Q, K) int item ids best first and ``scores`` (Q, K) their scores, against
    the expected pair of the same shapes: the score at every rank within ``atol``, and an
    item found at another rank only where the expected scores of both ranks are within
    ``2 * atol`` (items of the tail may leave a truncated list only on a near-tie with the
    last kept score).
    """
    assert ranks.shape == expected_ranks.shape, f"{what}: shape {ranks.shape} != " \
                                                f"{expected_ranks.shape}"
    assert np.allclose(scores, expected_scores, rtol=0, atol=atol), \
        f"{what}: scores differ by up to {np.abs(scores - expected_scores).max():.3g} > {atol}"
    for q, (row, expected_row) in enumerate(zip(ranks, expected_ranks)):
        where = {int(item): rank for rank, item in enumerate(row)}
        for rank, item in enumerate(expected_row):
            moved_to = where.get(int(item), len(row) - 1)
            assert abs(expected_scores[q, rank] - expected_scores[q, moved_to]) <= 2 * atol, \
                f"{what}: query {q}: item {item} moved from rank {rank} to {moved_to} " \
                f"(expected scores {expected_scores[q, rank]:.6g} vs " \
                f"{expected_scores[q, moved_to]:.6g}: not a near-tie)"
