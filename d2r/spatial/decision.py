"""What "verified" means, in the words every surface states it.

The flag is decided once, by re-ranking (``RerankResult.verified``, under
``verification.decision``); the rows of :func:`d2r.pipeline.run.run_image`, :class:`d2r.Hit`,
``d2r query``, the result page, the server and its web page read it and never recompute it.
"""

from __future__ import annotations

from d2r.config import VerificationConfig

__all__ = ["rule", "error_rate", "verified_order", "rest_order"]

INLIER_RULE_FALSE_PER_1000 = 22
"""False verifications per 1,000 unrelated real-photo pairs of the ``inliers`` rule at 8
inliers with the RootSIFT preset (``benchmarks/verification_calibration.py``,
docs/benchmarks.md)."""


def rule(config: VerificationConfig) -> str:
    """The decision rule: ``">= 8 inliers"`` or ``"a-contrario, -log10 NFA >= 3"``."""
    if config.decision == "nfa":
        return f"a-contrario, -log10 NFA >= {config.min_score:g}"
    return f">= {config.min_inliers} inliers"


def error_rate(config: VerificationConfig) -> str:
    """The rule's false-verification rate on unrelated pairs, as far as it is known: the
    score's own bound under ``nfa`` (it holds for any threshold, under the score's chance
    model), the measured rate of the inlier rule at 8 inliers, else that it is unknown."""
    if config.decision == "nfa":
        pairs = (f"{10 ** config.min_score:,.0f}" if config.min_score <= 9
                 else f"10^{config.min_score:g}")
        return f"at most 1 false in {pairs} unrelated pairs expected"
    if config.min_inliers == 8:
        return f"about {INLIER_RULE_FALSE_PER_1000} false in 1,000 unrelated pairs measured"
    return "false-verification rate not measured"


def verified_order(config: VerificationConfig) -> str:
    """How the verified results are ordered among themselves."""
    return "highest score first" if config.decision == "nfa" else "most inliers first"


def rest_order(config: VerificationConfig, *, expansion: int = 0) -> str:
    """How the results that were not verified follow; ``expansion``: the query was expanded
    with up to this many verified images (0: not expanded; :mod:`d2r.methods.kernels`)."""
    expanded = f"a search expanded with up to {expansion} verified images"
    if config.decision == "nfa":
        tail = f"; the rest in the order of {expanded}" if expansion else ""
        return f"the others checked follow by inliers, then search order{tail}"
    if expansion:
        return f"the others follow in the order of {expanded} (query expansion)"
    return "the others keep their search order"
