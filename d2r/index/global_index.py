"""Exhaustive inner-product index for global descriptors (VLAD, R-VLAD, MAC/R-MAC/GeM vectors).

The database is one (N, D) float32 matrix, stored as ``vectors.npy`` so that it memory-maps;
search is faiss's exhaustive inner-product k-NN (``faiss.knn`` with ``METRIC_INNER_PRODUCT``,
the kernel behind ``faiss.IndexFlatIP``) run directly on that matrix, in memory or mapped,
without copying it into a faiss index.  :meth:`GlobalIndex.to_faiss` builds the equivalent
``IndexFlatIP`` when a faiss object is wanted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import faiss
import numpy as np

from d2r.index.inverted import check_k
from d2r.index.names import EntryNames
from d2r.index.storage import IndexFormatError, IndexWriter, read_index
from d2r.types import AggregatedImage, SearchResult

__all__ = ["GlobalIndex"]


class GlobalIndex:
    """Global descriptors searched by inner product.

    Args:
        dim: descriptor dimension D (K*D for VLAD over K words).
    """

    kind = "global"

    def __init__(self, dim: int) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.config: dict[str, Any] = {}
        self._vectors = np.zeros((0, self.dim), np.float32)
        self._parts: list[np.ndarray] = []
        self._names = EntryNames("vectors")

    def __len__(self) -> int:
        return self.num_images

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float32 database matrix (read-only)."""
        if self._parts:
            self._vectors = np.concatenate([self._vectors, *self._parts])
            self._vectors.flags.writeable = False
            self._parts = []
        return self._vectors

    @property
    def num_images(self) -> int:
        return int(self._vectors.shape[0]) + sum(int(p.shape[0]) for p in self._parts)

    @property
    def names(self) -> tuple[str, ...]:
        """Image names by id (empty when vectors were added without names)."""
        return self._names.names

    @property
    def nbytes(self) -> int:
        return self.num_images * self.dim * 4

    def _as_matrix(self, x: np.ndarray | Sequence[AggregatedImage], what: str) -> np.ndarray:
        """(n, D) float32 C-contiguous from an array or a sequence of (VLAD) AggregatedImage."""
        if not isinstance(x, np.ndarray) and len(x) and isinstance(x[0], AggregatedImage):
            rows = []
            for i, item in enumerate(x):
                if not isinstance(item, AggregatedImage) or item.binary or item.vectors.size != self.dim:
                    raise ValueError(f"{what}[{i}] must be a float AggregatedImage with "
                                     f"{self.dim} values in total (e.g. a VLAD over all words)")
                rows.append(item.vectors.reshape(-1))
            x = np.stack(rows)
        arr = np.asarray(x)
        if arr.size == 0:
            arr = arr.reshape(0, self.dim)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (n, {self.dim}), got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinite values")
        return arr

    def add(self, vectors: np.ndarray | Sequence[AggregatedImage],
            names: Sequence[str] | None = None) -> np.ndarray:
        """Append (n, D) float32 descriptors (or VLAD AggregatedImages); returns ids (n,) int64."""
        arr = self._as_matrix(vectors, "vectors")
        names = self._names.check(names, arr.shape[0])
        first = self.num_images
        ids = np.arange(first, first + arr.shape[0], dtype=np.int64)
        if arr.shape[0]:
            self._parts.append(arr)
        self._names.append(names, arr.shape[0])
        return ids

    def search(self, queries: np.ndarray | Sequence[AggregatedImage], *, k: int = 100) -> SearchResult:
        """Top-``k`` database vectors by inner product for (Q, D) float32 ``queries``."""
        q = self._as_matrix(queries, "queries")
        k = check_k(k)
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        ids = np.full((q.shape[0], k), -1, np.int64)
        db = self.vectors
        kk = min(k, db.shape[0])
        if kk and q.shape[0]:
            found_scores, found_ids = faiss.knn(q, db, kk, metric=faiss.METRIC_INNER_PRODUCT)
            scores[:, :kk], ids[:, :kk] = found_scores, found_ids
        return SearchResult(scores, ids, self.names)

    def to_faiss(self) -> faiss.IndexFlatIP:
        """A ``faiss.IndexFlatIP`` holding a copy of the database vectors (same ids)."""
        index = faiss.IndexFlatIP(self.dim)
        if self.num_images:
            index.add(np.ascontiguousarray(self.vectors))
        return index

    def save(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write ``vectors.npy``, names and manifest to directory ``path`` atomically."""
        config = dict(self.config if config is None else config)
        with IndexWriter(path, kind=self.kind, overwrite=overwrite) as writer:
            writer.put("vectors", self.vectors)
            meta = {"dim": self.dim, "num_images": self.num_images, "dtype": "float32",
                    "metric": "inner_product"}
            return writer.commit(meta=meta, names=self.names, config=config)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, verify: bool = False) -> "GlobalIndex":
        """Open a directory written by :meth:`save` (vectors memory-mapped by default)."""
        stored = read_index(path, kind=cls.kind, mmap=mmap, verify=verify)
        try:
            dim, num_images = int(stored.meta["dim"]), int(stored.meta["num_images"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{stored.path}/manifest.json has invalid global-index "
                                   f"metadata: {exc}") from exc
        vectors = stored.arrays.get("vectors")
        if vectors is None:
            raise IndexFormatError(f"{stored.path} lacks array vectors.npy")
        if vectors.shape != (num_images, dim) or vectors.dtype != np.float32:
            raise IndexFormatError(f"{stored.path}/vectors.npy holds {vectors.dtype} {vectors.shape}, "
                                   f"expected float32 ({num_images}, {dim})")
        if len(stored.names) not in (0, num_images):
            raise IndexFormatError(f"{stored.path}/names.json has {len(stored.names)} names for "
                                   f"{num_images} images")
        index = cls(dim)
        index.config = dict(stored.config)
        index._vectors = vectors
        index._names.restore(stored.names, num_images)
        return index
