"""Dense float32 rows with their names: the storage and base class of the flat global indexes.

:class:`~d2r.index.global_index.GlobalIndex` keeps (N, D) rows,
:class:`~d2r.index.global_local.GlobalLocalIndex` (N, 2, D); both are a :class:`DenseIndex`:
batches are appended, the consolidated array is read-only, and it is saved as
``vectors.npy`` (memory-mapped when loaded) with the names and a manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from d2r.index.names import EntryNames
from d2r.index.ranges import IdRanges, RankedBySearch
from d2r.index.storage import IndexFormatError, IndexWriter, read_index

__all__ = ["DenseRows", "DenseIndex"]


class DenseRows:
    """Rows of shape ``row_shape`` added in batches; ids are positions.

    Args:
        row_shape: shape of one row, e.g. ``(D,)`` or ``(2, D)``.
    """

    def __init__(self, row_shape: tuple[int, ...]) -> None:
        self.row_shape = tuple(int(n) for n in row_shape)
        self._array = np.zeros((0, *self.row_shape), np.float32)
        self._parts: list[np.ndarray] = []
        self._names = EntryNames("images")

    def __len__(self) -> int:
        return int(self._array.shape[0]) + sum(int(p.shape[0]) for p in self._parts)

    @property
    def array(self) -> np.ndarray:
        """(N, *row_shape) float32, read-only."""
        if self._parts:
            self._array = np.concatenate([self._array, *self._parts])
            self._array.flags.writeable = False
            self._parts = []
        return self._array

    @property
    def names(self) -> tuple[str, ...]:
        """Names by id (empty when rows were added without names)."""
        return self._names.names

    def append(self, rows: np.ndarray, names: Sequence[str] | None) -> np.ndarray:
        """Add checked (n, *row_shape) float32 rows (and n names, or None); returns (n,) int64 ids."""
        names = self._names.check(names, rows.shape[0])
        first = len(self)
        if rows.shape[0]:
            self._parts.append(rows)
        self._names.append(names, rows.shape[0])
        return np.arange(first, first + rows.shape[0], dtype=np.int64)

    def part(self, start: int, stop: int) -> "DenseRows":
        """Rows ``start:stop`` (a view) with their names; ids from 0."""
        rows = DenseRows(self.row_shape)
        rows._array = self.array[start:stop]
        rows._names.restore(self.names[start:stop], stop - start)
        return rows

    def save(self, path: str | os.PathLike, *, kind: str, meta: Mapping[str, Any],
             config: Mapping[str, Any], overwrite: bool) -> Path:
        """Write ``vectors.npy``, names and a manifest (``meta`` + dim, count, dtype) atomically."""
        with IndexWriter(path, kind=kind, overwrite=overwrite) as writer:
            writer.put("vectors", self.array)
            full = {"dim": self.row_shape[-1], "num_images": len(self), "dtype": "float32", **meta}
            return writer.commit(meta=full, names=self.names, config=dict(config))

    @classmethod
    def load(cls, path: str | os.PathLike, *, kind: str, slots: tuple[int, ...], mmap: bool,
             verify: bool) -> tuple["DenseRows", dict]:
        """Rows saved by :meth:`save` as ``(N, *slots, D)`` and the stored config.

        Raises:
            IndexFormatError: as :func:`~d2r.index.storage.read_index`, bad metadata, a
                ``vectors.npy`` of another dtype / shape, or names that do not match.
        """
        stored = read_index(path, kind=kind, mmap=mmap, verify=verify)
        try:
            dim, num_images = int(stored.meta["dim"]), int(stored.meta["num_images"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{stored.path}/manifest.json has invalid {kind} index "
                                   f"metadata: {exc}") from exc
        if dim < 1:
            raise IndexFormatError(f"{stored.path}/manifest.json has dim {dim}, expected >= 1")
        vectors = stored.arrays.get("vectors")
        if vectors is None:
            raise IndexFormatError(f"{stored.path} lacks array vectors.npy")
        shape = (num_images, *slots, dim)
        if vectors.shape != shape or vectors.dtype != np.float32:
            raise IndexFormatError(f"{stored.path}/vectors.npy holds {vectors.dtype} {vectors.shape}, "
                                   f"expected float32 {shape}")
        if len(stored.names) not in (0, num_images):
            raise IndexFormatError(f"{stored.path}/names.json has {len(stored.names)} names for "
                                   f"{num_images} images")
        rows = cls((*slots, dim))
        rows._array = vectors
        rows._names.restore(stored.names, num_images)
        return rows, dict(stored.config)


class DenseIndex(RankedBySearch):
    """Base of the exhaustive indexes over dense rows of shape ``(*slots, dim)`` per image.

    Subclasses set ``kind``, ``slots`` and ``metric`` and implement ``add`` / ``search``.

    Args:
        dim: descriptor dimension D.
    """

    kind = ""
    slots: tuple[int, ...] = ()
    metric = ""

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.config: dict[str, Any] = {}
        self._rows = DenseRows((*self.slots, self.dim))

    def __len__(self) -> int:
        return self.num_images

    @property
    def vectors(self) -> np.ndarray:
        """(N, *slots, D) float32 database rows (read-only)."""
        return self._rows.array

    @property
    def num_images(self) -> int:
        return len(self._rows)

    @property
    def names(self) -> tuple[str, ...]:
        """Image names by id (empty when rows were added without names)."""
        return self._rows.names

    @property
    def nbytes(self) -> int:
        return self.num_images * int(np.prod(self.slots, dtype=np.int64)) * self.dim * 4

    def save(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write ``vectors.npy``, names and manifest to directory ``path`` atomically."""
        return self._rows.save(path, kind=self.kind, meta={"metric": self.metric},
                               config=self.config if config is None else config,
                               overwrite=overwrite)

    def save_ranges(self, bounds: Sequence[int] | np.ndarray, paths: Sequence[str | os.PathLike], *,
                    configs: Sequence[Mapping[str, Any]] | None = None,
                    overwrite: bool = False) -> list[Path]:
        """Write images ``bounds[s]:bounds[s+1]`` to ``paths[s]``, each a standalone index of
        this kind with ids from 0 and ``configs[s]`` (default: this index's config).

        Returns ``paths``.
        """
        ranges = IdRanges.check(bounds, paths, configs, count=self.num_images, config=self.config)
        out = []
        for r in ranges:
            part = type(self)(self.dim)
            part._rows = self._rows.part(r.start, r.stop)
            out.append(part.save(r.path, config=r.config, overwrite=overwrite))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = False):
        """Open a directory written by :meth:`save` (vectors memory-mapped by default).

        Raises:
            IndexFormatError: as :meth:`DenseRows.load`.
        """
        rows, config = DenseRows.load(path, kind=cls.kind, slots=cls.slots, mmap=mmap, verify=verify)
        index = cls(rows.row_shape[-1])
        index.config, index._rows = config, rows
        return index
