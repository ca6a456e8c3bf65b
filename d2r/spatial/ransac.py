"""One pair's geometric verification: a model fitted robustly to its matches, then the decision.

:func:`verify_pair` fits a transform to the matched locations of a (query, database image)
pair — (2, 3) affine or similarity, (3, 3) homography, float64 — then applies the
verification decision (:mod:`d2r.spatial.score`): the one-to-one inliers, their
a-contrario score ``-log10 NFA`` and geometric sanity (``decision="nfa"``), or RANSAC's inlier
count alone (``"inliers"``); the result is a :class:`Verification`.  The model maps
**database (x, y) to query (x, y)**, as in the DELF reference, so the residual threshold is in
query pixels (one tolerance for every candidate of a query) and many query features matched
to one database feature cannot all be inliers.  ``method="opencv"``
(``cv2.estimateAffine2D``, adaptive stop at ``confidence``, releases the GIL) is the fast
path; ``method="skimage"`` (``skimage.measure.ransac`` with ``AffineTransform``, all
``max_trials`` iterations) reproduces the reference's procedure; ``method="usac"`` is
OpenCV's MAGSAC++.  Matches come from :mod:`d2r.spatial.matching`; re-ranking a ranking
with this is :mod:`d2r.spatial.reranking`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from d2r.config import VerificationConfig
from d2r.spatial.checks import check_count, check_features, positive_number
from d2r.spatial.matching import check_matches, match_descriptors
from d2r.spatial.score import DECISIONS, QueryPoints, decide
from d2r.types import LocalFeatures

__all__ = ["METHODS", "MODELS", "Verification", "check_model", "verify_pair"]

METHODS = ("opencv", "skimage", "usac")
"""Robust estimators accepted by :func:`verify_pair`: OpenCV's RANSAC, scikit-image's
RANSAC (the DELF reference's procedure) and OpenCV's USAC MAGSAC++."""

MODELS = ("affine", "similarity", "homography")
"""Geometric models accepted by :func:`verify_pair`."""

_DEFAULTS = VerificationConfig()


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
    query_points: QueryPoints | None = None,
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
        query_points: a :class:`~d2r.spatial.score.QueryPoints` of ``query.locations``
            shared by a query's pairs (re-ranking builds it once per query); built here when
            None.

    Returns:
        A :class:`Verification`; a non-finite (degenerate) model counts as no model.
    """
    query = check_features(query, "query")
    db = check_features(db, "db")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    check_model(method, model)
    threshold = positive_number(ransac_threshold, "ransac_threshold")
    if relative_threshold is not None:
        diagonal = float(np.hypot(*query.image_size))
        threshold = positive_number(relative_threshold, "relative_threshold") * diagonal
    max_trials = check_count(max_trials, "max_trials", 1)
    min_samples = check_count(min_samples, "min_samples", 3)
    confidence = positive_number(confidence, "confidence")
    if confidence >= 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if matches is None:
        pairs = match_descriptors(
            query, db, descriptor_threshold=descriptor_threshold,
            ratio_test=ratio_test, mutual=mutual,
        )
    else:
        pairs = check_matches(matches, len(query), len(db))
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
        min_spread=min_spread, query_points=query_points,
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

