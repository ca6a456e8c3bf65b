"""The Index protocol and the registry of index kinds.

Every search structure (inverted file, regional index, flat global index,
region-vector and global+local indexes, and kinds added by plugins) implements
:class:`Index` and is registered under its ``kind``, the name its directory's
``manifest.json`` records.  Drivers (building, the searcher, sharding,
splitting) look a kind up here and never name a class::

    cls = index_class(kind)          # unknown kind: UnknownIndexKind naming it
    index = open_index(directory)    # kind read from the directory's manifest
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from d2r.index.storage import MANIFEST_FILE, IndexFormatError
from d2r.registry import Registry
from d2r.types import SearchResult

__all__ = [
    "Index",
    "UnknownIndexKind",
    "register_index",
    "index_class",
    "index_kinds",
    "open_index",
    "stored_kind",
]



@runtime_checkable
class Index(Protocol):
    """A search structure over named database images.

    ``add`` takes the entries its retrieval method produces (aggregated images,
    per-region lists, descriptor rows) and returns their ids; ``search`` returns
    the top ``k`` ids per query, best first, with kind-specific keyword options
    (e.g. ``alpha``, ``tau``, ``normalize``, ``pooling`` for ASMK kernels).
    """

    kind: ClassVar[str]

    @property
    def names(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def add(self, items: Any, names: Sequence[str] | None = None) -> np.ndarray: ...

    def search(self, queries: Any, *, k: int = 100, **options: Any) -> SearchResult: ...

    def ranking(self, queries: Any, *, k: int = 100, **options: Any
                ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as (Q, k) scores in the precision they were ranked by (float64
        for the inverted kinds) and (Q, k) int64 ids: what shards are merged on."""
        ...

    def save(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path: ...

    def save_ranges(self, bounds: Sequence[int] | np.ndarray, paths: Sequence[str | os.PathLike],
                    *, configs: Sequence[Mapping[str, Any]] | None = None,
                    overwrite: bool = False) -> list[Path]:
        """Write images ``bounds[s]:bounds[s+1]`` to ``paths[s]``, each a standalone index of
        this kind with ids from 0 (sharding)."""
        ...

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> "Index": ...


class UnknownIndexKind(IndexFormatError):
    """An index kind no registered class serves."""


INDEX_KINDS = Registry("index kind", "kind", {
    "inverted": "d2r.index.inverted",
    "regional": "d2r.index.regional",
    "global": "d2r.index.global_index",
    "global_local": "d2r.index.global_local",
    "global_regions": "d2r.index.region_vectors",
}, error=UnknownIndexKind)
"""The index classes by kind (built-ins: kind -> the module that registers it)."""

register_index = INDEX_KINDS.register
index_kinds = INDEX_KINDS.names
index_class = INDEX_KINDS.get

SHARDED_SEARCH = Registry("sharded search", "executor", {
    "ray": "d2r.distributed.shards",
})
"""Search structures over an index split into shard indexes, by the executor that serves the
shards (built-in: ``ray``, :class:`d2r.distributed.shards.ShardedIndex`, one actor per shard).
The searcher opens shards through it, so the pipeline imports no executor."""

register_sharded = SHARDED_SEARCH.register
sharded_index_class = SHARDED_SEARCH.get


def stored_kind(path: str | os.PathLike) -> str:
    """The kind recorded in the manifest of index directory ``path``."""
    manifest = Path(path) / MANIFEST_FILE
    try:
        kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
    except FileNotFoundError:
        raise IndexFormatError(f"missing file {manifest}") from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise IndexFormatError(f"{manifest} is not a readable index manifest: {exc}") from exc
    if not isinstance(kind, str):
        raise IndexFormatError(f"{manifest} records no index kind")
    return kind


def open_index(path: str | os.PathLike, *, kind: str | None = None, mmap: bool = True,
               verify: bool = False) -> Index:
    """Load the index directory ``path`` with the class of its recorded kind.

    ``kind``, when given, must equal the recorded one.
    """
    recorded = stored_kind(path)
    if kind is not None and recorded != kind:
        raise IndexFormatError(f"{path} holds a {recorded!r} index, expected {kind!r}")
    return index_class(recorded).load(path, mmap=mmap, verify=verify)
