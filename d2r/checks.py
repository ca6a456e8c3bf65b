"""Argument checks shared by the whole package (plain Python; no third-party imports)."""

from __future__ import annotations

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value) -> int:
    """``value`` as an int if it is a positive whole number, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
