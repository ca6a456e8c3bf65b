"""Atomic file writes: the content goes to a temporary file beside the target, then replaces it.

A reader never sees a partial file.  ``durable=True`` also fsyncs the file
and its directory, so the new content survives a power loss once the call
returns (used for manifests and committed shards).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["fsync_path", "atomic_write", "atomic_write_bytes", "atomic_write_json"]


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *,
                 durable: bool = False) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it over ``path``."""
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: directory {target.parent} does not exist")
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically."""
    atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_json(path: str | os.PathLike, value, *, durable: bool = False,
                      sort_keys: bool = False) -> None:
    """Replace ``path`` with ``value`` as indented JSON (and a final newline) atomically."""
    text = json.dumps(value, indent=2, sort_keys=sort_keys) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
