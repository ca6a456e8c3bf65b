"""Argument checks shared by the spatial-verification modules (:mod:`d2r.spatial.matching`,
:mod:`d2r.spatial.ransac`, :mod:`d2r.spatial.reranking`): features, positive numbers, counts."""

from __future__ import annotations

from typing import Any

import numpy as np

from d2r.types import LocalFeatures

__all__ = ["check_count", "check_features", "positive_number"]


def check_features(value: Any, what: str) -> LocalFeatures:
    """``value`` if it is :class:`~d2r.types.LocalFeatures`, else TypeError naming ``what``."""
    if not isinstance(value, LocalFeatures):
        raise TypeError(f"{what} must be LocalFeatures, got {type(value).__name__}")
    return value


def positive_number(value: Any, what: str) -> float:
    """``value`` as a float if it is a positive finite number (not a bool), else TypeError or
    ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


def check_count(value: Any, what: str, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) ``>= minimum``, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)
