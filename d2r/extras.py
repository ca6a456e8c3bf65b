"""Optional dependencies, grouped in pip extras of d2r.

The core install (``pip install d2r``) runs RootSIFT retrieval, evaluation, the
CLIs and the demo.  TensorFlow (DELF, the landmark detector, the CNN baselines,
training) comes with ``d2r[tf]``, Ray with ``d2r[ray]``, the query server with
``d2r[serve]``.  :func:`require` checks that an extra is installed without
importing it and otherwise raises :class:`~d2r.errors.MissingExtraError` with
the pip command; :func:`tensorflow` imports TensorFlow the same way.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from d2r.errors import MissingExtraError

__all__ = ["EXTRAS", "available", "require", "tensorflow"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "tf": ("tensorflow", "tf_keras", "tensorflow_hub"),
    "ray": ("ray",),
    "serve": ("fastapi", "uvicorn", "multipart"),
    "fast": ("numba",),
}
"""Each extra's top-level modules (what ``pip install 'd2r[EXTRA]'`` brings)."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str) -> None:
    """Raise MissingExtraError unless every module of ``extra`` is installed; ``what`` names
    the setting or command that needs it (``"features.backend=delf"``)."""
    missing = [m for m in EXTRAS[extra] if not available(m)]
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)}, not installed here: "
            f"pip install 'd2r[{extra}]'", name=missing[0])


def tensorflow(what: str = "this feature") -> ModuleType:
    """``import tensorflow``, or MissingExtraError naming ``what`` and ``pip install 'd2r[tf]'``."""
    try:
        return importlib.import_module("tensorflow")
    except ImportError:
        require("tf", what)
        raise
