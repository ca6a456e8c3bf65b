"""Exhaustive best-region-pair index for regional CNN descriptors (after Jeong et al.).

Every database image ``x`` is described by ``R_x >= 1`` l2-normalized region vectors (D,),
the first being the whole image by convention (:func:`d2r.cnn.regional.region_vectors`
on :func:`d2r.cnn.salient_regions.salient_regions`).  A query is a set of ``R_q >= 1``
region vectors, and an image is as similar as its best pair of regions::

    S(q, x) = max_{r in q, s in x} <r, s>

The regions of all images are one (total R, D) float32 matrix (``vectors.npy``, memory-mapped
when loaded) with ``offsets`` (N+1,) int64: image ``i`` owns rows ``offsets[i]:offsets[i+1]``.
Search is exact and vectorized: the query-region x database-region inner products are
computed for a chunk of database rows at a time (whole images, about ``_BLOCK_BYTES`` of
scores), maximized over each query's regions, pooled over each image's regions with
``np.maximum.reduceat``, and the chunk's best ``k`` images are merged into the running
top ``k``, so memory stays bounded whatever the database size.  :meth:`RegionVectorIndex.expand`
is Jeong et al.'s query expansion.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from d2r.index.names import EntryNames
from d2r.index.ranges import IdRanges, RankedBySearch
from d2r.index.storage import IndexFormatError, IndexWriter, read_index
from d2r.index.registry import register_index
from d2r.index.topk import check_k
from d2r.types import SearchResult

__all__ = ["RegionVectorIndex", "expand_regions"]

# Bytes of float32 inner products computed at once (query regions x database regions).
_BLOCK_BYTES = 1 << 26
# Most query regions scored together (queries are split into blocks of about this many rows).
_QUERY_ROWS = 4096


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` divided by their l2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the best ``k`` entries of every row of ``scores`` (Q, M), k <= M, in column order.

    Among equal scores the lower column wins, so when columns are in increasing id order the
    selection is the top ``k`` by (score descending, id ascending).  Returns (Q, k) int64.
    """
    num_rows, m = scores.shape
    if k == m:
        return np.broadcast_to(np.arange(m, dtype=np.int64), (num_rows, m))
    threshold = np.partition(scores, m - k, axis=1)[:, m - k, None]
    above = scores > threshold
    tied = scores == threshold
    needed = k - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= needed))
    return np.nonzero(keep)[1].reshape(num_rows, k).astype(np.int64)


def expand_regions(query: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Every row of ``query`` (R_q, D) plus its best-matching row (inner product) of each
    block (R_i, D), best image first, l2-normalized: (R_q, D) float32."""
    total = query.astype(np.float64)
    for block in blocks:
        total += block[np.argmax(query @ block.T, axis=1)]
    return _l2_normalize(total)


@register_index
class RegionVectorIndex(RankedBySearch):
    """Region vectors of N images searched by best region pair (inner product).

    Args:
        dim: region descriptor dimension D.
    """

    kind = "global_regions"

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.config: dict[str, Any] = {}
        self._vectors = np.zeros((0, self.dim), np.float32)
        self._offsets = np.zeros(1, np.int64)
        self._vector_parts: list[np.ndarray] = []
        self._count_parts: list[np.ndarray] = []
        self._names = EntryNames("images")

    def __len__(self) -> int:
        return self.num_images

    def _consolidate(self) -> None:
        if self._count_parts:
            counts = np.concatenate(self._count_parts)
            self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(counts)])
            self._vectors = np.concatenate([self._vectors, *self._vector_parts])
            self._offsets.flags.writeable = False
            self._vectors.flags.writeable = False
            self._vector_parts, self._count_parts = [], []

    @property
    def vectors(self) -> np.ndarray:
        """(total R, D) float32 region vectors of all images, image by image (read-only)."""
        self._consolidate()
        return self._vectors

    @property
    def offsets(self) -> np.ndarray:
        """(N+1,) int64: image ``i`` owns rows ``offsets[i]:offsets[i+1]`` of :attr:`vectors` (read-only)."""
        self._consolidate()
        return self._offsets

    @property
    def num_images(self) -> int:
        return int(self._offsets.shape[0]) - 1 + sum(int(c.shape[0]) for c in self._count_parts)

    @property
    def num_regions(self) -> int:
        """Total number of region vectors (rows of :attr:`vectors`)."""
        return int(self._vectors.shape[0]) + sum(int(v.shape[0]) for v in self._vector_parts)

    @property
    def names(self) -> tuple[str, ...]:
        """Image names by id (empty when images were added without names)."""
        return self._names.names

    @property
    def nbytes(self) -> int:
        """Bytes of ``vectors`` plus ``offsets`` (as saved)."""
        return self.num_regions * self.dim * 4 + (self.num_images + 1) * 8

    def _regions(self, regions: np.ndarray, what: str) -> np.ndarray:
        """One image's or query's (R, D) float32 C-contiguous regions, R >= 1, finite."""
        arr = np.asarray(regions)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (R, {self.dim}) with R >= 1, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinite values")
        return arr

    def _stack(self, sets: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
        """Region sets -> (total R, D) float32 rows and (n,) int64 region counts."""
        arrays = [self._regions(r, f"{what}[{i}]") for i, r in enumerate(sets)]
        counts = np.array([a.shape[0] for a in arrays], np.int64)
        rows = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)
        return rows, counts

    def add(self, regions: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
        """Append images, each an (R_i, D) float32 array of R_i >= 1 region vectors.

        Args:
            regions: n arrays (R_i, D), l2-normalized, whole image first by convention.
            names: n image names, or None (every batch named, or none).

        Returns:
            (n,) int64 image ids.
        """
        rows, counts = self._stack(regions, "regions")
        names = self._names.check(names, counts.shape[0])
        first = self.num_images
        ids = np.arange(first, first + counts.shape[0], dtype=np.int64)
        if counts.shape[0]:
            self._vector_parts.append(rows)
            self._count_parts.append(counts)
        self._names.append(names, counts.shape[0])
        return ids

    def search(self, queries: Sequence[np.ndarray], *, k: int = 100) -> SearchResult:
        """Top-``k`` images of every query by best region pair (exact).

        Args:
            queries: Q arrays (R_q, D) float32 of R_q >= 1 query region vectors.
            k: results per query; rows are padded with id -1 / score -inf beyond N images.

        Returns:
            SearchResult with (Q, k) float32 scores ``max <r, s>`` descending (ties: lower id
            first) and (Q, k) int64 image ids.
        """
        rows, counts = self._stack(queries, "queries")
        k = check_k(k)
        num_queries = counts.shape[0]
        scores = np.full((num_queries, k), -np.inf, np.float32)
        ids = np.full((num_queries, k), -1, np.int64)
        if num_queries and self.num_images:
            starts = np.concatenate([[0], np.cumsum(counts)])
            first = 0
            while first < num_queries:
                last = max(first + 1, int(np.searchsorted(starts, starts[first] + _QUERY_ROWS, "right")) - 1)
                last = min(last, num_queries)
                block = rows[starts[first]:starts[last]]
                found_scores, found_ids = self._search_block(block, starts[first:last] - starts[first], k)
                scores[first:last, :found_ids.shape[1]] = found_scores
                ids[first:last, :found_ids.shape[1]] = found_ids
                first = last
        return SearchResult(scores, ids, self.names)

    def _search_block(self, rows: np.ndarray, starts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of the queries whose regions are ``rows`` (query j from row ``starts[j]``).

        Returns (Q, min(k, N)) float32 scores and int64 ids, best first.
        """
        vectors, offsets = self.vectors, self.offsets
        num_images = offsets.shape[0] - 1
        chunk_rows = max(1, _BLOCK_BYTES // (4 * rows.shape[0]))
        best_scores = np.zeros((starts.shape[0], 0), np.float32)
        best_ids = np.zeros((starts.shape[0], 0), np.int64)
        image = 0
        while image < num_images:
            end = int(np.searchsorted(offsets, offsets[image] + chunk_rows, "right")) - 1
            end = min(max(end, image + 1), num_images)
            lo, hi = int(offsets[image]), int(offsets[end])
            products = rows @ vectors[lo:hi].T                                  # (R_block, rows)
            per_query = np.maximum.reduceat(products, starts, axis=0)           # (Q, rows)
            per_image = np.maximum.reduceat(per_query, offsets[image:end] - lo, axis=1)  # (Q, images)
            cols = _top_columns(per_image, min(k, end - image))
            # Running ids are all below this chunk's, so the concatenation stays in id order.
            merged_scores = np.concatenate([best_scores, np.take_along_axis(per_image, cols, axis=1)], axis=1)
            merged_ids = np.concatenate([best_ids, cols + image], axis=1)
            keep = _top_columns(merged_scores, min(k, merged_scores.shape[1]))
            best_scores = np.take_along_axis(merged_scores, keep, axis=1)
            best_ids = np.take_along_axis(merged_ids, keep, axis=1)
            image = end
        order = np.lexsort((best_ids, -best_scores), axis=1)
        return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_ids, order, axis=1)

    def expand(self, query: np.ndarray, ids: Sequence[int] | np.ndarray, *, top_k: int = 5) -> np.ndarray:
        """Jeong et al.'s query expansion of one query's regions.

        Every query region plus its best-matching region (inner product) in each of the first
        ``top_k`` images of ``ids`` (entries -1 are skipped), l2-normalized.

        Args:
            query: (R_q, D) float32 query regions.
            ids: (n,) int64 image ids, best first (a row of :attr:`SearchResult.ids`).
            top_k: how many leading entries of ``ids`` to use (>= 0).

        Returns:
            (R_q, D) float32 expanded query regions.
        """
        q = self._regions(query, "query")
        if isinstance(top_k, bool) or int(top_k) != top_k or int(top_k) < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids[: int(top_k)].astype(np.int64)
        ids = ids[ids != -1]
        bad = ids[(ids < 0) | (ids >= self.num_images)]
        if bad.size:
            raise ValueError(f"ids holds image id {int(bad[0])} outside [0, {self.num_images})")
        return expand_regions(q, [self.regions_of(int(i)) for i in ids])

    def regions_of(self, image_id: int) -> np.ndarray:
        """(R_i, D) float32 region vectors of image ``image_id``."""
        offsets = self.offsets
        return self.vectors[offsets[image_id]:offsets[image_id + 1]]

    def save(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write ``vectors.npy``, ``offsets.npy``, names and manifest to directory ``path`` atomically."""
        config = dict(self.config if config is None else config)
        with IndexWriter(path, kind=self.kind, overwrite=overwrite) as writer:
            writer.put("vectors", self.vectors)
            writer.put("offsets", self.offsets)
            meta = {"dim": self.dim, "num_images": self.num_images, "num_regions": self.num_regions,
                    "dtype": "float32", "metric": "best_region_pair_inner_product"}
            return writer.commit(meta=meta, names=self.names, config=config)

    def save_ranges(self, bounds: Sequence[int] | np.ndarray, paths: Sequence[str | os.PathLike], *,
                    configs: Sequence[Mapping[str, Any]] | None = None,
                    overwrite: bool = False) -> list[Path]:
        """Write images ``bounds[s]:bounds[s+1]`` (with their regions) to ``paths[s]``, each a
        standalone index with ids from 0 and ``configs[s]`` (default: this index's config).

        Returns ``paths``.
        """
        ranges = IdRanges.check(bounds, paths, configs, count=self.num_images, config=self.config)
        vectors, offsets = self.vectors, self.offsets
        out = []
        for r in ranges:
            part = RegionVectorIndex(self.dim)
            first, last = int(offsets[r.start]), int(offsets[r.stop])
            part._vectors, part._offsets = vectors[first:last], offsets[r.start:r.stop + 1] - first
            part._names.restore(self.names[r.start:r.stop], r.stop - r.start)
            out.append(part.save(r.path, config=r.config, overwrite=overwrite))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> RegionVectorIndex:
        """Open a directory written by :meth:`save` (arrays memory-mapped by default).

        Raises:
            IndexFormatError: as :func:`~d2r.index.storage.read_index`, or when the arrays'
                shapes / dtypes disagree with the manifest or the offsets are not
                0 = offsets[0] < offsets[1] < ... < offsets[N] = total R.
        """
        stored = read_index(path, kind=cls.kind, mmap=mmap, verify=verify)
        try:
            dim = int(stored.meta["dim"])
            num_images = int(stored.meta["num_images"])
            num_regions = int(stored.meta["num_regions"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{stored.path}/manifest.json has invalid global-regions index "
                                   f"metadata: {exc}") from exc
        if dim < 1 or num_images < 0:
            raise IndexFormatError(f"{stored.path}/manifest.json has dim {dim} and num_images "
                                   f"{num_images}; expected dim >= 1 and num_images >= 0")
        for name in ("vectors", "offsets"):
            if name not in stored.arrays:
                raise IndexFormatError(f"{stored.path} lacks array {name}.npy")
        vectors, offsets = stored.arrays["vectors"], stored.arrays["offsets"]
        if vectors.shape != (num_regions, dim) or vectors.dtype != np.float32:
            raise IndexFormatError(f"{stored.path}/vectors.npy holds {vectors.dtype} {vectors.shape}, "
                                   f"expected float32 ({num_regions}, {dim})")
        if offsets.shape != (num_images + 1,) or offsets.dtype != np.int64:
            raise IndexFormatError(f"{stored.path}/offsets.npy holds {offsets.dtype} {offsets.shape}, "
                                   f"expected int64 ({num_images + 1},)")
        if offsets[0] != 0 or offsets[-1] != num_regions or np.any(np.diff(offsets) < 1):
            raise IndexFormatError(f"{stored.path}/offsets.npy must rise strictly from 0 to "
                                   f"{num_regions} (every image at least one region)")
        if len(stored.names) not in (0, num_images):
            raise IndexFormatError(f"{stored.path}/names.json has {len(stored.names)} names for "
                                   f"{num_images} images")
        index = cls(dim)
        index.config = dict(stored.config)
        index._vectors, index._offsets = vectors, offsets
        index._names.restore(stored.names, num_images)
        return index
