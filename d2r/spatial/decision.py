"""What "verified" means, in the words every surface states it.

The flag is decided once, by re-ranking (``RerankResult.verified``, under
``verification.decision``); the rows of :func:`d2r.pipeline.run.run_image`, :class:`d2r.Hit`,
``d2r query``, the result page, the server and its web page read it and never recompute it.
"""

from __future__ import annotations

from d2r.config import VerificationConfig

__all__ = ["rule", "verified_order"]


def rule(config: VerificationConfig) -> str:
    """The decision rule: ``">= 8 inliers"`` or ``"a-contrario, -log10 NFA >= 12"``."""
    if config.decision == "nfa":
        return f"a-contrario, -log10 NFA >= {config.min_score:g}"
    return f">= {config.min_inliers} inliers"


def verified_order(config: VerificationConfig) -> str:
    """How the verified results are ordered among themselves."""
    return "highest score first" if config.decision == "nfa" else "most inliers first"
