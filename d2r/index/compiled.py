"""The inverted file's search as compiled passes (numba, ``d2r[fast]``).

For each query word, one pass over its posting list: for binary codes (ASMK*), XOR of
the packed codes (as 64-bit words), popcount, the selectivity from the same table as the
numpy path (:func:`d2r.index.match_kernel.code_kernel`); for float32 vectors (ASMK), the dot
product and the selectivity ``sign(u)|u|**alpha``; added to the item's score.  Every
item's score is the same sequential float64 sum, in query-word then posting order, as
the numpy path's, so binary scores are bit-identical and float ones differ only by the
dot products' rounding (float32 sums in another order than BLAS: within 1e-6;
``tests/test_compiled_kernel.py``).

Threads (``$D2R_THREADS``, default the CPUs) split the *item id range* (posting lists
hold ascending ids, so each thread finds its part of a list by binary search): no two
threads add to one item, and each item's sum keeps its order.  The normalization and
the top-k then run in one pass with a k-entry heap (:func:`normalized_top_k`), with the
numpy path's arithmetic and tie rule.  Compiled functions are cached on disk (numba's
``cache=True``, in ``__pycache__`` beside the kernels or in ``$NUMBA_CACHE_DIR``), so
only the first process compiles (a few seconds).

Without numba, :data:`AVAILABLE` is False and :func:`unavailable_reason` says why; the
index then scores with numpy.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

__all__ = ["AVAILABLE", "BACKENDS", "binary_scores", "float_scores", "normalized_top_k",
           "requested_backend", "unavailable_reason", "threads"]


AVAILABLE = importlib.util.find_spec("numba") is not None
"""Whether the compiled kernel can run here (numba is importable; it is imported on
first use, so importing d2r stays fast)."""

_REASON = "" if AVAILABLE else ("numba is not installed; pip install 'd2r[fast]' for the "
                                "compiled kernel")


def unavailable_reason() -> str:
    """Why the compiled kernel cannot run ('' when it can)."""
    return _REASON


BACKENDS = ("auto", "numpy", "compiled")
"""How a computation with a compiled twin runs: ``auto`` decides by its size, or forced."""


def requested_backend(backend: str, what: str) -> str:
    """``backend``, or for ``"auto"`` what ``$D2R_BACKEND`` (formerly ``$D2R_KERNEL``) asks;
    a value outside :data:`BACKENDS` raises ``ValueError`` naming ``what``."""
    choice = backend if backend != "auto" else os.environ.get(
        "D2R_BACKEND", os.environ.get("D2R_KERNEL", "auto"))
    if choice not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {choice!r} (D2R_BACKEND)")
    return choice


_CPUS = min(8, os.cpu_count() or 1)


def threads() -> int:
    """Threads the compiled kernel uses: ``$D2R_THREADS``, else the CPUs (at most 8)."""
    value = os.environ.get("D2R_THREADS")
    return max(1, int(value)) if value else _CPUS


def binary_scores(offsets: np.ndarray, ids: np.ndarray, codes: np.ndarray,
                  query_words: np.ndarray, query_codes: np.ndarray, sigma: np.ndarray,
                  num_items: int) -> np.ndarray:
    """Unnormalized ASMK* scores of every item: (N,) float64.

    Args:
        offsets: (K+1,) int64 posting ranges by word.
        ids: (P,) int32 item ids, ascending within each word's range.
        codes: (P, W) uint64 packed codes (W 64-bit words per code).
        query_words: (Q,) int32 the query's words, ascending.
        query_codes: (Q, W) uint64 their codes.
        sigma: (8 W + 1,) float64 selectivity by Hamming distance.
        num_items: N.
    """
    if not AVAILABLE:
        raise RuntimeError(_REASON)
    from d2r.index._numba_kernels import inverted_binary_scores

    return inverted_binary_scores(offsets, ids, codes, query_words, query_codes, sigma,
                                  int(num_items), threads())


def float_scores(offsets: np.ndarray, ids: np.ndarray, vectors: np.ndarray,
                 query_words: np.ndarray, query_vectors: np.ndarray, alpha: float, tau: float,
                 num_items: int) -> np.ndarray:
    """Unnormalized ASMK scores of every item: (N,) float64.

    Args:
        offsets, ids, query_words, num_items: as :func:`binary_scores`.
        vectors: (P, D) float32 residual vectors of the postings.
        query_vectors: (Q, D) float32 the query's.
        alpha, tau: the selectivity ``sign(u) |u|**alpha`` where ``u > tau``, else 0.
    """
    if not AVAILABLE:
        raise RuntimeError(_REASON)
    from d2r.index._numba_kernels import inverted_float_scores

    alpha = float(alpha)
    int_alpha = int(alpha) if alpha.is_integer() and 1 <= alpha <= 16 else 0
    return inverted_float_scores(offsets, ids, vectors, query_words,
                                 np.ascontiguousarray(query_vectors, dtype=np.float32),
                                 alpha, int_alpha, float(tau), int(num_items), threads())


def normalized_top_k(scores: np.ndarray, factors: np.ndarray, divisor: float,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` <= N items of ``scores`` (N,) float64 normalized as the numpy path
    does (``scores * (factors / divisor)``; ``factors`` empty: ``scores / divisor``;
    ``divisor`` 0: as they are), in one pass with a k-entry heap: (k,) float64 values
    and (k,) int64 ids, by value then lower id (:func:`d2r.index.topk.top_k_exact`)."""
    if not AVAILABLE:
        raise RuntimeError(_REASON)
    from d2r.index._numba_kernels import normalized_top_k as kernel

    return kernel(scores, factors, float(divisor), int(k))
