"""Regional search (D2R-ASMK*, "regional search" in Detect-to-Retrieve).

Every region of a database image (its detected boxes and, usually, the whole image) is
aggregated and indexed as a separate item of an :class:`~d2r.index.inverted.InvertedIndex`;
``item_to_image`` maps items to images.  A query is one aggregated item.  The image score
pools the query's similarity to the image's regions ``R_d``:

* ``pooling="max"`` (paper Eq. 3): ``S(q, d) = max_{r in R_d} s(q, r)``;
* ``pooling="avg"`` (paper Eq. 4): ``S(q, d) = (1/|R_d|) sum_{r in R_d} s(q, r)``.

The inverted file scores all items at once, so pooling is exact (no candidate cut-off):
items of one image are stored consecutively and pooled with ``np.maximum.reduceat`` /
``np.add.reduceat``.  Every image needs at least one item (an image without features is
indexed as an empty item and scores 0).  Memory grows with :attr:`items_per_image`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from d2r.index.inverted import InvertedIndex
from d2r.index.names import EntryNames
from d2r.index.ranges import IdRanges
from d2r.index.storage import IndexFormatError, IndexWriter, read_index
from d2r.index.registry import register_index
from d2r.index.topk import check_k, top_k, top_k_exact
from d2r.types import AggregatedImage, SearchResult

__all__ = ["RegionalIndex", "POOLINGS"]

POOLINGS = ("max", "avg")


@register_index
class RegionalIndex:
    """Regions indexed as items, searched by image.

    Args:
        num_words, dim, binary, vector_dtype: as for :class:`~d2r.index.inverted.InvertedIndex`.
    """

    kind = "regional"

    def __init__(self, *, num_words: int, dim: int, binary: bool,
                 vector_dtype: str = "float32") -> None:
        self.items = InvertedIndex(num_words=num_words, dim=dim, binary=binary,
                                   vector_dtype=vector_dtype)
        self.config: dict[str, Any] = {}
        self._item_to_image = np.zeros(0, np.int64)
        self._parts: list[np.ndarray] = []
        self._names = EntryNames("images")

    def __len__(self) -> int:
        return self.num_images

    @property
    def item_to_image(self) -> np.ndarray:
        """(num_items,) int64 image id of every item (non-decreasing)."""
        if self._parts:
            self._item_to_image = np.concatenate([self._item_to_image, *self._parts])
            self._parts = []
        return self._item_to_image

    @property
    def num_images(self) -> int:
        mapping = self.item_to_image
        return int(mapping[-1]) + 1 if mapping.size else 0

    @property
    def num_items(self) -> int:
        return self.items.num_items

    @property
    def items_per_image(self) -> float:
        """Average number of indexed regions per image (the database size factor; nan if empty)."""
        return self.num_items / self.num_images if self.num_images else float("nan")

    @property
    def names(self) -> tuple[str, ...]:
        """Image names by image id (empty when images were added without names)."""
        return self._names.names

    @property
    def nbytes(self) -> int:
        """Bytes of the item inverted file plus ``item_to_image`` (as saved)."""
        return self.items.nbytes + 8 * self.num_items

    def add(self, images: Sequence[Sequence[AggregatedImage]],
            names: Sequence[str] | None = None) -> np.ndarray:
        """Add images, each a non-empty sequence of its aggregated regions; returns image ids (n,) int64."""
        images = [list(regions) for regions in images]
        for i, regions in enumerate(images):
            if not regions:
                raise ValueError(f"images[{i}] has no regions; index at least the whole image")
        names = self._names.check(names, len(images))
        first = self.num_images
        ids = np.arange(first, first + len(images), dtype=np.int64)
        if not images:
            return ids
        self.items.add([region for regions in images for region in regions])
        self._parts.append(np.repeat(ids, [len(regions) for regions in images]))
        self._names.append(names, len(images))
        return ids

    def score_images(self, query: AggregatedImage, *, alpha: float = 3.0, tau: float = 0.0,
                     normalize: str = "both", pooling: str = "max") -> np.ndarray:
        """Pooled score of ``query`` against every image: (num_images,) float64."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        item_scores = self.items.score_all(query, alpha=alpha, tau=tau, normalize=normalize)
        mapping = self.item_to_image
        if mapping.size == 0:
            return np.zeros(0, np.float64)
        starts = np.flatnonzero(np.r_[True, mapping[1:] != mapping[:-1]])
        if pooling == "max":
            return np.maximum.reduceat(item_scores, starts)
        sums = np.add.reduceat(item_scores, starts)
        return sums / np.diff(np.r_[starts, mapping.size])

    def search(self, queries: Sequence[AggregatedImage], *, k: int = 100, alpha: float = 3.0,
               tau: float = 0.0, normalize: str = "both", pooling: str = "max") -> SearchResult:
        """Top-``k`` images per query by pooled region score (ids are image ids)."""
        queries = list(queries)
        k = check_k(k)
        out_scores = np.empty((len(queries), k), np.float32)
        out_ids = np.empty((len(queries), k), np.int64)
        for i, q in enumerate(queries):
            scores = self.score_images(q, alpha=alpha, tau=tau, normalize=normalize, pooling=pooling)
            out_scores[i], out_ids[i] = top_k(scores, k)
        return SearchResult(out_scores, out_ids, self.names)

    def ranking(self, queries: Sequence[AggregatedImage], *, k: int = 100, alpha: float = 3.0,
                tau: float = 0.0, normalize: str = "both",
                pooling: str = "max") -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as (Q, k) float64 pooled scores and (Q, k) int64 image ids.

        The ids are those of :meth:`search`; the scores are the float64 values they were
        ranked by (:func:`~d2r.index.topk.top_k_exact`), on which shards are merged.
        """
        queries = list(queries)
        k = check_k(k)
        out_scores = np.empty((len(queries), k))
        out_ids = np.empty((len(queries), k), np.int64)
        for i, q in enumerate(queries):
            scores = self.score_images(q, alpha=alpha, tau=tau, normalize=normalize, pooling=pooling)
            out_scores[i], out_ids[i] = top_k_exact(scores, k)
        return out_scores, out_ids

    def save(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write items, ``item_to_image`` and image names to directory ``path`` atomically."""
        config = dict(self.config if config is None else config)
        with IndexWriter(path, kind=self.kind, overwrite=overwrite) as writer:
            self.items._write_arrays(writer)
            writer.put("item_to_image", self.item_to_image)
            meta = {**self.items._meta(), "num_images": self.num_images}
            return writer.commit(meta=meta, names=self.names, config=config)

    def save_ranges(self, bounds: Sequence[int] | np.ndarray, paths: Sequence[str | os.PathLike], *,
                    configs: Sequence[Mapping[str, Any]] | None = None,
                    overwrite: bool = False) -> list[Path]:
        """Write images ``bounds[s]:bounds[s+1]`` (with all their regions) to ``paths[s]``,
        each a standalone regional index with image and item ids renumbered from 0.

        One pass over the item posting lists writes all ranges (see
        :meth:`InvertedIndex.save_ranges`).  Returns ``paths``.
        """
        ranges = IdRanges.check(bounds, paths, configs, count=self.num_images, config=self.config)
        mapping = self.item_to_image
        item_bounds = np.searchsorted(mapping, ranges.bounds, side="left")
        with ranges.writers(self.kind, overwrite=overwrite) as writers:
            metas = self.items._write_ranges(writers, item_bounds)
            out = []
            for s, (writer, r) in enumerate(zip(writers, ranges)):
                writer.put("item_to_image", mapping[item_bounds[s]:item_bounds[s + 1]] - r.start)
                meta = {**metas[s], "num_images": r.stop - r.start}
                out.append(writer.commit(meta=meta, names=self.names[r.start:r.stop], config=r.config))
            return out

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> "RegionalIndex":
        """Open a directory written by :meth:`save` (memory-mapped by default)."""
        stored = read_index(path, kind=cls.kind, mmap=mmap, verify=verify)
        items = InvertedIndex._from_stored(stored, names=())
        mapping = stored.arrays.get("item_to_image")
        if mapping is None:
            raise IndexFormatError(f"{stored.path} lacks array item_to_image.npy")
        num_images = int(stored.meta.get("num_images", -1))
        if mapping.shape != (items.num_items,) or mapping.dtype != np.int64:
            raise IndexFormatError(f"{stored.path}/item_to_image.npy holds {mapping.dtype} "
                                   f"{mapping.shape}, expected int64 ({items.num_items},)")
        steps = np.diff(mapping)
        if mapping.size and (mapping[0] != 0 or np.any((steps != 0) & (steps != 1))
                             or mapping[-1] + 1 != num_images):
            raise IndexFormatError(f"{stored.path}/item_to_image.npy must map items to images "
                                   f"0..{num_images - 1} in order, each image at least once")
        if len(stored.names) not in (0, num_images):
            raise IndexFormatError(f"{stored.path}/names.json has {len(stored.names)} names for "
                                   f"{num_images} images")
        index = cls.__new__(cls)
        index.items = items
        index.config = dict(stored.config)
        index._item_to_image = mapping
        index._parts = []
        index._names = EntryNames("images")
        index._names.restore(stored.names, int(mapping.size))
        return index
