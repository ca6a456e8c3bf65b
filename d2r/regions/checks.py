"""Argument checks shared by the region selectors (:mod:`d2r.regions.selection`,
:mod:`d2r.regions.selective_search`)."""

from __future__ import annotations

__all__ = ["check_count"]


def check_count(name: str, value, minimum: int) -> int:
    """``value`` as an int if it is a whole number (not a bool) ``>= minimum``, else ValueError
    naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
