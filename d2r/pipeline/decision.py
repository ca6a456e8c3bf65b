"""Whether a spatially verified database image counts as a match of the query.

The one place that decides it: :class:`d2r.Hit`'s ``verified``, the table ``d2r query``
prints and the one-query result page all ask :func:`is_verified`.
"""

from __future__ import annotations

from typing import Optional

from d2r.config import VerificationConfig

__all__ = ["is_verified"]


def is_verified(inliers: Optional[int], config: VerificationConfig) -> bool:
    """True when ``inliers`` (RANSAC inliers of a re-ranked pair; None: not re-ranked) reach
    ``config.min_inliers``."""
    return inliers is not None and inliers >= config.min_inliers
