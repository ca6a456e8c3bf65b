"""Spatial verification: descriptor matching, affine RANSAC and re-ranking.

Pipeline for one (query, database image) pair:

1. :func:`match_descriptors` — putative matches: every query feature's nearest
   database feature (L2 on descriptors), kept when the distance is below
   ``descriptor_threshold`` (strict, as ``scipy.spatial.cKDTree``'s
   ``distance_upper_bound`` in the DELF reference), optionally passing Lowe's
   ratio test and a mutual nearest-neighbour check.
2. :func:`verify_pair` — an affine transform fitted by RANSAC to the matched
   locations, then the verification decision (:mod:`d2r.spatial.score`): the
   one-to-one inliers, their a-contrario score ``-log10 NFA`` and geometric sanity
   (``decision="nfa"``), or RANSAC's inlier count alone (``"inliers"``).  The model maps
   **database (x, y) to query (x, y)**, as in the DELF reference, so the
   residual threshold is in query pixels (one tolerance for every candidate of
   a query) and many query features matched to one database feature cannot all
   be inliers.  ``method="opencv"`` (``cv2.estimateAffine2D``, adaptive stop at
   ``confidence``, releases the GIL) is the fast path; ``method="skimage"``
   (``skimage.measure.ransac`` with ``AffineTransform``, all ``max_trials``
   iterations) reproduces the reference's procedure.
3. :func:`rerank` / :func:`rerank_batch` — the re-ranking rule: among the top
   ``top_n`` candidates, the verified ones come first, by score (``nfa``) or inlier
   count (``inliers``), ties by inliers, then higher initial score, then initial
   position; then the other top-``top_n`` candidates in their initial order; then
   every candidate after ``top_n`` unchanged.

Re-ranking knows nothing of the evaluation: junk images are verified like any
other candidate (the revisitop evaluation ignores them on its own).  Candidate
features come from memory — a sequence or a callable backed by an already
opened store — and are fetched once per (query, candidate), never re-read from
files by this module.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np

from d2r.config import VerificationConfig
from d2r.progress import track
from d2r.types import LocalFeatures, SearchResult
from d2r.spatial.score import DECISIONS, decide

__all__ = [
    "Verification",
    "RerankResult",
    "match_descriptors",
    "matched_locations",
    "verify_pair",
    "rerank",
    "rerank_batch",
    "stack_results",
    "rerank_options",
    "METHODS",
]

logger = logging.getLogger(__name__)

METHODS = ("opencv", "skimage", "usac")
"""Robust estimators accepted by :func:`verify_pair`: OpenCV's RANSAC, scikit-image's
RANSAC (the DELF reference's procedure) and OpenCV's USAC MAGSAC++."""

MODELS = ("affine", "similarity", "homography")
"""Geometric models accepted by :func:`verify_pair`."""

FeatureSource = Union[Callable[[int], LocalFeatures], Sequence[LocalFeatures]]
Candidates = Union[SearchResult, tuple]

_DEFAULTS = VerificationConfig()
_MAX_BLOCK = 1 << 22  # distance-matrix entries computed at once (16 MiB of float32)


@dataclass(frozen=True)
class Verification:
    """Result of verifying one (query, database image) pair.

    Attributes:
        num_matches: number of putative matches fed to RANSAC.
        num_inliers: inliers of the fitted model, one-to-one (``decision="nfa"``) or as
            RANSAC counts them (``"inliers"``); 0 when none was fitted.
        inlier_matches: (I, 2) int64 ``(query feature, database feature)`` indices.
        transform: float64 map from database (x, y) to query (x, y): (2, 3) affine or
            similarity, (3, 3) homography; None when no model was fitted.
        score: ``-log10`` of the number of false alarms (:mod:`d2r.spatial.score`);
            0.0 when no model was fitted.
        verified: whether the pair passes the decision.
        reason: why it does not ("" when verified).
    """

    num_matches: int
    num_inliers: int
    inlier_matches: np.ndarray
    transform: np.ndarray | None
    score: float
    verified: bool
    reason: str

    @classmethod
    def failed(cls, num_matches: int = 0, reason: str = "no model") -> "Verification":
        return cls(int(num_matches), 0, np.zeros((0, 2), np.int64), None, 0.0, False, reason)


@dataclass(frozen=True)
class RerankResult:
    """A query's candidate list after spatial verification, best first.

    Attributes:
        ids: (K,) int64 database ids in the new order; -1 padding stays last.
        scores: (K,) float32 initial scores of ``ids`` (not monotone after re-ranking).
        inliers: (K,) int32 inlier counts of ``ids``; -1 where not checked
            (beyond ``top_n`` or padding).
        order: (K,) int64 positions in the initial list: ``ids == initial_ids[order]``.
        matches: K (I, 2) int64 inlier ``(query feature, database feature)`` pairs,
            aligned with ``ids`` (empty where not checked).
        num_verified: how many candidates were checked (``min(top_n, valid K)``).
        verification_scores: (K,) float32 ``-log10 NFA`` of ``ids`` (NaN where not
            checked); None when the producer had no decision.
        verified: (K,) bool, the decision for ``ids`` (False where not checked); the
            verified candidates lead the list.  None when the producer had no decision.
    """

    ids: np.ndarray
    scores: np.ndarray
    inliers: np.ndarray
    order: np.ndarray
    matches: tuple[np.ndarray, ...]
    num_verified: int
    verification_scores: np.ndarray | None = None
    verified: np.ndarray | None = None


def _check_features(value: Any, what: str) -> LocalFeatures:
    if not isinstance(value, LocalFeatures):
        raise TypeError(f"{what} must be LocalFeatures, got {type(value).__name__}")
    return value


def _positive_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


def _count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
    query = _check_features(query, "query")
    db = _check_features(db, "db")
    if query.dim != db.dim:
        raise ValueError(
            f"descriptor dimensions differ: query has {query.dim}, db has {db.dim}"
        )
    threshold = _positive_number(descriptor_threshold, "descriptor_threshold")
    if ratio_test is not None:
        ratio = _positive_number(ratio_test, "ratio_test")
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
    pairs = _check_matches(matches, len(query), len(db))
    return query.locations[pairs[:, 0]], db.locations[pairs[:, 1]]


def _check_matches(matches: Any, n_query: int, n_db: int) -> np.ndarray:
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


def _ransac_opencv(src, dst, *, threshold, max_trials, confidence, seed, model="affine",
                   usac=False):
    import cv2

    cv2.setRNGSeed(int(seed))
    method = cv2.USAC_MAGSAC if usac else cv2.RANSAC
    options = dict(method=method, ransacReprojThreshold=threshold, maxIters=max_trials,
                   confidence=confidence)
    if model == "homography":
        if len(src) < 4:
            return None, None
        fitted, mask = cv2.findHomography(src, dst, **options)
    elif model == "similarity":
        fitted, mask = cv2.estimateAffinePartial2D(src, dst, **options)
    else:
        fitted, mask = cv2.estimateAffine2D(src, dst, **options)
    if fitted is None or mask is None:
        return None, None
    return fitted, mask.reshape(-1).astype(bool)


def _ransac_skimage(src, dst, *, threshold, max_trials, min_samples, seed):
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    model, mask = ransac(
        (src.astype(np.float64), dst.astype(np.float64)), AffineTransform,
        min_samples=min_samples, residual_threshold=threshold, max_trials=max_trials,
        rng=seed,
    )
    if model is None or mask is None:
        return None, None
    return np.asarray(model.params)[:2], np.asarray(mask, dtype=bool)


def verify_pair(
    query: LocalFeatures,
    db: LocalFeatures,
    *,
    matches: np.ndarray | None = None,
    descriptor_threshold: float = _DEFAULTS.descriptor_threshold,
    ratio_test: float | None = _DEFAULTS.ratio_test,
    mutual: bool = _DEFAULTS.mutual,
    ransac_threshold: float = _DEFAULTS.ransac_threshold,
    max_trials: int = _DEFAULTS.max_trials,
    min_samples: int = 3,
    confidence: float = 0.99,
    method: str = "opencv",
    model: str = "affine",
    relative_threshold: float | None = None,
    seed: int = 0,
    decision: str = _DEFAULTS.decision,
    min_inliers: int = _DEFAULTS.min_inliers,
    min_score: float = _DEFAULTS.min_score,
    max_scale_ratio: float = _DEFAULTS.max_scale_ratio,
    max_anisotropy: float = _DEFAULTS.max_anisotropy,
    allow_reflection: bool = _DEFAULTS.allow_reflection,
    min_spread: float = _DEFAULTS.min_spread,
) -> Verification:
    """Robust geometric verification (affine RANSAC by default) of a pair's putative matches.

    Args:
        query, db: features of the two images.
        matches: (P, 2) putative ``(query, database)`` index pairs; computed with
            :func:`match_descriptors` and the matching options when None.
        ransac_threshold: inlier residual in query pixels.
        max_trials: RANSAC iterations (OpenCV stops earlier once ``confidence``
            is reached; scikit-image runs them all, like the reference).
        min_samples: fewer putative matches than this give 0 inliers; also the
            scikit-image sample size (OpenCV always samples 3 points).
        confidence: OpenCV's early-stop confidence in (0, 1).
        method: ``"opencv"`` (RANSAC), ``"skimage"`` (RANSAC as the reference) or
            ``"usac"`` (OpenCV's MAGSAC++).
        model: ``"affine"``, ``"similarity"`` (OpenCV RANSAC only) or ``"homography"``
            (OpenCV methods).
        relative_threshold: when set, the inlier threshold is this fraction of the query
            image's diagonal instead of ``ransac_threshold`` pixels.
        seed: scikit-image's RNG seed; OpenCV's RANSAC draws from its own
            fixed-seed generator, so it is deterministic whatever the seed.
        decision: ``"nfa"`` (one-to-one inliers, score, sanity) or ``"inliers"`` (RANSAC's
            count >= ``min_inliers``); the other options are the ``verification`` config
            keys of the same names (:func:`d2r.spatial.score.decide`).

    Returns:
        A :class:`Verification`; a non-finite (degenerate) model counts as no model.
    """
    query = _check_features(query, "query")
    db = _check_features(db, "db")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    check_model(method, model)
    threshold = _positive_number(ransac_threshold, "ransac_threshold")
    if relative_threshold is not None:
        diagonal = float(np.hypot(*query.image_size))
        threshold = _positive_number(relative_threshold, "relative_threshold") * diagonal
    max_trials = _count(max_trials, "max_trials", 1)
    min_samples = _count(min_samples, "min_samples", 3)
    confidence = _positive_number(confidence, "confidence")
    if confidence >= 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if matches is None:
        pairs = match_descriptors(
            query, db, descriptor_threshold=descriptor_threshold,
            ratio_test=ratio_test, mutual=mutual,
        )
    else:
        pairs = _check_matches(matches, len(query), len(db))
    if pairs.shape[0] < min_samples:
        return Verification.failed(pairs.shape[0], "too few matches")
    dst = np.ascontiguousarray(query.locations[pairs[:, 0]])
    src = np.ascontiguousarray(db.locations[pairs[:, 1]])
    if method == "skimage":
        fitted, mask = _ransac_skimage(
            src, dst, threshold=threshold, max_trials=max_trials,
            min_samples=min_samples, seed=seed,
        )
    else:
        fitted, mask = _ransac_opencv(
            src, dst, threshold=threshold, max_trials=max_trials, confidence=confidence,
            seed=seed, model=model, usac=method == "usac",
        )
    if fitted is None or not np.all(np.isfinite(fitted)):
        return Verification.failed(pairs.shape[0])
    fitted = np.asarray(fitted, dtype=np.float64)
    inliers, score, reason = decide(
        pairs, dst, src, fitted, query.locations, tolerance=threshold, model=model,
        min_inliers=min_inliers, min_score=min_score, max_scale_ratio=max_scale_ratio,
        max_anisotropy=max_anisotropy, allow_reflection=allow_reflection,
        min_spread=min_spread,
    )
    if decision == "inliers":
        inliers = pairs[mask]
        reason = "" if inliers.shape[0] >= min_inliers else (
            f"{inliers.shape[0]} inliers < {min_inliers}")
    return Verification(
        num_matches=int(pairs.shape[0]),
        num_inliers=int(inliers.shape[0]),
        inlier_matches=inliers,
        transform=fitted,
        score=score,
        verified=not reason,
        reason=reason,
    )


def check_model(method: str, model: str) -> None:
    """Refuse a (method, model) pair no estimator here fits (ValueError naming both)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model != "affine" and method == "skimage":
        raise ValueError(f"the skimage method fits affine models only, not {model!r}")
    if model == "similarity" and method == "usac":
        raise ValueError("OpenCV's USAC does not fit similarity models; use model=affine or "
                         "homography, or method=opencv")


def _parse_candidates(candidates: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """(K,) int64 ids and (K,) float32 scores of one query's initial ranking."""
    if isinstance(candidates, SearchResult):
        if len(candidates) != 1:
            raise ValueError(
                f"candidates is a SearchResult with {len(candidates)} rows; "
                "pass one row or use rerank_batch"
            )
        ids, scores = candidates.ids[0], candidates.scores[0]
    elif isinstance(candidates, tuple) and len(candidates) == 2:
        ids, scores = candidates
    else:
        raise TypeError(
            "candidates must be a one-row SearchResult or an (ids, scores) tuple, "
            f"got {type(candidates).__name__}"
        )
    ids = np.asarray(ids)
    scores = np.asarray(scores, dtype=np.float32)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"candidate ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if scores.shape != ids.shape:
        raise ValueError(f"candidate scores {scores.shape} and ids {ids.shape} differ in shape")
    ids = ids.astype(np.int64)
    valid = ids >= 0
    num_valid = int(valid.sum())
    if np.any(ids < -1) or not np.all(valid[:num_valid]):
        raise ValueError("candidate ids must be >= 0, with -1 padding only at the end")
    return ids, scores


def _fetcher(features: FeatureSource) -> Callable[[int], LocalFeatures]:
    if callable(features):
        source = features

        def fetch(i: int) -> LocalFeatures:
            return _check_features(source(i), f"features({i})")

        return fetch
    if isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        seq = features

        def fetch(i: int) -> LocalFeatures:
            if i >= len(seq):
                raise IndexError(f"candidate id {i} outside features (length {len(seq)})")
            return _check_features(seq[i], f"features[{i}]")

        return fetch
    raise TypeError(
        "features must be a sequence of LocalFeatures or a callable id -> LocalFeatures, "
        f"got {type(features).__name__}"
    )


def _rerank_order(scores: np.ndarray, inliers: np.ndarray, strength: np.ndarray,
                  verified: np.ndarray) -> np.ndarray:
    """(K,) int64 permutation of the initial positions implementing the re-ranking rule.

    ``scores`` (K,) initial scores; ``inliers``, ``strength`` (the sort key: verification
    score or inliers) and ``verified`` (num_top,) for the checked head."""
    k, num_top = scores.shape[0], verified.shape[0]
    top = np.arange(num_top)
    chosen = top[verified]
    # lexsort: last key is primary — strength, then inliers, then initial score, then position.
    first = chosen[np.lexsort((chosen, -scores[chosen], -inliers[chosen], -strength[chosen]))]
    return np.concatenate([first, top[~verified], np.arange(num_top, k)]).astype(np.int64)


def _verify_candidates(
    query: LocalFeatures,
    db_features: list[LocalFeatures],
    executor: Executor | None,
    pair_options: dict,
) -> list[Verification]:
    def one(db: LocalFeatures) -> Verification:
        return verify_pair(query, db, **pair_options)

    if executor is None:
        return [one(db) for db in db_features]
    return list(executor.map(one, db_features))


def _rerank_one(
    query: LocalFeatures,
    ids: np.ndarray,
    scores: np.ndarray,
    fetch: Callable[[int], LocalFeatures],
    top_n: int,
    min_inliers: int,
    executor: Executor | None,
    pair_options: dict,
) -> RerankResult:
    num_top = min(top_n, int(np.count_nonzero(ids >= 0)))
    db_features = [fetch(int(i)) for i in ids[:num_top]]
    results = _verify_candidates(query, db_features, executor,
                                 {**pair_options, "min_inliers": min_inliers})
    k = ids.shape[0]
    inliers = np.full(k, -1, np.int32)
    inliers[:num_top] = [r.num_inliers for r in results]
    strength = np.full(k, np.nan, np.float32)
    strength[:num_top] = [r.score for r in results]
    verified = np.zeros(k, bool)
    verified[:num_top] = [r.verified for r in results]
    empty = np.zeros((0, 2), np.int64)
    matches = [r.inlier_matches for r in results] + [empty] * (k - num_top)
    by_inliers = pair_options.get("decision", _DEFAULTS.decision) == "inliers"
    order = _rerank_order(scores, inliers, inliers if by_inliers else strength,
                          verified[:num_top])
    logger.debug("checked %d candidates, %d verified", num_top, int(verified.sum()))
    new = [ids[order], scores[order], inliers[order], strength[order], verified[order], order]
    for array in new:
        array.flags.writeable = False
    return RerankResult(
        ids=new[0],
        scores=new[1],
        inliers=new[2],
        order=order,
        matches=tuple(matches[i] for i in order),
        num_verified=num_top,
        verification_scores=new[3],
        verified=new[4],
    )


def _options(top_n, min_inliers, workers, pair_options) -> tuple[int, int, int]:
    top_n = _count(top_n, "top_n", 0)
    min_inliers = _count(min_inliers, "min_inliers", 1)
    workers = _count(workers, "workers", 1)
    unknown = sorted(set(pair_options)
                     - (set(verify_pair.__kwdefaults__) - {"matches", "min_inliers"}))
    if unknown:
        raise TypeError(f"unknown verification options {unknown}")
    if pair_options.get("method", "opencv") not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {pair_options['method']!r}")
    if pair_options.get("decision", _DEFAULTS.decision) not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {pair_options['decision']!r}")
    return top_n, min_inliers, workers


def rerank(
    query: LocalFeatures,
    candidates: Candidates,
    features: FeatureSource,
    *,
    top_n: int = 100,
    min_inliers: int = _DEFAULTS.min_inliers,
    workers: int = 1,
    **pair_options: Any,
) -> RerankResult:
    """Re-rank one query's initial ranking by spatial verification.

    The rule: the top ``top_n`` candidates are checked; the verified ones (see
    :func:`verify_pair`'s ``decision``) move to the front, ordered by score
    (``decision="inliers"``: inlier count), ties by inliers, then higher initial score,
    then initial position; the rest of the top ``top_n`` follow in their initial order;
    candidates after ``top_n`` keep their positions.

    Args:
        query: the query's features.
        candidates: one-row :class:`~d2r.types.SearchResult` or ``(ids, scores)``,
            (K,) each, best first, -1 padding at the end.
        features: database features by id: a sequence, or a callable ``id ->
            LocalFeatures`` (called once per verified candidate, from the
            calling thread).
        top_n: how many leading candidates to verify (0: none).
        min_inliers: inliers needed to verify a candidate (a floor under the score).
        workers: threads verifying candidates in parallel (OpenCV and the
            numpy matching release the GIL).
        **pair_options: keyword options of :func:`verify_pair` (matching and
            RANSAC settings, ``method``, ``seed``).

    Returns:
        A :class:`RerankResult` of the same length K.
    """
    query = _check_features(query, "query")
    ids, scores = _parse_candidates(candidates)
    top_n, min_inliers, workers = _options(top_n, min_inliers, workers, pair_options)
    fetch = _fetcher(features)
    if workers == 1:
        return _rerank_one(query, ids, scores, fetch, top_n, min_inliers, None, pair_options)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _rerank_one(query, ids, scores, fetch, top_n, min_inliers, pool, pair_options)


def rerank_batch(
    queries: Sequence[LocalFeatures],
    ranking: Candidates,
    features: FeatureSource,
    *,
    top_n: int = 100,
    min_inliers: int = _DEFAULTS.min_inliers,
    workers: int = 1,
    **pair_options: Any,
) -> list[RerankResult]:
    """:func:`rerank` for Q queries sharing one thread pool.

    Args:
        queries: Q query features.
        ranking: a Q-row :class:`~d2r.types.SearchResult` or ``(ids, scores)``,
            (Q, K) each.
        features, top_n, min_inliers, workers, pair_options: as in :func:`rerank`.

    Returns:
        Q :class:`RerankResult`, one per query (see :func:`stack_results`).
    """
    if isinstance(ranking, SearchResult):
        all_ids, all_scores = ranking.ids, ranking.scores
    elif isinstance(ranking, tuple) and len(ranking) == 2:
        all_ids, all_scores = np.asarray(ranking[0]), np.asarray(ranking[1])
    else:
        raise TypeError(
            "ranking must be a SearchResult or an (ids, scores) tuple, "
            f"got {type(ranking).__name__}"
        )
    if all_ids.ndim != 2 or all_ids.shape != all_scores.shape:
        raise ValueError(
            f"ranking ids {all_ids.shape} and scores {all_scores.shape} must be equal (Q, K)"
        )
    if len(queries) != all_ids.shape[0]:
        raise ValueError(f"{len(queries)} queries but the ranking has {all_ids.shape[0]} rows")
    top_n, min_inliers, workers = _options(top_n, min_inliers, workers, pair_options)
    fetch = _fetcher(features)
    rows = [
        (_check_features(q, f"queries[{i}]"), *_parse_candidates((all_ids[i], all_scores[i])))
        for i, q in enumerate(queries)
    ]
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        return [
            _rerank_one(q, ids, scores, fetch, top_n, min_inliers, pool, pair_options)
            for q, ids, scores in track(rows, desc="re-rank", unit="query",
                                        show=None if len(rows) > 1 else False)
        ]
    finally:
        if pool is not None:
            pool.shutdown()


def stack_results(results: Sequence[RerankResult], names: Sequence[str] = ()) -> SearchResult:
    """Q equal-length re-ranked lists as a :class:`~d2r.types.SearchResult`.

    ``ids`` (Q, K) are in re-ranked order (feed them to the evaluation);
    ``scores`` are the initial scores in that order, so not monotone.
    """
    if not results:
        return SearchResult(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64), names)
    lengths = {r.ids.shape[0] for r in results}
    if len(lengths) != 1:
        raise ValueError(f"results have different lengths {sorted(lengths)}")
    return SearchResult(
        scores=np.stack([r.scores for r in results]),
        ids=np.stack([r.ids for r in results]),
        names=names,
    )


def rerank_options(config: VerificationConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`rerank` / :func:`rerank_batch` from the config section."""
    if not isinstance(config, VerificationConfig):
        raise TypeError(f"config must be a VerificationConfig, got {type(config).__name__}")
    return {
        "top_n": config.rerank,
        "min_inliers": config.min_inliers,
        "descriptor_threshold": config.descriptor_threshold,
        "ratio_test": config.ratio_test,
        "mutual": config.mutual,
        "ransac_threshold": config.ransac_threshold,
        "max_trials": config.max_trials,
        "method": config.method,
        "model": config.model,
        "relative_threshold": config.relative_threshold,
        "decision": config.decision,
        "min_score": config.min_score,
        "max_scale_ratio": config.max_scale_ratio,
        "max_anisotropy": config.max_anisotropy,
        "allow_reflection": config.allow_reflection,
        "min_spread": config.min_spread,
    }
