"""Several indexes of one kind searched as one: an updated index (:mod:`d2r.pipeline.update`).

An index that images were added to or removed from is a list of *segments*, each a
standalone index of the same kind (the build's, then one per ``d2r add``), plus the
names deleted from each.  Segment ``s``'s image ``i`` has the global id
``offsets[s] + i``; :attr:`SegmentedIndex.names` holds every segment's names in that
order, deleted ones included, so ids stay stable until the index is compacted.

A search asks every segment for its top ``k`` plus as many as it has deleted images,
drops the deleted ones and merges by score, equal scores ordered by image name: the
order a rebuild gives, whose ids follow the sorted names.  The scores are the
segments' own, so they equal a rebuild's wherever an image's score depends only on
the query and that image (every kernel d2r has: no collection statistics).
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np

from d2r.index.merge import merge_topk
from d2r.index.region_vectors import expand_regions
from d2r.types import SearchResult

__all__ = ["SegmentedIndex"]


class _Rows:
    """Rows of several arrays (N_s, ...) read by global id, as one (sum N_s, ...) array."""

    def __init__(self, parts: Sequence[np.ndarray], offsets: np.ndarray) -> None:
        self._parts, self._offsets = parts, offsets
        self.shape = (int(offsets[-1]), *parts[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every row, deleted images' included (a copy)."""
        return np.concatenate(self._parts).astype(dtype or self._parts[0].dtype, copy=False)

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        segment = np.searchsorted(self._offsets, ids, side="right") - 1
        out = np.empty(ids.shape + self.shape[1:], self._parts[0].dtype)
        for s in np.unique(segment):
            where = segment == s
            out[where] = self._parts[s][ids[where] - self._offsets[s]]
        return out


class SegmentedIndex:
    """Segments (indexes of one kind, oldest first) without their deleted images.

    Args:
        segments: the segment indexes, each with names.
        deleted: per segment, the names deleted from it.
    """

    def __init__(self, segments: Sequence[Any], deleted: Sequence[Collection[str]]) -> None:
        if not segments or len(deleted) != len(segments):
            raise ValueError(f"{len(segments)} segments with {len(deleted)} deletion lists")
        kinds = {segment.kind for segment in segments}
        if len(kinds) != 1:
            raise ValueError(f"segments of different kinds: {sorted(kinds)}")
        self.kind = kinds.pop()
        self.segments = list(segments)
        sizes = [len(segment) for segment in self.segments]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._names = tuple(name for segment in self.segments for name in segment.names)
        if len(self._names) != self.offsets[-1]:
            raise ValueError("every segment of an updated index must have image names")
        self._dead: list[np.ndarray] = []
        for segment, gone in zip(self.segments, deleted):
            position = {name: i for i, name in enumerate(segment.names)}
            unknown = [name for name in gone if name not in position]
            if unknown:
                raise ValueError(f"deleted image {unknown[0]!r} is not in its segment")
            self._dead.append(np.array(sorted(position[n] for n in gone), np.int64))
        self.alive = np.ones(len(self._names), bool)
        for offset, dead in zip(self.offsets, self._dead):
            self.alive[offset + dead] = False
        order = np.argsort(np.array(self._names, dtype=object), kind="stable")
        self._name_rank = np.empty(len(order), np.int64)
        self._name_rank[order] = np.arange(len(order))

    @property
    def names(self) -> tuple[str, ...]:
        """Every segment's image names by global id (deleted ones included)."""
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    @property
    def num_live(self) -> int:
        """Images not deleted."""
        return int(self.alive.sum())

    def segment_of(self, image_id: int) -> tuple[int, int]:
        """(segment, id inside it) of global id ``image_id``."""
        segment = int(np.searchsorted(self.offsets, image_id, side="right")) - 1
        return segment, int(image_id - self.offsets[segment])

    def ranking(self, queries: Any, *, k: int = 100, **options: Any
                ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` live images per query: (Q, k) scores and (Q, k) int64 global ids."""
        scores, ids = [], []
        for segment, offset, dead in zip(self.segments, self.offsets, self._dead):
            if len(segment) == len(dead):
                continue
            part_scores, part_ids = segment.ranking(queries, k=k + len(dead), **options)
            part_ids = np.where(part_ids >= 0, part_ids + offset, -1)
            gone = (part_ids >= 0) & ~self.alive[np.maximum(part_ids, 0)]
            scores.append(np.where(gone, -np.inf, part_scores))
            ids.append(np.where(gone, -1, part_ids))
        if not scores:  # every image deleted
            return (np.full((len(queries), k), -np.inf, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        return merge_topk(scores, ids, k, tie_rank=self._name_rank)

    def search(self, queries: Any, *, k: int = 100, **options: Any) -> SearchResult:
        scores, ids = self.ranking(queries, k=k, **options)
        return SearchResult(scores.astype(np.float32), ids, self.names)

    # What the CNN methods read from their (global / region-vector) index.

    @property
    def dim(self) -> int:
        return self.segments[0].dim

    @property
    def vectors(self) -> _Rows:
        """Database rows by global id (flat global and global+local kinds)."""
        return _Rows([segment.vectors for segment in self.segments], self.offsets)

    def expand(self, query: np.ndarray, ids: Sequence[int] | np.ndarray, *,
               top_k: int = 5) -> np.ndarray:
        """Query expansion of the region-vector kind over the segments (its ``expand``)."""
        ids = np.asarray(ids, np.int64)[: int(top_k)]
        blocks = [self.segments[s].regions_of(i)
                  for s, i in map(self.segment_of, ids[ids >= 0])]
        return expand_regions(np.asarray(query, np.float32), blocks)

    def close(self) -> None:
        for segment in self.segments:
            if hasattr(segment, "close"):
                segment.close()
