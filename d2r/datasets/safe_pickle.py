"""Restricted unpickling of the official Revisited Oxford/Paris ground truth.

The revisitop ground truth ships as a pickle (``gnd_roxford5k.pkl``,
``gnd_rparis6k.pkl``): a dict with ``imlist``, ``qimlist`` and ``gnd`` (a list
of dicts with ``bbx``, ``easy``, ``hard``, ``junk``). Its values may be Python
lists or numpy arrays and scalars, written by Python 2 or 3 and numpy 1.x or 2.x.
Unpickling can run arbitrary code, so :func:`load_pickle` resolves only the
globals needed to rebuild numpy arrays, dtypes and scalars and refuses any
other (``os.system``, ``builtins.eval``, ...) before it is called.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from d2r.errors import InputError

__all__ = ["UnsafePickleError", "load_pickle", "ALLOWED_GLOBALS"]


class UnsafePickleError(pickle.UnpicklingError, InputError):
    """A pickle asked for a global outside :data:`ALLOWED_GLOBALS`."""


def _core_attr(module: str, name: str) -> Callable[..., Any]:
    """numpy's ``_core`` (2.x) or ``core`` (1.x) ``module.name``, whichever exists."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy provides no {module}.{name}")


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes with protocol <= 2 as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _codecs_encode,
        # Protocols 0 and 1 write bytes as a call of the builtin type.
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),  # ndarray reduction of pickle protocol 5
    ):
        obj = _core_attr(module, name)
        for package in ("numpy.core", "numpy._core"):
            table[(f"{package}.{module}", name)] = obj
    # numpy >= 1.16 also names _reconstruct / scalar by their C module.
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}._multiarray_umath", "_reconstruct")] = table[
            ("numpy.core.multiarray", "_reconstruct")
        ]
        table[(f"{package}._multiarray_umath", "scalar")] = table[
            ("numpy.core.multiarray", "scalar")
        ]
    return table


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise UnsafePickleError("_codecs.encode called with non-string arguments")
    return text.encode(encoding, errors)


ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_allowed())
"""(module, name) pairs a ground-truth pickle may reference."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str) -> None:
        # latin1 makes Python 2 str payloads of numpy arrays load as bytes-compatible text.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._table[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name} "
                "(only numpy array reconstruction is allowed in ground-truth pickles)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed")


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only plain containers and numpy arrays/scalars.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the pickle references any other global; nothing it
            names is called.
        pickle.UnpicklingError: the file is not a valid pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth pickle not found: {path}")
    with path.open("rb") as f:
        try:
            return _RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({exc})") from exc
