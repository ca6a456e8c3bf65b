"""Read a PyTorch state dict (``torch.save`` zip format) as numpy arrays, without PyTorch.

A ``.pt`` / ``.pth`` file written by ``torch.save`` since PyTorch 1.6 is a zip archive
under one top folder ``<prefix>/``:

==========================  =============================================================
``<prefix>/data.pkl``       the pickled object; each tensor's bytes are a *storage*
                            named by a persistent id ``("storage", <StorageType>, key,
                            location, numel)``
``<prefix>/data/<key>``     the raw bytes of storage ``key``
``<prefix>/byteorder``      ``little`` or ``big`` (absent before PyTorch 1.10: little)
``<prefix>/version``        the format version
==========================  =============================================================

The pickle is read by a restricted unpickler: it resolves only the globals that rebuild
tensors (``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter``), the
storage types (``torch.FloatStorage`` ...) and ``collections.OrderedDict``; any other
global is refused before anything is called.  Every tensor is checked against its
storage (offset, sizes and strides in bounds, no more elements than the storage holds)
and returned as a C-contiguous, native-endian numpy array of its dtype (bfloat16 as
float32).  Sizes are checked before anything is decompressed.  The legacy (pre-1.6,
non-zip) format is refused.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from d2r.errors import InputError
from d2r.io.hashing import file_sha256

__all__ = ["CheckpointError", "MAX_PICKLE_BYTES", "checked_file", "load_state_dict"]

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
MAX_PICKLE_BYTES = 64 << 20
"""Largest ``data.pkl`` read (a state dict's is a few kB per hundred tensors)."""
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The number the legacy (non-zip) ``torch.save`` format pickles first."""


class CheckpointError(InputError):
    """A file that is not a readable PyTorch state dict; the message names the file."""


class _StorageType:
    """What ``torch.<Name>Storage`` unpickles to: a dtype, never callable."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bfloat16 = _STORAGE_DTYPES[name] == "bfloat16"
        self.dtype = np.dtype(np.uint16 if self.bfloat16 else _STORAGE_DTYPES[name])


class _Storage:
    """One storage: its elements as a flat native-endian array (bfloat16 as float32)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> np.ndarray:
    """The tensor ``storage[storage_offset + sum(i * stride)]`` of shape ``size``, copied."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor's storage is a {type(storage).__name__}")
    values = storage.values
    try:
        offset = int(storage_offset)
        shape = tuple(int(s) for s in size)
        steps = tuple(int(s) for s in stride)
    except (TypeError, ValueError):
        raise ValueError("a tensor's offset, size or stride is not made of integers") from None
    if len(shape) != len(steps) or offset < 0 or min(shape + steps, default=0) < 0:
        raise ValueError(f"tensor of size {shape} with stride {steps} at offset {offset}")
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, dtype=values.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, steps))
    if last >= values.size or count > values.size:
        raise ValueError(f"tensor of size {shape} with stride {steps} at offset {offset} "
                         f"overruns its storage of {values.size} elements")
    item = values.itemsize
    view = np.lib.stride_tricks.as_strided(values[offset:], shape=shape,
                                           strides=tuple(s * item for s in steps), writeable=False)
    return np.array(view, order="C")  # a copy; ascontiguousarray would make 0-d 1-d


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    """A ``torch.nn.Parameter`` is its tensor."""
    if not isinstance(data, np.ndarray):
        raise ValueError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Refused(Exception):
    """A global outside :data:`_GLOBALS` (never imported, never called)."""


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_GLOBALS`; storages come from ``load_storage(type, key, numel)``."""

    def __init__(self, data: bytes, load_storage) -> None:
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise ValueError(f"unknown persistent id {str(pid)[:60]}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in self._storages:
            self._storages[key] = self._load_storage(kind, key, int(numel))
        return self._storages[key]


def _zip_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    """The ``<prefix>/`` holding ``data.pkl``."""
    prefixes = [n[: -len("data.pkl")] for n in archive.namelist()
                if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(prefixes) != 1:
        raise CheckpointError(f"{path}: a zip file without exactly one <folder>/data.pkl: "
                              f"not a PyTorch checkpoint")
    return prefixes[0]


def _storage_loader(archive: zipfile.ZipFile, prefix: str, little: bool):
    """``load(kind, key, numel) -> _Storage`` reading ``<prefix>/data/<key>``."""

    def load(kind: _StorageType, key: str, numel: int) -> _Storage:
        member = f"{prefix}data/{key}"
        try:
            size = archive.getinfo(member).file_size
        except KeyError:
            raise ValueError(f"storage {member} is missing") from None
        need = numel * kind.dtype.itemsize
        if numel < 0 or size != need:  # checked before anything is decompressed
            raise ValueError(f"storage {member} holds {size} bytes, {numel} elements need {need}")
        raw = archive.read(member)
        values = np.frombuffer(raw, dtype=kind.dtype.newbyteorder("<" if little else ">"),
                               count=numel)
        values = values.astype(kind.dtype.newbyteorder("="))
        if kind.bfloat16:
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return _Storage(values)

    return load


def _refuse_legacy(path: Path, head: bytes) -> None:
    """Refuse the legacy (non-zip) ``torch.save`` format, recognized by its magic number."""
    try:
        magic = pickle.loads(head) if head.startswith(b"\x80") else None
    except Exception:
        magic = None
    if magic == _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: a legacy (pre-1.6, non-zip) PyTorch checkpoint, which d2r "
                              f"does not read; re-save it with a current torch.save")


def checked_file(path: str | os.PathLike, sha256: str | None) -> Path:
    """``path`` as a Path once it is a file whose sha256 is ``sha256`` (None: any), else
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise CheckpointError(f"{path}: sha256 is {actual}, expected {sha256}: "
                                  f"a damaged or different checkpoint")
    return path


def load_state_dict(path: str | os.PathLike, *, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of the PyTorch state dict at ``path``: name -> numpy array.

    ``sha256``: refuse the file unless its hex sha256 is this.  Raises
    :class:`CheckpointError` (one line naming the file) for a missing, damaged,
    truncated, tampered or foreign file, a legacy-format checkpoint, a pickle that
    names any global outside tensor rebuilding, and a value that is not a mapping of
    names to tensors.
    """
    path = checked_file(path, sha256)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            _refuse_legacy(path, f.read(16))
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip file: truncated, "
                              f"damaged or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _zip_prefix(archive, path)
            names = set(archive.namelist())
            order = (archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                     if f"{prefix}byteorder" in names else "little")
            if order not in ("little", "big"):
                raise ValueError(f"byteorder {order[:20]!r}")
            if archive.getinfo(f"{prefix}data.pkl").file_size > MAX_PICKLE_BYTES:
                raise ValueError(f"data.pkl is over {MAX_PICKLE_BYTES >> 20} MiB")
            unpickler = _Unpickler(archive.read(f"{prefix}data.pkl"),
                                   _storage_loader(archive, prefix, order == "little"))
            value = unpickler.load()
    except CheckpointError:
        raise
    except _Refused as exc:
        raise CheckpointError(f"{path}: refused global {exc} in its pickle (only tensors and "
                              f"ordered dicts are read; nothing was run)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: damaged PyTorch checkpoint ({exc})") from None
    except Exception as exc:  # anything a hostile or broken pickle can provoke
        detail = " ".join(str(exc).split())[:120]
        raise CheckpointError(f"{path}: not a readable PyTorch state dict "
                              f"({type(exc).__name__}: {detail})") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items()):
        raise CheckpointError(f"{path}: holds a {type(value).__name__}, not a state dict "
                              f"(a mapping of names to tensors)")
    return dict(value)
