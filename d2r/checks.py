"""Argument checks shared by the whole package (plain Python; no third-party imports)."""

from __future__ import annotations

import math
import reprlib

from d2r.errors import InputError

__all__ = ["MAX_SHOWN", "check_positive_int", "parse_box", "shown"]

MAX_SHOWN = 200
"""Longest text of a user's value that an error message embeds (:func:`shown`)."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 8
_REPR.maxdeque = _REPR.maxarray = 8
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_SHOWN


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` of at most ``limit`` characters, so that no error message grows with
    the input: nested containers are shown to 3 levels and 8 items each (``...`` for the
    rest), then the text is cut.  Its cost is bounded too, whatever the value holds
    (millions of items, or items shared as YAML aliases make them)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def check_positive_int(name: str, value) -> int:
    """``value`` as an int if it is a positive whole number, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {shown(value)}")
    return int(value)


def parse_box(text: str, what: str = "box") -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (pixels, finite, negative allowed) as four floats; else InputError."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} must be x1,y1,x2,y2 in pixels, got {shown(text)}")
    return values  # type: ignore[return-value]
