"""numba kernels of :mod:`d2r.index.compiled` (imported only when first used).

Compiled on first call and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["inverted_binary_scores", "inverted_float_scores", "normalized_top_k"]


@njit(cache=True, inline="always")
def _popcount(x):
    """Set bits of a uint64 (SWAR)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2))
                                               & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, inline="always")
def _postings_in(offsets, ids, word, lo_id, hi_id):
    """[lo, hi): the positions of ``word``'s postings whose item ids lie in [lo_id, hi_id)
    (posting lists hold ascending ids)."""
    start = offsets[word]
    end = offsets[word + 1]
    return (start + np.searchsorted(ids[start:end], lo_id),
            start + np.searchsorted(ids[start:end], hi_id))


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
            lo, hi = _postings_in(offsets, ids, q_words[w], lo_id, hi_id)
            if width == 2:  # 128-bit codes (DELF, RootSIFT): unrolled (2x on cached lists)
                a = q_codes[w, 0]
                b = q_codes[w, 1]
                for p in range(lo, hi):
                    h = _popcount(codes[p, 0] ^ a) + _popcount(codes[p, 1] ^ b)
                    scores[np.uint32(ids[p])] += table[h]  # ids >= 0: no wrap-around check
            else:
                for p in range(lo, hi):
                    h = 0
                    for c in range(width):
                        h += _popcount(codes[p, c] ^ q_codes[w, c])
                    scores[np.uint32(ids[p])] += table[h]
    return scores


@njit(cache=True, parallel=True, nogil=True, fastmath=True)
def inverted_float_scores(offsets, ids, vectors, q_words, q_vectors, alpha, int_alpha, tau,
                          n_items, parts):
    """(n_items,) float64: for each query word, its postings' selectivity of the float32
    dot product ``u`` (``sign(u) |u|**alpha`` where ``u > tau``, else 0; ``int_alpha`` > 0:
    alpha is that integer) added to their items' scores; ``parts`` threads own disjoint
    item id ranges."""
    scores = np.zeros(n_items, np.float64)
    dim = vectors.shape[1]
    step = (n_items + parts - 1) // parts
    for part in prange(parts):
        lo_id = part * step
        hi_id = min(n_items, lo_id + step)
        for w in range(q_words.shape[0]):
            lo, hi = _postings_in(offsets, ids, q_words[w], lo_id, hi_id)
            for p in range(lo, hi):
                u = np.float32(0.0)
                for d in range(dim):
                    u += vectors[p, d] * q_vectors[w, d]
                v = np.float64(u)
                if v > tau:
                    base = abs(v)
                    if int_alpha > 0:  # integer alpha (ASMK's 3): multiplications, not pow
                        weight = 1.0
                        for _ in range(int_alpha):
                            weight *= base
                    else:
                        weight = base ** alpha
                    scores[np.uint32(ids[p])] += weight if v >= 0 else -weight
    return scores


@njit(cache=True, nogil=True)
def _before(a_score, a_id, b_score, b_id):
    """Whether (a_score, a_id) ranks before (b_score, b_id): higher score, then lower id."""
    return a_score > b_score or (a_score == b_score and a_id < b_id)


@njit(cache=True, nogil=True)
def _sift_down(heap_s, heap_i, size, at):
    """Restore the heap whose root is the *worst* kept entry, from position ``at``."""
    while True:
        child = 2 * at + 1
        if child >= size:
            return
        if child + 1 < size and _before(heap_s[child], heap_i[child],
                                        heap_s[child + 1], heap_i[child + 1]):
            child += 1
        if _before(heap_s[child], heap_i[child], heap_s[at], heap_i[at]):
            return
        heap_s[at], heap_s[child] = heap_s[child], heap_s[at]
        heap_i[at], heap_i[child] = heap_i[child], heap_i[at]
        at = child


@njit(cache=True, nogil=True)
def normalized_top_k(scores, factors, divisor, k):
    """The best ``k`` of ``scores * factors / divisor`` (``factors`` empty: ``scores /
    divisor``; ``divisor`` 0: ``scores``) by value, then lower id: (k,) float64 values
    and (k,) int64 ids, best first; k <= len(scores)."""
    heap_s = np.empty(k, np.float64)
    heap_i = np.empty(k, np.int64)
    size = 0
    use_factors = factors.shape[0] > 0
    for i in range(scores.shape[0]):
        value = scores[i]
        if use_factors:
            value = value * (factors[i] / divisor)
        elif divisor != 0.0:
            value = value / divisor
        if size < k:
            heap_s[size] = value
            heap_i[size] = i
            size += 1
            if size == k:
                for at in range(k // 2 - 1, -1, -1):
                    _sift_down(heap_s, heap_i, k, at)
        elif _before(value, i, heap_s[0], heap_i[0]):
            heap_s[0] = value
            heap_i[0] = i
            _sift_down(heap_s, heap_i, k, 0)
    out_s = np.empty(k, np.float64)
    out_i = np.empty(k, np.int64)
    for pos in range(k - 1, -1, -1):  # pop the worst first
        out_s[pos] = heap_s[0]
        out_i[pos] = heap_i[0]
        size -= 1
        heap_s[0] = heap_s[size]
        heap_i[0] = heap_i[size]
        _sift_down(heap_s, heap_i, size, 0)
    return out_s, out_i
