"""Aggregation kernels (VLAD, ASMK, ASMK*, and their regional variants) and their similarity.

Every descriptor is assigned to its ``num_assignments`` nearest visual words
and contributes its unweighted residual ``x - c_w`` to each of them.  With
``V_w(X)`` the residual sum of word ``w`` over descriptor set ``X`` and
``V(X)`` the concatenation over all K words:

* ``vlad``: ``V(X) / ||V(X)||``, all K words (zero rows included).
* ``asmk``: ``V_w(X) / ||V_w(X)||`` per word; words whose residual sum
  vanishes (norm <= 1e-6) are dropped.
* ``asmk_star``: the ``asmk`` vectors binarised (bit 1 where > 0) and packed
  with ``np.packbits(axis=1)``.

Regional variants (Detect-to-Retrieve, Eq. 8-9) take a list of R regions
(the whole image being one of them) and average per-region terms over R;
an empty region adds nothing but counts in R:

* ``r_vlad``: mean over regions of ``V(X_r) / ||V(X_r)||``, then L2 over the
  whole vector.
* ``r_asmk``: mean over regions of ``V_w(X_r) / ||V(X_r)||`` (each region's
  residual sums weighted by its VLAD normalisation), then per-word L2
  normalisation, vanished words dropped; ``r_asmk_star`` binarises it.
* ``naive_r_asmk``: mean over regions of the per-word normalised
  ``V_w(X_r) / ||V_w(X_r)||``, then per-word normalisation.

Empty input: VLAD kinds give all K words with zero vectors (similarity 0 to
anything); ASMK kinds give an image without words.  These match the DELF
reference (``feature_aggregation_extractor.py``), including its tolerance.

Similarity: VLAD kinds score the dot product of the full vectors.  The ASMK
family scores ``sum_w sigma(u_w)`` over the words both images share, with
``u_w`` the dot product of their word vectors (binary: ``1 - 2 h / D`` for
Hamming distance ``h``) and the selectivity
``sigma(u) = sign(u) |u|**alpha`` if ``u > tau`` else 0, divided by
``sqrt(|W_a| |W_b|)`` (``normalize="both"``, the ASMK self-similarity of
unit word vectors), by ``sqrt(|W_a|)`` only (``normalize="query"``: the
database image is not normalised, as the paper's Eq. 9 and the reference do
for R-ASMK databases; it ranks like no normalisation), or not at all.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np

from d2r.encoding.codebook import Codebook, quantize
from d2r.types import AggregatedImage

__all__ = [
    "METHODS",
    "REGIONAL_METHODS",
    "VLAD_METHODS",
    "NORM_TOLERANCE",
    "normalization_factors",
    "aggregate",
    "aggregate_regions",
    "binarize",
    "check_normalize",
    "selectivity",
    "shared_words",
    "word_similarities",
    "self_similarity",
    "similarity",
    "similarity_matrix",
]

METHODS = ("vlad", "asmk", "asmk_star")
REGIONAL_METHODS = ("r_vlad", "naive_r_asmk", "r_asmk", "r_asmk_star")
VLAD_METHODS = ("vlad", "r_vlad")
NORM_TOLERANCE = 1e-6
"""Norms at or below this are zero (the reference's squared tolerance 1e-12)."""

Normalize = Literal["both", "query", "none"]


def _as_codebook(centroids: Union[Codebook, np.ndarray]) -> Codebook:
    return centroids if isinstance(centroids, Codebook) else Codebook(centroids, source="array")


def _check_descriptors(descriptors, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(descriptors)
    if arr.size == 0:
        return np.zeros((0, dim), np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}) to match the codebook, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def _check_assignments(assignments, n: int, num_words: int, name: str) -> np.ndarray:
    """(n, k) int64 word ids; any assignments of zero descriptors become (0, 1)."""
    arr = np.asarray(assignments)
    if n == 0 and arr.size == 0:
        return np.zeros((0, 1), np.int64)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1 or arr.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be an integer array of shape ({n}, k), got {arr.dtype} {arr.shape}"
        )
    if np.any(arr < 0) or np.any(arr >= num_words):
        raise ValueError(f"{name} holds word ids outside [0, {num_words})")
    return arr.astype(np.int64)


def _sum_by_key(keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique sorted keys (P,) and the sums of ``rows`` (M, D) sharing each key (P, D)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if sorted_keys.size == 0:
        return sorted_keys, np.zeros((0, rows.shape[1]), rows.dtype)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[starts], np.add.reduceat(rows[order], starts, axis=0)


def _residual_sums(
    descriptors: np.ndarray,
    centroids: np.ndarray,
    words: np.ndarray,
    groups: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Residual sums per (group, word).

    Args:
        descriptors: (N, D) float32; centroids: (K, D) float32.
        words: (N, k) int64 assigned words; groups: (N,) int64 region of each descriptor.

    Returns:
        keys: (P,) int64 sorted ``group * K + word``; sums: (P, D) float64.
    """
    n, k = words.shape
    flat_words = words.reshape(-1)
    rows = np.repeat(np.arange(n), k)
    residuals = descriptors[rows].astype(np.float64) - centroids[flat_words]
    return _sum_by_key(groups[rows] * centroids.shape[0] + flat_words, residuals)


def _row_norms(rows: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def _dense_l2(words: np.ndarray, sums: np.ndarray, num_words: int) -> AggregatedImage:
    """All K words: scatter ``sums`` rows to ``words`` and L2-normalise the whole."""
    dense = np.zeros((num_words, sums.shape[1]), np.float64)
    dense[words] = sums
    dense /= max(float(np.sqrt(np.sum(dense * dense))), NORM_TOLERANCE)
    return AggregatedImage(np.arange(num_words, dtype=np.int32), dense.astype(np.float32), sums.shape[1])


def _per_word_l2(words: np.ndarray, sums: np.ndarray, binary: bool) -> AggregatedImage:
    """Per-word L2 normalisation, dropping vanished words, optionally binarised."""
    norms = _row_norms(sums)
    keep = norms > NORM_TOLERANCE
    vectors = (sums[keep] / norms[keep, None]).astype(np.float32)
    image = AggregatedImage(words[keep].astype(np.int32), vectors, sums.shape[1])
    return binarize(image) if binary else image


def binarize(image: AggregatedImage) -> AggregatedImage:
    """Sign bits of ``image``'s word vectors (1 where > 0), packed big-endian: (W, ceil(D/8)) uint8."""
    if image.binary:
        raise ValueError("image is already binary")
    return AggregatedImage(image.words, np.packbits(image.vectors > 0, axis=1), image.dim, binary=True)


def aggregate(
    descriptors: np.ndarray,
    centroids: Union[Codebook, np.ndarray],
    method: str,
    *,
    num_assignments: int = 1,
    assignments: Optional[np.ndarray] = None,
) -> AggregatedImage:
    """Aggregate one image's descriptors.

    Args:
        descriptors: (N, D) float32 local descriptors (N may be 0).
        centroids: the :class:`Codebook` (its quantizer is cached) or (K, D) float32.
        method: ``"vlad"``, ``"asmk"`` or ``"asmk_star"``.
        num_assignments: k nearest words per descriptor (exact quantization).
        assignments: optional precomputed (N, k) int word ids, e.g. from
            ``quantize(..., mode="approximate")``; overrides ``num_assignments``.

    Returns:
        the :class:`AggregatedImage` (binary for ``asmk_star``).
    """
    if method not in METHODS:
        raise ValueError(
            f"method must be one of {METHODS} (regional: aggregate_regions), got {method!r}"
        )
    codebook = _as_codebook(centroids)
    x = _check_descriptors(descriptors, codebook.dim, "descriptors")
    if assignments is None:
        words = quantize(x, codebook, num_assignments=num_assignments)[0]
    else:
        words = _check_assignments(assignments, x.shape[0], codebook.num_words, "assignments")
    keys, sums = _residual_sums(x, codebook.centroids, words, np.zeros(x.shape[0], np.int64))
    if method == "vlad":
        return _dense_l2(keys, sums, codebook.num_words)
    return _per_word_l2(keys, sums, binary=method == "asmk_star")


def aggregate_regions(
    region_descriptors: Sequence[np.ndarray],
    centroids: Union[Codebook, np.ndarray],
    method: str,
    *,
    num_assignments: int = 1,
    assignments: Optional[Sequence[np.ndarray]] = None,
) -> AggregatedImage:
    """Aggregate an image from its regions (the whole image is one of them).

    Args:
        region_descriptors: R arrays, one (n_r, D) float32 per region; n_r
            may be 0 (the region counts in R and adds nothing).
        centroids: the :class:`Codebook` or (K, D) float32.
        method: ``"r_vlad"``, ``"naive_r_asmk"``, ``"r_asmk"`` or ``"r_asmk_star"``.
        num_assignments: k nearest words per descriptor (exact quantization).
        assignments: optional precomputed (n_r, k) int word ids per region.

    Returns:
        the :class:`AggregatedImage` (binary for ``r_asmk_star``).
    """
    if method not in REGIONAL_METHODS:
        raise ValueError(
            f"method must be one of {REGIONAL_METHODS} (single image: aggregate), got {method!r}"
        )
    if isinstance(region_descriptors, np.ndarray):
        raise ValueError("region_descriptors must be a sequence of (n_r, D) arrays, one per region")
    codebook = _as_codebook(centroids)
    num_words, dim = codebook.num_words, codebook.dim
    regions = [
        _check_descriptors(r, dim, f"region_descriptors[{i}]")
        for i, r in enumerate(region_descriptors)
    ]
    num_regions = len(regions)
    if num_regions == 0:
        if method == "r_vlad":
            return _dense_l2(np.zeros(0, np.int64), np.zeros((0, dim)), num_words)
        return AggregatedImage.empty(dim, binary=method == "r_asmk_star")
    x = np.concatenate(regions, axis=0)
    groups = np.repeat(np.arange(num_regions, dtype=np.int64), [r.shape[0] for r in regions])
    if assignments is None:
        words = quantize(x, codebook, num_assignments=num_assignments)[0]
    else:
        if len(assignments) != num_regions:
            raise ValueError(
                f"assignments has {len(assignments)} entries, region_descriptors {num_regions}"
            )
        checked = [
            _check_assignments(a, r.shape[0], num_words, f"assignments[{i}]")
            for i, (a, r) in enumerate(zip(assignments, regions))
        ]
        ks = {w.shape[1] for w in checked if w.shape[0]}
        if len(ks) > 1:
            raise ValueError(
                f"assignments must have the same number of columns k in every region, got {sorted(ks)}"
            )
        k = ks.pop() if ks else 1
        words = np.concatenate(
            [w if w.shape[0] else np.zeros((0, k), np.int64) for w in checked], axis=0
        )
    keys, sums = _residual_sums(x, codebook.centroids, words, groups)
    region_of, word_of = np.divmod(keys, num_words)
    if method == "naive_r_asmk":
        norms = _row_norms(sums)
        scale = np.where(norms > NORM_TOLERANCE, 1.0 / np.maximum(norms, NORM_TOLERANCE), 0.0)
    else:
        region_sq = np.bincount(
            region_of, weights=np.einsum("ij,ij->i", sums, sums), minlength=num_regions
        )
        scale = 1.0 / np.maximum(np.sqrt(region_sq), NORM_TOLERANCE)[region_of]
    words_out, pooled = _sum_by_key(word_of, sums * scale[:, None])
    pooled /= num_regions
    if method == "r_vlad":
        return _dense_l2(words_out, pooled, num_words)
    return _per_word_l2(words_out, pooled, binary=method == "r_asmk_star")


def selectivity(u: np.ndarray, *, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """ASMK selectivity ``sign(u) |u|**alpha`` where ``u > tau``, else 0; float64, shape of ``u``."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** float(alpha), 0.0)


def shared_words(a: AggregatedImage, b: AggregatedImage) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (S,), (S,) int64 into ``a`` and ``b`` of the words both contain, by word."""
    _, ia, ib = np.intersect1d(a.words, b.words, assume_unique=True, return_indices=True)
    return ia.astype(np.int64), ib.astype(np.int64)


def word_similarities(
    a_vectors: np.ndarray, b_vectors: np.ndarray, *, dim: int, binary: bool = False
) -> np.ndarray:
    """Row-wise similarity ``u`` of paired word vectors.

    Args:
        a_vectors, b_vectors: (M, D) float32, or (M, ceil(D/8)) uint8 packed
            sign bits when ``binary``.
        dim: descriptor dimension D.
        binary: packed sign bits.

    Returns:
        (M,) float64: dot products, or ``1 - 2 h / D`` with ``h`` the Hamming distance.
    """
    a, b = np.asarray(a_vectors), np.asarray(b_vectors)
    width = (dim + 7) // 8 if binary else dim
    dtype = np.uint8 if binary else np.float32
    for name, arr in (("a_vectors", a), ("b_vectors", b)):
        if arr.ndim != 2 or arr.shape[1] != width or arr.dtype != dtype:
            raise ValueError(
                f"{name} must be (M, {width}) {np.dtype(dtype)}, got {arr.dtype} {arr.shape}"
            )
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a_vectors has {a.shape[0]} rows, b_vectors {b.shape[0]}")
    if binary:
        hamming = np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=1, dtype=np.int64)
        return 1.0 - 2.0 * hamming / dim
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def _check_pair(a: AggregatedImage, b: AggregatedImage, method: str) -> bool:
    if method not in METHODS + REGIONAL_METHODS:
        raise ValueError(f"method must be one of {METHODS + REGIONAL_METHODS}, got {method!r}")
    if a.dim != b.dim or a.binary != b.binary:
        raise ValueError(
            f"images are not comparable: dim {a.dim} vs {b.dim}, binary {a.binary} vs {b.binary}"
        )
    if method in VLAD_METHODS:
        if a.binary:
            raise ValueError(f"method {method!r} needs float vectors, got binary images")
        return True
    return False


def check_normalize(normalize: Normalize) -> str:
    """``normalize`` checked: ``"both"``, ``"query"`` or ``"none"`` (no booleans: the config's
    ``aggregation.database_normalization`` true / false mean ``"both"`` / ``"query"``)."""
    if isinstance(normalize, str) and normalize in ("both", "query", "none"):
        return normalize
    raise ValueError(f"normalize must be 'both', 'query' or 'none', got {normalize!r}")


def normalization_factors(
    num_query_words: int, num_db_words: np.ndarray, *, normalize: Normalize = "both"
) -> np.ndarray:
    """Factors multiplying the raw ASMK sums of one query against N database images.

    Args:
        num_query_words: |W_a| of the query.
        num_db_words: (N,) |W_b| of each database image.
        normalize: ``"both"``: ``1 / sqrt(|W_a| |W_b|)``; ``"query"``:
            ``1 / sqrt(|W_a|)``; ``"none"``: 1.

    Returns:
        (N,) float64; 0 where a normalising side has no words (its raw sum is 0 anyway).
    """
    mode = check_normalize(normalize)
    num_db_words = np.asarray(num_db_words, dtype=np.float64).reshape(-1)
    if mode == "none":
        return np.ones_like(num_db_words)
    denom = float(num_query_words) * (num_db_words if mode == "both" else np.ones_like(num_db_words))
    return np.where(denom > 0, 1.0 / np.sqrt(np.maximum(denom, 1.0)), 0.0)


def self_similarity(image: AggregatedImage, *, alpha: float = 3.0, tau: float = 0.0) -> float:
    """ASMK self-similarity ``sum_w sigma(u_ww)`` (``len(image)`` for unit word vectors and tau < 1)."""
    u = word_similarities(image.vectors, image.vectors, dim=image.dim, binary=image.binary)
    return float(np.sum(selectivity(u, alpha=alpha, tau=tau)))


def similarity(
    a: AggregatedImage,
    b: AggregatedImage,
    *,
    method: str = "asmk",
    alpha: float = 3.0,
    tau: float = 0.0,
    normalize: Normalize = "both",
) -> float:
    """Similarity of query ``a`` and database image ``b`` (larger is more similar).

    Args:
        a, b: aggregated images of the same dimension and kind.
        method: the aggregation that made them; ``"vlad"``/``"r_vlad"``
            give the dot product of the full vectors (``alpha``, ``tau``,
            ``normalize`` unused), any ASMK kind the selective kernel.
        alpha, tau: selectivity exponent and threshold.
        normalize: ``"both"``: divide by ``sqrt(|W_a| |W_b|)``;
            ``"query"``: by ``sqrt(|W_a|)``; ``"none"``: raw sum.

    Returns:
        the score; 0.0 when the images share no word.
    """
    vlad = _check_pair(a, b, method)
    check_normalize(normalize)
    ia, ib = shared_words(a, b)
    u = word_similarities(a.vectors[ia], b.vectors[ib], dim=a.dim, binary=a.binary)
    if vlad:
        return float(np.sum(u))
    raw = float(np.sum(selectivity(u, alpha=alpha, tau=tau)))
    return raw * float(normalization_factors(len(a), [len(b)], normalize=normalize)[0])


def similarity_matrix(
    queries: Sequence[AggregatedImage],
    database: Sequence[AggregatedImage],
    *,
    method: str = "asmk",
    alpha: float = 3.0,
    tau: float = 0.0,
    normalize: Normalize = "both",
) -> np.ndarray:
    """Exhaustive ``similarity`` of every query against every database image.

    A reference for index tests: one vectorised pass per query over the
    concatenated database words.

    Returns:
        (Q, N) float32 scores.
    """
    check_normalize(normalize)
    scores = np.zeros((len(queries), len(database)), np.float32)
    if not len(queries) or not len(database):
        return scores
    for image in list(queries) + list(database):
        _check_pair(queries[0], image, method)
    vlad = method in VLAD_METHODS
    lengths = np.array([len(img) for img in database], dtype=np.int64)
    db_words = np.concatenate([img.words for img in database]).astype(np.int64)
    db_vectors = np.concatenate([img.vectors for img in database], axis=0)
    db_image = np.repeat(np.arange(len(database)), lengths)
    order = np.argsort(db_words, kind="stable")
    sorted_words = db_words[order]
    for qi, query in enumerate(queries):
        lo = np.searchsorted(sorted_words, query.words, side="left")
        hi = np.searchsorted(sorted_words, query.words, side="right")
        counts = hi - lo
        total = int(counts.sum())
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = order[np.repeat(lo, counts) + offsets]
        q_rows = np.repeat(np.arange(len(query)), counts)
        u = word_similarities(
            query.vectors[q_rows], db_vectors[rows], dim=query.dim, binary=query.binary
        )
        if vlad:
            scores[qi] = np.bincount(db_image[rows], weights=u, minlength=len(database))
        else:
            sigma = selectivity(u, alpha=alpha, tau=tau)
            raw = np.bincount(db_image[rows], weights=sigma, minlength=len(database))
            scores[qi] = raw * normalization_factors(len(query), lengths, normalize=normalize)
    return scores
