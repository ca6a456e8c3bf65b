"""Verified query expansion for aggregated local features (VLAD, ASMK, ASMK*).

After spatial verification, the query's aggregated representation is combined with
those of the verified database images (Chum et al., "Total Recall", ICCV 2007: average
query expansion; Tolias & Jégou, "Visual query expansion with or without geometry",
Pattern Recognition 2014, for the per-word form that fits ASMK / ASMK*), and the
combination searches the whole index again.

Per method, with weights ``w_0 = 1`` (the query) and ``w_i`` (verified image ``i``):

* ``vlad``: ``normalize(sum_i w_i v_i)``: the weighted mean of the (K*D) VLAD vectors,
  l2-normalized.
* ``asmk``: for every word in the union of the images' words,
  ``normalize(sum_{i has c} w_i V_i(c))`` (per-word l2; a word whose sum vanishes is
  dropped).
* ``asmk_star``: for every word in the union, the sign of ``sum_{i has c} w_i b_i(c)`` with
  ``b`` the +-1 codes: a weighted majority vote per bit; a tie takes the bit of the
  first image (query first, then the verified images best first) that has the word.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from d2r.types import AggregatedImage

__all__ = ["expand_aggregated", "EXPANDABLE"]

EXPANDABLE = ("vlad", "asmk", "asmk_star")

_TIE_BREAK = 1e-6
"""Relative weight bonus by position (query first) that settles ties of binary votes."""


def _signs(image: AggregatedImage) -> np.ndarray:
    """(W, D) float64 +-1 codes of a binary image."""
    bits = np.unpackbits(image.vectors, axis=1)[:, :image.dim]
    return bits.astype(np.float64) * 2.0 - 1.0


def expand_aggregated(query: AggregatedImage, verified: Sequence[AggregatedImage], *,
                      method: str, weights: Optional[Sequence[float]] = None) -> AggregatedImage:
    """The expanded query of ``query`` and the ``verified`` images (best first).

    Args:
        query: the query's aggregated features.
        verified: aggregated features of the verified database images, best first.
        method: ``"vlad"``, ``"asmk"`` or ``"asmk_star"`` (how the images were aggregated).
        weights: (len(verified),) non-negative weights of the verified images (default 1).

    Returns:
        an :class:`AggregatedImage` of the same kind as ``query``.
    """
    if method not in EXPANDABLE:
        raise ValueError(f"method must be one of {EXPANDABLE}, got {method!r}")
    weights = np.ones(len(verified)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(verified),) or np.any(~np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"weights must be {len(verified)} finite values >= 0, got {weights}")
    images = [query, *verified]
    if {image.binary for image in images} != {method == "asmk_star"} or \
            {image.dim for image in images} != {query.dim}:
        raise ValueError(f"every image must be a {method} aggregation of {query.dim}-D features")
    w = np.concatenate([[1.0], weights])
    if not verified:
        return query
    if method == "vlad":
        if any(not np.array_equal(image.words, query.words) for image in verified):
            raise ValueError("VLAD images must cover the same words")
        total = sum(wi * image.vectors.astype(np.float64) for wi, image in zip(w, images))
        norm = np.sqrt(np.sum(total * total))
        return AggregatedImage(query.words, (total / max(norm, 1e-12)).astype(np.float32),
                               query.dim)
    words = np.concatenate([image.words for image in images])
    if method == "asmk_star":
        rows = np.concatenate([_signs(image) for image in images])
        w = w * (1.0 + _TIE_BREAK * (len(images) - np.arange(len(images))))
    else:
        rows = np.concatenate([image.vectors.astype(np.float64) for image in images])
    row_weights = np.repeat(w, [len(image) for image in images])
    keys, inverse = np.unique(words, return_inverse=True)
    sums = np.zeros((len(keys), query.dim), np.float64)
    np.add.at(sums, inverse, rows * row_weights[:, None])
    if method == "asmk_star":
        return AggregatedImage(keys.astype(np.int32), np.packbits(sums > 0, axis=1), query.dim,
                               binary=True)
    norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))
    keep = norms > 1e-12
    return AggregatedImage(keys[keep].astype(np.int32),
                           (sums[keep] / norms[keep, None]).astype(np.float32), query.dim)
