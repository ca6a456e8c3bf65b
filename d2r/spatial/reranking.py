"""Re-ranking the head of a ranking by spatial verification.

The rule (:func:`rerank` for one query, :func:`rerank_batch` for Q sharing a thread pool):
among the top ``top_n`` candidates, the verified ones (:func:`d2r.spatial.ransac.verify_pair`)
come first, by score (``decision="nfa"``) or inlier count (``"inliers"``), ties by inliers,
then higher initial score, then initial position; then the other top-``top_n`` candidates,
under ``nfa`` by inlier count (too few to verify, they still say more than the search score:
+1.3 Medium / +5.3 Hard mAP on the synthetic benchmark, docs/benchmarks.md), ties by initial
score, then position, and under ``inliers`` (the earlier rule, kept as it was) in their
initial order; then every candidate after ``top_n`` unchanged.  A ranking is (K,) ids and
scores per query, -1 padding at the end; the result is a :class:`RerankResult` of the same
length, and :func:`stack_results` stacks Q of them into a (Q, K)
:class:`~d2r.types.SearchResult`.  :func:`rerank_options` reads the keyword options from the
``verification`` config section.

Re-ranking knows nothing of the evaluation: junk images are verified like any other candidate
(the revisitop evaluation ignores them on its own).  Candidate features come from memory — a
sequence or a callable backed by an already opened store — and are fetched once per (query,
candidate), never re-read from files by this module.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np

from d2r.config import VerificationConfig
from d2r.progress import track
from d2r.spatial.checks import check_count, check_features
from d2r.spatial.ransac import METHODS, Verification, verify_pair
from d2r.spatial.score import DECISIONS, QueryPoints, use_compiled
from d2r.types import LocalFeatures, SearchResult

__all__ = ["RerankResult", "rerank", "rerank_batch", "rerank_options", "stack_results"]

logger = logging.getLogger(__name__)

FeatureSource = Union[Callable[[int], LocalFeatures], Sequence[LocalFeatures]]
Candidates = Union[SearchResult, tuple]

_DEFAULTS = VerificationConfig()


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
            return check_features(source(i), f"features({i})")

        return fetch
    if isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
        seq = features

        def fetch(i: int) -> LocalFeatures:
            if i >= len(seq):
                raise IndexError(f"candidate id {i} outside features (length {len(seq)})")
            return check_features(seq[i], f"features[{i}]")

        return fetch
    raise TypeError(
        "features must be a sequence of LocalFeatures or a callable id -> LocalFeatures, "
        f"got {type(features).__name__}"
    )


def _rerank_order(scores: np.ndarray, inliers: np.ndarray, strength: np.ndarray,
                  verified: np.ndarray, *, rest_by_inliers: bool) -> np.ndarray:
    """(K,) int64 permutation of the initial positions implementing the re-ranking rule.

    ``scores`` (K,) initial scores; ``inliers``, ``strength`` (the sort key: verification
    score or inliers) and ``verified`` (num_top,) for the checked head; ``rest_by_inliers``:
    the unverified part of the head by inliers (else in its initial order)."""
    k, num_top = scores.shape[0], verified.shape[0]
    top = np.arange(num_top)
    chosen, rest = top[verified], top[~verified]
    # lexsort: last key is primary — strength, then inliers, then initial score, then position.
    first = chosen[np.lexsort((chosen, -scores[chosen], -inliers[chosen], -strength[chosen]))]
    if rest_by_inliers:
        rest = rest[np.lexsort((rest, -scores[rest], -inliers[rest]))]
    return np.concatenate([first, rest, np.arange(num_top, k)]).astype(np.int64)


def _checked(ids: np.ndarray, top_n: int) -> int:
    """How many leading candidates of ``ids`` (-1 padded) are verified."""
    return min(top_n, int(np.count_nonzero(ids >= 0)))


def _verify_candidates(
    query: LocalFeatures,
    db_features: list[LocalFeatures],
    executor: Executor | None,
    pair_options: dict,
    compiled: bool,
) -> list[Verification]:
    points = QueryPoints(query.locations, compiled=compiled)  # one per query, read-only

    def one(db: LocalFeatures) -> Verification:
        return verify_pair(query, db, query_points=points, **pair_options)

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
    compiled: bool,
) -> RerankResult:
    num_top = _checked(ids, top_n)
    db_features = [fetch(int(i)) for i in ids[:num_top]]
    results = _verify_candidates(query, db_features, executor,
                                 {**pair_options, "min_inliers": min_inliers}, compiled)
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
                          verified[:num_top], rest_by_inliers=not by_inliers)
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
    top_n = check_count(top_n, "top_n", 0)
    min_inliers = check_count(min_inliers, "min_inliers", 1)
    workers = check_count(workers, "workers", 1)
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
    then initial position; the rest of the top ``top_n`` follow by inlier count, ties by
    initial score (``decision="inliers"``: in their initial order); candidates after
    ``top_n`` keep their positions.

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
    query = check_features(query, "query")
    ids, scores = _parse_candidates(candidates)
    top_n, min_inliers, workers = _options(top_n, min_inliers, workers, pair_options)
    fetch = _fetcher(features)
    compiled = use_compiled(_checked(ids, top_n))
    if workers == 1:
        return _rerank_one(query, ids, scores, fetch, top_n, min_inliers, None, pair_options,
                           compiled)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _rerank_one(query, ids, scores, fetch, top_n, min_inliers, pool, pair_options,
                           compiled)


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
        (check_features(q, f"queries[{i}]"), *_parse_candidates((all_ids[i], all_scores[i])))
        for i, q in enumerate(queries)
    ]
    compiled = use_compiled(sum(_checked(ids, top_n) for _, ids, _ in rows))
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        return [
            _rerank_one(q, ids, scores, fetch, top_n, min_inliers, pool, pair_options, compiled)
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
