"""Retrieval metrics with the Revisited Oxford/Paris (revisitop) semantics.

``compute_map`` reproduces ``compute_map`` of the revisitop reference
evaluation exactly, including its less obvious details:

* junk images are removed by shifting the rank of every positive down by the
  number of junk images ranked strictly before it;
* AP is the trapezoidal area under the precision/recall curve
  (:func:`compute_ap`, identical to ``compute_ap.cpp`` of the original Oxford
  Buildings benchmark and to the Holidays evaluation package);
* positives missing from a (truncated) ranking contribute nothing to AP, but
  still count in its denominator;
* precision at k uses ``k' = min(k, rank of the last retrieved positive)``
  (1-based, after the junk shift) and divides by ``k'``;
* queries without positives get AP = NaN and a NaN precision row and are left
  out of the means.

One case the reference does not handle (it raises on ``max`` of an empty
array): a query with positives of which none appear in the ranking. Here its AP
is 0 and its precision at every k is 0.

Rankings are (n_queries, n_db) integer arrays of database indices, best first.
The revisitop layout (n_db, n_queries) is accepted with ``layout="revisitop"``.
Entries equal to -1 are padding (the faiss / :class:`~d2r.types.SearchResult`
convention) and never match an image; they are expected at the end of a row.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from d2r.types import SearchResult

__all__ = [
    "PROTOCOLS",
    "compute_ap",
    "compute_map",
    "protocol_gnd",
    "evaluate_protocols",
    "scores_to_ranks",
    "result_to_ranks",
]

logger = logging.getLogger(__name__)

PROTOCOLS = ("easy", "medium", "hard")
"""The Revisited Oxford/Paris evaluation setups, in reporting order."""

# protocol -> (fields whose union is positive, fields whose union is junk)
_PROTOCOL_FIELDS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}

_LAYOUTS = ("queries_first", "revisitop")


def compute_ap(ranks_of_positives, n_positives: int) -> float:
    """Average precision from the ranks of the retrieved positives.

    Args:
        ranks_of_positives: (P,) int, 0-based ranks (after junk removal) of the
            positives found in the ranking, in increasing order.
        n_positives: total number of positives of the query (> 0), including
            those missing from the ranking.

    Returns:
        The trapezoidal AP in [0, 1].
    """
    ranks = np.asarray(ranks_of_positives)
    if ranks.ndim != 1:
        raise ValueError(f"ranks_of_positives must be 1-D, got shape {ranks.shape}")
    if ranks.size and ranks.dtype.kind not in "iu":
        raise TypeError(f"ranks_of_positives must be integers, got dtype {ranks.dtype}")
    n_positives = int(n_positives)
    if n_positives <= 0:
        raise ValueError(f"n_positives must be positive, got {n_positives}")
    if ranks.size > n_positives:
        raise ValueError(
            f"{ranks.size} ranked positives exceed n_positives={n_positives}"
        )
    if ranks.size == 0:
        return 0.0
    if ranks[0] < 0 or np.any(np.diff(ranks) <= 0):
        raise ValueError("ranks_of_positives must be non-negative and strictly increasing")
    ranks = ranks.astype(np.float64)
    found_before = np.arange(ranks.size, dtype=np.float64)
    precision_before = np.divide(
        found_before, ranks, out=np.ones_like(ranks), where=ranks > 0
    )
    precision_after = (found_before + 1.0) / (ranks + 1.0)
    return float(np.sum(precision_before + precision_after) / (2.0 * n_positives))


def compute_map(
    ranks,
    gnd: Sequence[Mapping[str, Any]],
    kappas: Sequence[int] = (1, 5, 10),
    *,
    layout: str = "queries_first",
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Mean average precision and mean precision at k (revisitop semantics).

    Args:
        ranks: (Q, N) int database indices, best first (``layout="queries_first"``),
            or (N, Q) with ``layout="revisitop"``. -1 marks padding.
        gnd: Q mappings, each with ``"ok"`` (positive indices) and optionally
            ``"junk"`` (ignored indices); lists or integer arrays.
        kappas: the k of precision at k, positive integers.
        layout: ``"queries_first"`` or ``"revisitop"``; never guessed.

    Returns:
        ``(mAP, aps, mP, P)``: mAP float; aps (Q,) float64 with NaN for queries
        without positives; mP (len(kappas),) float64; P (Q, len(kappas)) float64
        with NaN rows for queries without positives. All values are fractions in
        [0, 1]; the means are NaN when no query has positives.
    """
    ranks = _as_query_rows(ranks, layout)
    n_queries = ranks.shape[0]
    kappa_arr = _check_kappas(kappas)
    if len(gnd) != n_queries:
        raise ValueError(
            f"gnd has {len(gnd)} entries but the ranking has {n_queries} queries"
        )

    aps = np.full(n_queries, np.nan)
    prs = np.full((n_queries, kappa_arr.size), np.nan)
    for q in range(n_queries):
        positives = _index_array(gnd[q], "ok", q, required=True)
        if positives.size == 0:
            continue
        junk = _index_array(gnd[q], "junk", q, required=False)
        both = np.intersect1d(positives, junk)
        if both.size:
            raise ValueError(
                f"ground truth of query {q} lists images {both[:5].tolist()} as both ok and junk"
            )
        row = ranks[q]
        _check_unique(row, q)
        pos = np.flatnonzero(np.isin(row, positives))
        junk_pos = np.flatnonzero(np.isin(row, junk))
        # Each positive moves up by the number of junk images strictly before it.
        pos = pos - np.searchsorted(junk_pos, pos, side="left")
        aps[q] = compute_ap(pos, positives.size)
        if pos.size == 0:
            prs[q] = 0.0
            continue
        one_based = pos + 1
        kq = np.minimum(one_based[-1], kappa_arr)
        prs[q] = (one_based[None, :] <= kq[:, None]).sum(axis=1) / kq

    evaluated = ~np.isnan(aps)
    n_evaluated = int(evaluated.sum())
    if n_evaluated < n_queries:
        logger.info(
            "%d of %d queries have no positives and are excluded from the means",
            n_queries - n_evaluated,
            n_queries,
        )
    if n_evaluated == 0:
        logger.warning("no query has positives: mAP and mP@k are NaN")
        return float("nan"), aps, np.full(kappa_arr.size, np.nan), prs
    mean_ap = float(aps[evaluated].mean())
    mean_pr = prs[evaluated].mean(axis=0)
    return mean_ap, aps, mean_pr, prs


def protocol_gnd(gnd: Sequence[Any], protocol: str) -> list[dict[str, np.ndarray]]:
    """Positive/junk lists of one Revisited protocol.

    Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk.
    Hard: ok = hard, junk = junk + easy.

    Args:
        gnd: per-query ground truth with ``easy``, ``hard`` and ``junk`` index
            lists, as mappings (the official ``gnd`` dicts) or objects with those
            attributes (:class:`d2r.datasets.revisited.GroundTruth`).
        protocol: ``"easy"``, ``"medium"`` or ``"hard"``.

    Returns:
        One ``{"ok": (P,) int64, "junk": (J,) int64}`` dict per query.
    """
    if protocol not in _PROTOCOL_FIELDS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    ok_fields, junk_fields = _PROTOCOL_FIELDS[protocol]
    out = []
    for q, entry in enumerate(gnd):
        ok = [_index_array(entry, f, q, required=True) for f in ok_fields]
        junk = [_index_array(entry, f, q, required=True) for f in junk_fields]
        out.append({"ok": np.concatenate(ok), "junk": np.concatenate(junk)})
    return out


def evaluate_protocols(
    ranks,
    gnd: Sequence[Any],
    kappas: Sequence[int] = (1, 5, 10),
    *,
    layout: str = "queries_first",
) -> dict[str, dict[str, float]]:
    """mAP and mP@k of the Easy, Medium and Hard protocols, in percent.

    Args:
        ranks: (Q, N) int database indices, best first (see :func:`compute_map`).
        gnd: per-query ``easy`` / ``hard`` / ``junk`` (see :func:`protocol_gnd`).
        kappas: the k of precision at k.
        layout: as in :func:`compute_map`.

    Returns:
        ``{"easy": {"mAP": .., "mP@1": .., ...}, "medium": {...}, "hard": {...}}``,
        every value in percent (NaN when no query has positives).
    """
    kappa_arr = _check_kappas(kappas)
    ranks = _as_query_rows(ranks, layout)
    metrics: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        mean_ap, _, mean_pr, _ = compute_map(ranks, protocol_gnd(gnd, protocol), kappa_arr)
        entry = {"mAP": 100.0 * mean_ap}
        for k, p in zip(kappa_arr.tolist(), mean_pr.tolist()):
            entry[f"mP@{k}"] = 100.0 * p
        metrics[protocol] = entry
    return metrics


def scores_to_ranks(scores) -> np.ndarray:
    """Full rankings from a similarity matrix.

    Args:
        scores: (Q, N) similarities, higher is better. NaN ranks last.

    Returns:
        (Q, N) int64 database indices sorted by descending score; ties keep the
        lower index first (stable).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (Q, N) matrix, got shape {scores.shape}")
    if scores.dtype.kind not in "fiu":
        raise TypeError(f"scores must be numeric, got dtype {scores.dtype}")
    # Negating keeps a stable sort's tie order; NaN sorts after every number.
    return np.argsort(-scores.astype(np.float64), axis=1, kind="stable").astype(np.int64)


def result_to_ranks(result: SearchResult) -> np.ndarray:
    """Rankings from a top-K search result.

    Args:
        result: a :class:`~d2r.types.SearchResult` (ids best first, -1 padding).

    Returns:
        (Q, K) int64 database indices best first; -1 padding is kept and never
        matches an image, so images beyond the top K count as not retrieved.
    """
    if not isinstance(result, SearchResult):
        raise TypeError(f"expected a SearchResult, got {type(result).__name__}")
    return np.array(result.ids, dtype=np.int64)


def _as_query_rows(ranks, layout: str) -> np.ndarray:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    arr = np.asarray(ranks)
    if arr.ndim != 2:
        raise ValueError(f"ranks must be a 2-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"ranks must hold integer database indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if layout == "revisitop":
        arr = arr.T
    if arr.size and arr.min() < -1:
        raise ValueError(f"ranks contain {int(arr.min())}; indices must be >= 0 (-1 = padding)")
    return np.ascontiguousarray(arr)


def _check_unique(row: np.ndarray, query: int) -> None:
    ordered = np.sort(row)
    repeated = (ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)
    if repeated.any():
        index = int(ordered[1:][repeated][0])
        raise ValueError(f"the ranking of query {query} lists database index {index} twice")


def _check_kappas(kappas: Sequence[int]) -> np.ndarray:
    arr = np.asarray(kappas)
    if arr.ndim != 1:
        raise ValueError(f"kappas must be a flat sequence, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 1):
        raise ValueError(f"kappas must be positive integers, got {list(arr.tolist())}")
    return arr.astype(np.int64)


def _index_array(entry: Any, key: str, query: int, *, required: bool) -> np.ndarray:
    """(n,) int64 image indices of ``entry[key]`` (mapping) or ``entry.key``."""
    if isinstance(entry, Mapping):
        present = key in entry
        value = entry[key] if present else None
    else:
        present = hasattr(entry, key)
        value = getattr(entry, key, None)
    if not present:
        if required:
            raise KeyError(f"ground truth of query {query} has no {key!r} list")
        return np.zeros(0, np.int64)
    arr = np.asarray(value).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"ground truth {key!r} of query {query} must hold integer indices, "
            f"got dtype {arr.dtype}"
        )
    if arr.min() < 0:
        raise ValueError(f"ground truth {key!r} of query {query} has negative index {arr.min()}")
    return arr.astype(np.int64)
