"""Restricted unpickling of the official Revisited Oxford/Paris ground truth.

The revisitop ground truth ships as a pickle (``gnd_roxford5k.pkl``,
``gnd_rparis6k.pkl``): a dict with ``imlist``, ``qimlist`` and ``gnd`` (a list
of dicts with ``bbx``, ``easy``, ``hard``, ``junk``). Its values may be Python
lists or numpy arrays and scalars, written by Python 2 or 3 and numpy 1.x or 2.x.
Unpickling can run arbitrary code, so :func:`load_pickle` resolves only the
globals needed to rebuild numpy arrays, dtypes and scalars and refuses any
other (``os.system``, ``builtins.eval``, ...) before it is called.  Those it
allows are checked before they allocate: an array, a scalar or a ``bytes`` of
more than :data:`MAX_ARRAY_BYTES`, or an array state numpy would not check
(an object array with too few values, which crashes numpy), is refused.
"""

from __future__ import annotations

import importlib
import math
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from d2r.errors import InputError

__all__ = ["UnsafePickleError", "UnreadablePickleError", "load_pickle", "ALLOWED_GLOBALS",
           "MAX_ARRAY_BYTES"]

MAX_ARRAY_BYTES = 1 << 28
"""The largest array, scalar or bytes a ground-truth pickle may build (ground truths hold
kilobytes)."""


class UnsafePickleError(pickle.UnpicklingError, InputError):
    """A pickle asked for a global outside :data:`ALLOWED_GLOBALS`, or for an array it may
    not build."""


class UnreadablePickleError(pickle.UnpicklingError, InputError):
    """A file that is not a complete, well-formed pickle (truncated, damaged, not a pickle)."""


def _check_size(shape: object, dtype: object) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, refused when an array of it and ``dtype`` would take
    more than :data:`MAX_ARRAY_BYTES`."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple) or not all(isinstance(n, int) and n >= 0 for n in dims):
        raise UnsafePickleError(f"array shape {shape!r} is not a tuple of sizes")
    size = math.prod(dims) * max(1, np.dtype(dtype).itemsize)
    if size > MAX_ARRAY_BYTES:
        raise UnsafePickleError(f"an array of shape {dims} would take {size} bytes, more than "
                                f"the {MAX_ARRAY_BYTES} a ground truth may hold")
    return dims


class _CheckedArray(np.ndarray):
    """``numpy.ndarray`` while unpickling: its size and state are checked before numpy
    allocates or fills it (:func:`_plain` turns it back into a plain array)."""

    def __new__(cls, shape, dtype=float, *args, **kwargs):
        return super().__new__(cls, _check_size(shape, dtype), dtype, *args, **kwargs)

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("malformed array state")
        shape, dtype, _, data = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise UnsafePickleError(f"array state with dtype {dtype!r}")
        count = math.prod(_check_size(shape, dtype))
        if dtype.hasobject and not (isinstance(data, list) and len(data) == count):
            raise UnsafePickleError(f"an object array of shape {shape} holds "
                                    f"{len(data) if isinstance(data, list) else 'no'} values")
        super().__setstate__(state)


def _checked_reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` of a :class:`_CheckedArray`, its size checked first."""
    if subtype is not _CheckedArray:
        raise UnsafePickleError(f"_reconstruct of {subtype!r}")
    return _core_attr("multiarray", "_reconstruct")(subtype, _check_size(shape, dtype), dtype)


def _checked_scalar(dtype, *data):
    """numpy's ``scalar``, its size checked first."""
    _check_size((), dtype)
    return _core_attr("multiarray", "scalar")(dtype, *data)


def _bytes(*args) -> bytes:
    """``bytes`` of a list or a string, never of a count (``bytes(10**12)`` allocates)."""
    if args and isinstance(args[0], int):
        raise UnsafePickleError(f"bytes({args[0]}) builds zeros, not data")
    return bytes(*args)


def _plain(value: Any) -> Any:
    """``value`` with every :class:`_CheckedArray` inside it a plain ``numpy.ndarray``."""
    if isinstance(value, np.ndarray):
        array = value.view(np.ndarray) if isinstance(value, _CheckedArray) else value
        if array.dtype.hasobject:
            array = array.copy()
            for index, item in np.ndenumerate(array):
                array[index] = _plain(item)
        return array
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


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
        ("numpy", "ndarray"): _CheckedArray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes with protocol <= 2 as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _codecs_encode,
        # Protocols 0 and 1 write bytes as a call of the builtin type.
        ("builtins", "bytes"): _bytes,
        ("__builtin__", "bytes"): _bytes,
    }
    for module, name, obj in (
        ("multiarray", "_reconstruct", _checked_reconstruct),
        ("multiarray", "scalar", _checked_scalar),
        # ndarray reduction of pickle protocol 5: a view of bytes already read
        ("numeric", "_frombuffer", _core_attr("numeric", "_frombuffer")),
    ):
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
        UnsafePickleError: the pickle references any other global (nothing it
            names is called) or asks for an array it may not build.
        UnreadablePickleError: the file is not a complete, valid pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth pickle not found: {path}")
    with path.open("rb") as f:
        try:
            return _plain(_RestrictedUnpickler(f, str(path)).load())
        except UnsafePickleError as exc:
            if str(exc).startswith(f"{path}: "):
                raise
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, MemoryError) as exc:
            raise UnreadablePickleError(f"{path}: not a complete, readable pickle ({exc})") \
                from exc
