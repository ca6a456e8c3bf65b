"""numba kernels of :mod:`d2r.index.compiled` (imported only when first used).

Compiled on first call and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["inverted_binary_scores"]


@njit(cache=True, inline="always")
def _popcount(x):
    """Set bits of a uint64 (SWAR)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2))
                                               & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, parallel=True, nogil=True)
def inverted_binary_scores(offsets, ids, codes, q_words, q_codes, table, n_items, parts):
    """(n_items,) float64: for each query word, its postings' table[popcount(q ^ code)]
    added to their items' scores; ``parts`` threads own disjoint item id ranges."""
    scores = np.zeros(n_items, np.float64)
    width = codes.shape[1]
    step = (n_items + parts - 1) // parts
    for part in prange(parts):
        lo_id = part * step
        hi_id = min(n_items, lo_id + step)
        for w in range(q_words.shape[0]):
            start = offsets[q_words[w]]
            end = offsets[q_words[w] + 1]
            lo = start + np.searchsorted(ids[start:end], lo_id)
            hi = start + np.searchsorted(ids[start:end], hi_id)
            for p in range(lo, hi):
                h = 0
                for c in range(width):
                    h += _popcount(codes[p, c] ^ q_codes[w, c])
                scores[ids[p]] += table[h]
    return scores
