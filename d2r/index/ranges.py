"""Contiguous id ranges of an index, each written as a standalone index (``save_ranges``).

Every index kind has ``save_ranges(bounds, paths, *, configs=None, overwrite=False)``:
entries ``bounds[s]:bounds[s+1]`` go to ``paths[s]`` as an index of the same kind
with ids renumbered from 0.  Sharding (:func:`d2r.distributed.split_index`) cuts a
database this way; :class:`IdRanges` checks the arguments once for every kind.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from d2r.index.storage import IndexWriter

__all__ = ["IdRange", "IdRanges", "RankedBySearch"]


class IdRange(NamedTuple):
    """Entries ``start:stop`` written to ``path`` with ``config`` in its manifest."""

    start: int
    stop: int
    path: Path
    config: dict[str, Any]


@dataclass(frozen=True)
class IdRanges:
    """Checked ``save_ranges`` arguments: ``bounds`` (S+1,) int64, S paths and S configs."""

    bounds: np.ndarray
    paths: tuple[Path, ...]
    configs: tuple[dict[str, Any], ...]

    @classmethod
    def check(cls, bounds: Sequence[int] | np.ndarray, paths: Sequence[str | os.PathLike],
              configs: Sequence[Mapping[str, Any]] | None, *, count: int,
              config: Mapping[str, Any]) -> "IdRanges":
        """Ranges over ``count`` entries; ``configs`` defaults to the index's own ``config``.

        Raises:
            ValueError: ``bounds`` not non-decreasing integers within ``[0, count]``, or
                not one more than ``paths`` (and ``configs``).
        """
        arr = np.asarray(bounds)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"bounds must be a 1-D integer array, got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.int64)
        if len(arr) != len(paths) + 1 or len(paths) == 0:
            raise ValueError(f"{len(arr)} bounds for {len(paths)} paths; expected one more "
                             "bound than paths, and at least one path")
        if arr[0] < 0 or arr[-1] > count or np.any(np.diff(arr) < 0):
            raise ValueError(f"bounds {arr.tolist()} must rise (non-strictly) within [0, {count}]")
        configs = [config] * len(paths) if configs is None else list(configs)
        if len(configs) != len(paths):
            raise ValueError(f"{len(configs)} configs for {len(paths)} paths")
        return cls(arr, tuple(Path(p) for p in paths), tuple(dict(c) for c in configs))

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[IdRange]:
        for s, (path, config) in enumerate(zip(self.paths, self.configs)):
            yield IdRange(int(self.bounds[s]), int(self.bounds[s + 1]), path, config)

    @contextlib.contextmanager
    def writers(self, kind: str, *, overwrite: bool) -> Iterator[list[IndexWriter]]:
        """One :class:`IndexWriter` per range; those left uncommitted are discarded on exit."""
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(IndexWriter(path, kind=kind, overwrite=overwrite))
                   for path in self.paths]


class RankedBySearch:
    """``ranking`` of an index kind whose ``search`` ranks by its float32 scores (the flat
    and region-vector kinds): shards of it merge on those scores exactly."""

    def ranking(self, queries: Any, *, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """``search(queries, k=k)`` as (Q, k) float64 scores and (Q, k) int64 ids."""
        result = self.search(queries, k=k)
        return result.scores.astype(np.float64), result.ids
