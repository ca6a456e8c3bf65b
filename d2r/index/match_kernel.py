"""The selective match kernel of the inverted file: per-posting weights sigma(u).

For postings of one visual word, ``u`` is the similarity of the query's and the item's
aggregated residuals and sigma(u) = sign(u) |u|^alpha where u > tau, else 0 (the
:func:`~d2r.encoding.aggregation.selectivity` of the aggregation module):

* packed D-bit sign codes (ASMK*): rows (P, ceil(D/8)) uint8; u = 1 - 2h/D depends only on
  the Hamming distance h, so sigma is a table over h (:func:`sigma_by_distance`,
  :func:`code_kernel`) looked up with the popcounts of XORed codes (:func:`code_weights`);
* float vectors (ASMK): u (P,) from dot products, sigma by :func:`vector_selectivity`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from d2r.encoding.aggregation import selectivity

__all__ = ["CodeKernel", "code_kernel", "code_weights", "sigma_by_distance",
           "vector_selectivity"]


def _code_view_dtype(width: int) -> np.dtype:
    """Widest unsigned integer whose size divides the packed-code row width (for XOR + popcount)."""
    for dtype in (np.uint64, np.uint32, np.uint16):
        if width % np.dtype(dtype).itemsize == 0:
            return np.dtype(dtype)
    return np.dtype(np.uint8)


class CodeKernel(NamedTuple):
    """How :func:`code_weights` maps XORed D-bit codes to sigma(1 - 2h/D) (:func:`code_kernel`)."""

    dim: int
    view: np.dtype
    table: np.ndarray
    paired: bool


def sigma_by_distance(dim: int, *, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """sigma(1 - 2h/D) for the Hamming distances h = 0..8 ceil(D/8) of packed D-bit codes:
    (8 ceil(D/8) + 1,) float64, computed by :func:`~d2r.encoding.aggregation.selectivity` itself."""
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    # h up to 8 * width: padding bits are 0 in packed codes; set ones count, as in similarity
    h = np.arange(8 * ((dim + 7) // 8) + 1)
    return selectivity(1.0 - 2.0 * h / dim, alpha=float(alpha), tau=float(tau))


def code_kernel(dim: int, *, alpha: float = 3.0, tau: float = 0.0) -> CodeKernel:
    """Lookup tables for the selectivity of packed D-bit sign codes.

    For codes, u = 1 - 2h/D depends only on the integer Hamming distance h, so sigma(u) is a
    table over h = 0..8 ceil(D/8) computed with :func:`~d2r.encoding.aggregation.selectivity` itself
    (lookups are bit-identical to it).  Codes are XORed as the widest unsigned words that
    divide the row width (``view``).  When a row is exactly two such words (D in 121..128,
    64-bit words), the two per-word popcounts, read together as one uint16
    ``c0 + 256 c1``, index a 16449-entry table of sigma(c0 + c1) directly (``paired``):
    no per-column sum, one lookup.
    """
    dim = int(dim)
    width = (dim + 7) // 8
    view = _code_view_dtype(width)
    sigma = sigma_by_distance(dim, alpha=alpha, tau=tau)
    paired = width == 2 * view.itemsize
    if paired:
        bits = 8 * view.itemsize
        key = np.arange(256 * bits + bits + 1)
        # both popcounts are <= bits; keys whose low byte exceeds bits never occur (clipped)
        sigma = sigma[np.minimum(key & 255, bits) + (key >> 8)]
    return CodeKernel(dim, view, sigma, paired)


def code_weights(xor: np.ndarray, kernel: CodeKernel) -> np.ndarray:
    """sigma(1 - 2h/D) of XORed packed codes: (n, cols) ``kernel.view`` -> (n,) float64.

    ``xor`` is the XOR of query and database codes viewed as ``kernel.view`` words; ``h``
    is its popcount (``np.bitwise_count``), looked up in ``kernel.table``.
    """
    counts = np.bitwise_count(xor)  # (n, cols) uint8
    if kernel.paired:
        keys = counts.view(np.uint16).reshape(-1)
    elif counts.shape[1] == 1:
        keys = counts.reshape(-1)
    else:
        keys = counts[:, 0].astype(np.uint16 if kernel.table.shape[0] <= 1 << 16 else np.int64)
        for col in range(1, counts.shape[1]):
            keys += counts[:, col]
    return kernel.table.take(keys, mode="wrap")


def vector_selectivity(u: np.ndarray, *, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """:func:`~d2r.encoding.aggregation.selectivity` of float similarities, up to rounding: float64.

    ``sign(u) |u|**alpha`` where ``u > tau``, else 0.  For an integer ``alpha`` in 1..16
    (ASMK's 3), a few branch-free passes: the threshold zeroes the base (``max(u, 0)``, or
    ``|u|`` times the mask when tau < 0), the power is taken by repeated squaring (a few
    ulp from the libm ``pow`` that ``selectivity`` calls per element) and ``copysign``
    restores the sign; about 5x faster than ``selectivity`` (whose ``np.where`` and ``pow``
    dominate float ASMK search).  Other alphas defer to ``selectivity``.
    """
    u = np.asarray(u, dtype=np.float64)
    alpha, tau = float(alpha), float(tau)
    if not (alpha.is_integer() and 1 <= alpha <= 16):
        return selectivity(u, alpha=alpha, tau=tau)
    if tau >= 0:
        base = np.maximum(u, 0.0)
        if tau > 0:
            base *= u > tau
    else:
        base = np.abs(u)
        base *= u > tau
    e, power, square = int(alpha), None, base
    while True:
        if e & 1:
            power = square.copy() if power is None else np.multiply(power, square, out=power)
        e >>= 1
        if not e:
            break
        square = square * square
    if tau < 0:
        np.copysign(power, u, out=power)
    return power
