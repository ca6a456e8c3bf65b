"""Read a legacy (pre-1.6, non-zip) PyTorch checkpoint as numpy arrays, without PyTorch.

Some published weights (DISK's ``depth-save.pth``, 2020) predate the zip format that
:mod:`d2r.io.torch_checkpoint` reads.  A legacy ``torch.save`` file is a sequence of
pickles followed by raw bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``, the protocol version ``1001``, and a
   dict ``{"little_endian": bool, "type_sizes": ..., "protocol_version": 1001}``;
2. the object, whose tensors name their storages by persistent ids
   ``("storage", <StorageType>, key, location, numel, view_metadata)``;
3. the list of storage keys, in the order their bytes follow;
4. per storage: its element count (int64, the file's byte order) and its bytes.

The object is read by the same restricted unpickler as the zip format (tensor rebuilds,
storage types and ``collections.OrderedDict`` only; any other global refused before
anything runs).  Storage views (``view_metadata``) are refused.  Every count is checked
against the file's size before anything is read; tensors are checked against their
storages as in the zip format (the object is unpickled twice: once for the storages'
types and sizes, once, after their bytes are read, for the tensors).  Nested dicts are flattened with dots
(``{"extractor": {"unet.x": t}}`` -> ``{"extractor.unet.x": t}``).
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np

from d2r.io.torch_checkpoint import (_LEGACY_MAGIC, CheckpointError, _Refused, _Storage,
                                     _StorageType, _Unpickler, checked_file)

__all__ = ["is_legacy_checkpoint", "load_legacy_state_dict"]

_PROTOCOL_VERSION = 1001


class _DataUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: no globals, no persistent ids."""

    def find_class(self, module: str, name: str):
        raise _Refused(f"{module}.{name}")


def is_legacy_checkpoint(path: str | os.PathLike) -> bool:
    """Whether the file starts with the legacy ``torch.save`` magic number."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        return head.startswith(b"\x80") and pickle.loads(head) == _LEGACY_MAGIC
    except Exception:
        return False


class _LegacyUnpickler(_Unpickler):
    """The restricted unpickler with legacy 6-field storage ids; storages are filled later."""

    def __init__(self, stream: io.BufferedIOBase, filled: dict[str, _Storage] | None = None) -> None:
        pickle.Unpickler.__init__(self, stream)
        self.storages: dict[str, tuple[_StorageType, int]] = {}
        self._arrays: dict[str, _Storage] = dict(filled or {})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise ValueError(f"unknown persistent id {str(pid)[:60]}")
        if pid[5] is not None:
            raise ValueError("storage views are not supported")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in self._arrays:
            self.storages[key] = (kind, numel)
            self._arrays[key] = _Storage(np.zeros(numel, dtype=np.float32 if kind.bfloat16 else kind.dtype))
        return self._arrays[key]


def _flatten(value, prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"a key is a {type(key).__name__}, not a name")
        if isinstance(item, dict):
            _flatten(item, f"{prefix}{key}.", out)
        elif isinstance(item, np.ndarray):
            out[f"{prefix}{key}"] = item
        else:
            raise ValueError(f"{prefix}{key} is a {type(item).__name__}, not a tensor")


def load_legacy_state_dict(path: str | os.PathLike, *, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of the legacy-format checkpoint at ``path``, nested names joined by dots.

    ``sha256``: refuse the file unless its hex sha256 is this.  Raises
    :class:`~d2r.io.torch_checkpoint.CheckpointError` (one line naming the file) for a
    missing, truncated, damaged, tampered or foreign file.
    """
    path = checked_file(path, sha256)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header = _DataUnpickler(f)
            if header.load() != _LEGACY_MAGIC:
                raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint (no magic number)")
            if header.load() != _PROTOCOL_VERSION:
                raise ValueError("protocol version is not 1001")
            info = header.load()
            if not isinstance(info, dict) or not isinstance(info.get("little_endian"), bool):
                raise ValueError("no byte order in its header")
            little = info["little_endian"]
            start = f.tell()
            unpickler = _LegacyUnpickler(f)  # first pass: the storages' types and sizes
            unpickler.load()
            keys = _DataUnpickler(f).load()
            if not (isinstance(keys, list) and sorted(map(str, keys)) == sorted(unpickler.storages)
                    and all(isinstance(k, str) for k in keys)):
                raise ValueError("its storage list does not match its tensors")
            order = "<" if little else ">"
            filled: dict[str, _Storage] = {}
            for key in keys:
                kind, numel = unpickler.storages[key]
                count = int(np.frombuffer(f.read(8), dtype=f"{order}i8", count=1)[0])
                need = numel * kind.dtype.itemsize
                if count != numel or f.tell() + need > size:
                    raise ValueError(f"storage {key} holds {count} elements, {numel} expected, "
                                     f"or runs past the end of the file")
                values = np.frombuffer(f.read(need), dtype=kind.dtype.newbyteorder(order), count=numel)
                values = values.astype(kind.dtype.newbyteorder("="))
                if kind.bfloat16:
                    values = (values.astype(np.uint32) << 16).view(np.float32)
                filled[key] = _Storage(values)
            end = f.tell()
            f.seek(start)  # second pass: the tensors, from the storages' bytes
            value = _LegacyUnpickler(f, filled).load()
            f.seek(end)
    except CheckpointError:
        raise
    except _Refused as exc:
        raise CheckpointError(f"{path}: refused global {exc} in its pickle (only tensors and "
                              f"ordered dicts are read; nothing was run)") from None
    except (EOFError, OSError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated PyTorch checkpoint ({exc})") from None
    except Exception as exc:  # anything a hostile or broken pickle can provoke
        detail = " ".join(str(exc).split())[:120]
        raise CheckpointError(f"{path}: not a readable PyTorch state dict "
                              f"({type(exc).__name__}: {detail})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds a {type(value).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    try:
        _flatten(value, "", out)
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a state dict ({exc})") from None
    return out
