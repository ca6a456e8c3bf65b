"""Argument checks shared by the whole package (plain Python; no third-party imports)."""

from __future__ import annotations

import math

from d2r.errors import InputError

__all__ = ["check_positive_int", "parse_box"]


def check_positive_int(name: str, value) -> int:
    """``value`` as an int if it is a positive whole number, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def parse_box(text: str, what: str = "box") -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (pixels, finite, negative allowed) as four floats; else InputError."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} must be x1,y1,x2,y2 in pixels, got {text!r}")
    return values  # type: ignore[return-value]
