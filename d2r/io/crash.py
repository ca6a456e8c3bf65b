"""Fault injection for the reliability tests: stop the process at a named commit point.

With ``D2R_CRASH_AT=<point>`` in the environment, :func:`crash_point` ends the process
at once (``os._exit(75)``: no cleanup, no buffered output), as a kill at that instant
would.  The points: ``extracted`` (features stored), ``codebook`` (codebook saved),
``search-saved`` (a new generation written, not yet current) and ``committed``
(``index.json`` replaced, the old generation not yet removed).
"""

from __future__ import annotations

import os

__all__ = ["CRASH_EXIT_CODE", "crash_point"]

CRASH_EXIT_CODE = 75


def crash_point(name: str) -> None:
    """End the process if ``D2R_CRASH_AT`` names this point."""
    if os.environ.get("D2R_CRASH_AT") == name:
        os._exit(CRASH_EXIT_CODE)
