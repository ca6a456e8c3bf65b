"""The verification decision: an a-contrario score and geometric sanity for one fitted pair.

:func:`d2r.spatial.ransac.verify_pair` fits a transform (database (x, y) -> query (x, y)) to
``n`` tentative matches; :func:`decide` then says whether the pair shows the same thing.

**Score.**  The inliers are recounted one-to-one (:func:`one_to_one`): a database feature,
a query feature, a query location and a database location (rounded to whole pixels, so
SIFT's duplicate keypoints count once) each serve at most one match, the one with the
smallest residual; ``n`` counts the tentative matches the same way and ``k`` those of
them whose residual is within the tolerance ``r`` (query pixels).  Under the background
hypothesis — the query end of a chance match is one of the query's N features drawn at
random, independently of its database end — match ``i`` lands within ``r`` of where a
*given* transform sends its database end with probability ``p_i`` = (query features
within ``r`` of that point) / N, so textured or repeated areas, where features crowd,
count as the easy targets they are; ``p`` is the mean of ``p_i`` over the ``n`` matches
(:func:`inlier_probability`; a binomial with the mean probability has the heavier upper
tail of the two, so the approximation errs toward refusing).  A transform fitted on a
minimal sample of ``s`` matches
(affine 3, similarity 2, homography 4) explains those ``s`` by construction; the other
``n - s`` are independent Bernoulli(``p``) trials.  Counting every minimal sample as one
hypothesis, ``N_tests = C(n, s)``, the number of false alarms is

    NFA = C(n, s) * P[Binomial(n - s, p) >= k - s]

and the score is ``-log10 NFA`` (:func:`log10_nfa`): 0 means one such chance alignment
is expected among all hypotheses, 6 one in a million.  The binomial tail is the
regularized incomplete beta function, in log space below 1e-250 (a bound tight in the
far tail), so the score is finite for any count.

**Sanity**, refused whatever the score (:func:`transform_problem`, :func:`spread`): a
transform whose local linear part (the homography's Jacobian at the inliers' centre) has a
scale ``sqrt|det|`` beyond ``max_scale_ratio`` either way, an anisotropy (ratio of its
singular values, shear included) beyond ``max_anisotropy``, or a reflection (``det < 0``)
unless allowed; inliers whose query locations spread less than ``min_spread`` tolerances
along their minor axis (robustly: scaled median absolute deviation), i.e. all on one line
or in one small patch.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import betainc, gammaln

from d2r.index.compiled import AVAILABLE as COMPILED_AVAILABLE
from d2r.index.compiled import requested_backend
from d2r.index.compiled import unavailable_reason as compiled_unavailable_reason

__all__ = [
    "SAMPLE_SIZE",
    "DECISIONS",
    "log10_binomial_tail",
    "log10_nfa",
    "inlier_probability",
    "QueryPoints",
    "COMPILED_FROM_PAIRS",
    "use_compiled",
    "apply",
    "one_to_one",
    "spread",
    "transform_problem",
    "decide",
]

SAMPLE_SIZE = {"affine": 3, "similarity": 2, "homography": 4}
"""Minimal sample size ``s`` of each model (the hypotheses are the C(n, s) samples)."""

DECISIONS = ("nfa", "inliers")
"""``nfa``: the calibrated a-contrario test with sanity checks; ``inliers``: the rule before
it (RANSAC's own inlier count >= ``min_inliers``, nothing else)."""

_LN10 = np.log(10.0)
_TINY_TAIL = 1e-250
_CHANCE_SAMPLES = 256
"""``p`` is the mean of ``p_i`` over at most about this many evenly spaced matches (speed; an
unbiased estimate of the mean over all)."""


def log10_binomial_tail(k, n, p) -> np.ndarray:
    """log10 P[Binomial(n, p) >= k], elementwise over broadcast arrays (0 where k <= 0)."""
    k, n, p = np.broadcast_arrays(np.asarray(k, np.float64), np.asarray(n, np.float64),
                                  np.asarray(p, np.float64))
    out = np.zeros(k.shape)
    live = (k > 0) & (k <= n) & (p < 1)
    out[(k > n) | ((k > 0) & (p <= 0))] = -np.inf
    live &= p > 0
    kk, nn, pp = k[live], n[live], p[live]
    tail = betainc(kk, nn - kk + 1.0, pp)
    log_pmf = (gammaln(nn + 1) - gammaln(kk + 1) - gammaln(nn - kk + 1)
               + kk * np.log(pp) + (nn - kk) * np.log1p(-pp))
    ratio = np.clip((nn - kk) * pp / ((kk + 1) * (1 - pp)), 0.0, 1 - 1e-12)
    bound = log_pmf - np.log1p(-ratio)  # pmf(k) / (1 - r) >= tail, tight in the far tail
    with np.errstate(divide="ignore"):
        out[live] = np.where(tail > _TINY_TAIL, np.log(tail), bound) / _LN10
    return out


def log10_nfa(k, n, p, *, sample_size: int) -> np.ndarray:
    """log10 NFA = log10 C(n, s) + log10 P[Bin(n - s, p) >= k - s] (module docstring).

    Args:
        k: inliers, n: tentative matches (one-to-one counts), p: chance-inlier probability;
            arrays broadcast together.
        sample_size: the model's minimal sample size ``s``.
    Returns:
        float64 array of the broadcast shape; the score is its negative.
    """
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    s = float(sample_size)
    tests = np.where(n >= s, gammaln(n + 1) - gammaln(s + 1) - gammaln(np.maximum(n - s, 0) + 1),
                     0.0) / _LN10
    return tests + log10_binomial_tail(k - s, np.maximum(n - s, 0), p)


def _log10_nfa_one(k: int, n: int, p: float, s: int) -> float:
    """:func:`log10_nfa` of one pair, on Python numbers (the same terms, without the array
    set-up that costs more than the arithmetic for one pair)."""
    tests = (float(gammaln(n + 1.0)) - float(gammaln(s + 1.0)) - float(gammaln(n - s + 1.0))
             if n >= s else 0.0) / _LN10
    kk, nn = float(k - s), float(max(n - s, 0))
    if kk <= 0:
        return tests
    if kk > nn or p <= 0:
        return -math.inf
    if p >= 1:
        return tests
    tail = float(betainc(kk, nn - kk + 1.0, p))
    if tail > _TINY_TAIL:
        return tests + math.log(tail) / _LN10
    log_pmf = (float(gammaln(nn + 1)) - float(gammaln(kk + 1)) - float(gammaln(nn - kk + 1))
               + kk * math.log(p) + (nn - kk) * math.log1p(-p))
    ratio = min(max((nn - kk) * p / ((kk + 1) * (1 - p)), 0.0), 1 - 1e-12)
    return tests + (log_pmf - math.log1p(-ratio)) / _LN10


COMPILED_FROM_PAIRS = 2000
"""``auto`` decides pairs with the compiled code from a batch of this many (a query's top 100
of a benchmark run): loading numba costs about a second per process, the compiled decision
saves about 0.4 ms per pair (docs/benchmarks.md)."""


def use_compiled(pairs: int) -> bool:
    """Whether deciding a batch of ``pairs`` pairs runs the compiled parts
    (:mod:`d2r.spatial._score_kernels`): ``$D2R_BACKEND`` ``compiled`` (numba must be
    installed), ``numpy``, or ``auto`` (default): when numba is installed and either already
    loaded in this process or the batch has :data:`COMPILED_FROM_PAIRS` pairs or more.
    Both give the same inliers, scores and reasons."""
    choice = requested_backend("auto", "the verification decision's backend")
    if choice == "numpy":
        return False
    if choice == "compiled" and not COMPILED_AVAILABLE:
        raise RuntimeError(compiled_unavailable_reason())
    return COMPILED_AVAILABLE and (choice == "compiled" or "numba" in sys.modules
                                   or pairs >= COMPILED_FROM_PAIRS)


class QueryPoints:
    """A query's (N, 2) feature locations, indexed once for all of its pairs' chance counts:
    a grid of cells of the tolerance's side (compiled, one per tolerance) or a ``cKDTree``
    (numpy); ``compiled`` says which half of the decision its pairs run (default:
    :func:`use_compiled` of one pair).  Read-only once built; safe to share between
    threads."""

    def __init__(self, locations: np.ndarray, *, compiled: bool | None = None) -> None:
        self.compiled = use_compiled(1) if compiled is None else bool(compiled)
        self.locations = np.ascontiguousarray(locations, dtype=np.float64).reshape(-1, 2)
        self._tree: cKDTree | None = None
        self._grids: dict[float, tuple] = {}

    def __len__(self) -> int:
        return self.locations.shape[0]

    def counts(self, points: np.ndarray, radius: float) -> np.ndarray:
        """(P,) int64: the locations within ``radius`` (``<=``) of each of the (P, 2) finite
        ``points``."""
        points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 2)
        if self.compiled:
            from d2r.spatial._score_kernels import grid_counts

            return grid_counts(*self.grid(float(radius)), points, float(radius))
        if self._tree is None:
            self._tree = cKDTree(self.locations)
        return np.asarray(self._tree.query_ball_point(points, radius, return_length=True),
                          np.int64)

    def grid(self, cell: float) -> tuple:
        """(starts, xs, ys, origin x, origin y, cell, columns, rows) for
        :func:`~d2r.spatial._score_kernels.grid_counts`: the locations sorted by cell."""
        grid = self._grids.get(cell)
        if grid is None:
            xy = self.locations
            origin = xy.min(axis=0) if len(xy) else np.zeros(2)
            cells = np.floor((xy - origin) / cell).astype(np.int64)
            columns, rows = (int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1) \
                if len(xy) else (1, 1)
            ids = cells[:, 1] * columns + cells[:, 0]
            members = np.argsort(ids, kind="stable")
            starts = np.zeros(columns * rows + 1, np.int64)
            np.cumsum(np.bincount(ids, minlength=columns * rows), out=starts[1:])
            grid = (starts, np.ascontiguousarray(xy[members, 0]),
                    np.ascontiguousarray(xy[members, 1]), float(origin[0]), float(origin[1]),
                    cell, columns, rows)
            self._grids[cell] = grid
        return grid


def inlier_probability(query_locations: np.ndarray, predicted: np.ndarray,
                       tolerance: float, *, points: QueryPoints | None = None) -> float:
    """Mean over the (P, 2) ``predicted`` query points of the fraction of the (N, 2)
    ``query_locations`` within ``tolerance`` of each (1.0 when either is empty).
    ``points``: :class:`QueryPoints` of ``query_locations`` built once for all of a query's
    pairs (else here)."""
    if query_locations.shape[0] == 0 or predicted.shape[0] == 0:
        return 1.0
    points = QueryPoints(query_locations) if points is None else points
    near = points.counts(predicted, tolerance)
    return float(near.mean() / query_locations.shape[0])


def apply(transform: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(P, 2) float64 images of the (P, 2) points ``src`` by a (2, 3) or (3, 3) transform."""
    src = src.astype(np.float64)
    mapped = src @ transform[:2, :2].T + transform[:2, 2]
    if transform.shape[0] == 3:
        w = src @ transform[2, :2] + transform[2, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            mapped = mapped / w[:, None]
    return mapped


def _pixel_key(xy: np.ndarray) -> np.ndarray:
    cells = np.rint(xy).astype(np.int64)
    return cells[:, 0] * (1 << 31) + cells[:, 1]


def one_to_one(pairs: np.ndarray, query_xy: np.ndarray, db_xy: np.ndarray,
               error: np.ndarray) -> np.ndarray:
    """Positions into ``pairs`` (P, 2) keeping, for every query feature, database feature,
    query pixel and database pixel (``query_xy``, ``db_xy``: (P, 2)), only the match of
    smallest ``error`` (P,); ascending error order."""
    keep = np.argsort(error, kind="stable")
    for key in (pairs[:, 0], pairs[:, 1], _pixel_key(query_xy), _pixel_key(db_xy)):
        _, first = np.unique(key[keep], return_index=True)
        keep = keep[np.sort(first)]
    return keep


def spread(points: np.ndarray) -> float:
    """Robust minor-axis spread (pixels) of (K, 2) points: 1.4826 x the median absolute
    deviation along their minor principal axis; ~0 on a line or in a dot, whatever a few
    stray points do."""
    if points.shape[0] < 3:
        return 0.0
    centered = points.astype(np.float64) - np.median(points, axis=0)
    minor = centered @ np.linalg.svd(centered, full_matrices=False)[2][-1]
    return float(1.4826 * np.median(np.abs(minor - np.median(minor))))


def _linear_part(transform: np.ndarray, at: np.ndarray) -> np.ndarray | None:
    """The (2, 2) local linear map of ``transform`` at database point ``at`` (None: behind
    the camera)."""
    if transform.shape[0] == 2:
        return transform[:, :2]
    w = float(transform[2, :2] @ at + transform[2, 2])
    if w <= 0:
        return None
    mapped = (transform[:2, :2] @ at + transform[:2, 2]) / w
    return (transform[:2, :2] - np.outer(mapped, transform[2, :2])) / w


def _linear_geometry(transform: np.ndarray, at: np.ndarray) -> tuple[bool, bool, float, float]:
    """``(behind, reflected, s1, s2)`` of ``transform``'s local linear part near database
    point ``at``: whether ``at`` maps behind the camera, whether the part mirrors, and its
    singular values, largest first (numpy; the compiled twin is
    :func:`~d2r.spatial._score_kernels.transform_check`)."""
    linear = _linear_part(transform, at)
    if linear is None:
        return True, False, 0.0, 0.0
    large, small = np.linalg.svd(linear, compute_uv=False)
    return False, bool(np.linalg.det(linear) < 0), float(large), float(small)


def _transform_reason(behind: bool, reflected: bool, large: float, small: float, *,
                      max_scale_ratio: float, max_anisotropy: float,
                      allow_reflection: bool) -> str:
    if behind:
        return "degenerate transform"
    if reflected and not allow_reflection:
        return "reflection"
    if small <= 1e-12:
        return "degenerate transform"
    scale = float(np.sqrt(large * small))
    if max(scale, 1 / scale) > max_scale_ratio:
        return f"scale ratio {max(scale, 1 / scale):.1f} > {max_scale_ratio:g}"
    if large / small > max_anisotropy:
        return f"anisotropy {large / small:.1f} > {max_anisotropy:g}"
    return ""


def transform_problem(transform: np.ndarray, at: np.ndarray, *, max_scale_ratio: float,
                      max_anisotropy: float, allow_reflection: bool) -> str:
    """Why ``transform`` (2, 3) / (3, 3) is degenerate near database point ``at`` (2,), or ""."""
    return _transform_reason(*_linear_geometry(transform, at), max_scale_ratio=max_scale_ratio,
                             max_anisotropy=max_anisotropy, allow_reflection=allow_reflection)


def decide(pairs: np.ndarray, query_xy: np.ndarray, db_xy: np.ndarray, transform: np.ndarray,
           query_locations: np.ndarray, *, tolerance: float, model: str, min_inliers: int,
           min_score: float, max_scale_ratio: float, max_anisotropy: float,
           allow_reflection: bool, min_spread: float,
           query_points: QueryPoints | None = None) -> tuple[np.ndarray, float, str]:
    """The one-to-one inliers, score and refusal reason of one fitted pair.

    Args:
        pairs: (P, 2) tentative ``(query, database)`` feature indices; query_xy, db_xy:
            (P, 2) their locations; transform: the fitted (2, 3) / (3, 3) database -> query
            map; query_locations: (N, 2) every query feature (the chance region);
            query_points: their :class:`QueryPoints` when the caller built it once for the
            query.
        tolerance: inlier residual in query pixels; the rest: see :mod:`d2r.config`'s
            ``verification`` section.
    Returns:
        ``(inliers, score, reason)``: (K, 2) int64 one-to-one inlier pairs (in the order
        of ``pairs``), ``-log10 NFA``, and "" when verified, else why not.
    """
    mapped = apply(transform, db_xy)
    error = np.linalg.norm(mapped - query_xy, axis=1)
    error[~np.isfinite(error)] = np.inf
    points = QueryPoints(query_locations) if query_points is None else query_points
    if points.compiled:
        from d2r.spatial._score_kernels import count_inliers

        inside, n, near, used, *geometry, spread_px = count_inliers(
            pairs, query_xy.astype(np.float64), db_xy.astype(np.float64), mapped, error,
            np.ascontiguousarray(transform, dtype=np.float64), float(tolerance),
            _CHANCE_SAMPLES, *points.grid(float(tolerance)))
        p = near / used / len(points) if used and len(points) else 1.0
    else:
        distinct = one_to_one(pairs, query_xy, db_xy, error)
        inside = np.sort(distinct[error[distinct] <= tolerance])
        n = distinct.shape[0]
        usable = distinct[np.all(np.isfinite(mapped[distinct]), axis=1)]
        usable = usable[::max(1, usable.shape[0] // _CHANCE_SAMPLES)]
        p = inlier_probability(query_locations, mapped[usable], tolerance, points=points)
        if inside.shape[0]:
            geometry = _linear_geometry(transform, db_xy[inside].mean(axis=0).astype(np.float64))
            spread_px = spread(query_xy[inside])
    k = inside.shape[0]
    score = -_log10_nfa_one(k, n, p, SAMPLE_SIZE[model])
    if k == 0:
        return pairs[inside], score, "no inliers"
    reason = _transform_reason(*geometry, max_scale_ratio=max_scale_ratio,
                               max_anisotropy=max_anisotropy, allow_reflection=allow_reflection)
    if not reason and spread_px < min_spread * tolerance:
        reason = "inliers on a line or in a small patch"
    if not reason and k < min_inliers:
        reason = f"{k} inliers < {min_inliers}"
    if not reason and score < min_score:
        reason = f"score {score:.1f} < {min_score:g}"
    return pairs[inside], score, reason
