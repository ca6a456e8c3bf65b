"""d2r: Detect-to-Retrieve landmark and particular-object image retrieval.

The public API (:mod:`d2r.api`)::

    import d2r
    index = d2r.build_index("photos/", "photos-index")       # or d2r.open_index("photos-index")
    hits = index.search("tower.jpg", box=(120, 40, 610, 900), top=20)   # [d2r.Hit], best first
    table = d2r.evaluate("data/roxford5k", index=index)      # d2r.api.MetricTable

Errors are the one-line types of :mod:`d2r.errors`.  The names load on first use, so
``import d2r`` stays cheap; the core (types, config, codebook, aggregation, index,
verification, evaluation, datasets, storage) depends on numpy/scipy/faiss only, and
TensorFlow models are imported lazily by the modules that need them.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

__all__ = ["Hit", "Index", "__version__", "build_index", "errors", "evaluate", "open_index"]

_API = ("Hit", "Index", "build_index", "evaluate", "open_index")


def __getattr__(name: str):
    """Load :mod:`d2r.api` (or :mod:`d2r.errors`) when one of its names is first used."""
    if name in _API:
        value = getattr(importlib.import_module("d2r.api"), name)
    elif name == "errors":
        value = importlib.import_module("d2r.errors")
    else:
        raise AttributeError(f"module 'd2r' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package, whose API name ``build_index`` stays the function when the entry-point
    shim of the same name (``python -m d2r.build_index``, :mod:`d2r.cli.build_index`) is
    imported."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
