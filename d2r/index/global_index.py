"""Exhaustive inner-product index for global descriptors (VLAD, R-VLAD, MAC/R-MAC/GeM vectors).

The database is one (N, D) float32 matrix, stored as ``vectors.npy`` so that it memory-maps;
search is faiss's exhaustive inner-product k-NN (``faiss.knn`` with ``METRIC_INNER_PRODUCT``,
the kernel behind ``faiss.IndexFlatIP``) run directly on that matrix, in memory or mapped,
without copying it into a faiss index.  :meth:`GlobalIndex.to_faiss` builds the equivalent
``IndexFlatIP`` when a faiss object is wanted.
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

from d2r.index.dense import DenseIndex
from d2r.index.registry import register_index
from d2r.index.topk import check_k
from d2r.types import AggregatedImage, SearchResult

__all__ = ["GlobalIndex"]


@register_index
class GlobalIndex(DenseIndex):
    """Global descriptors searched by inner product.

    Args:
        dim: descriptor dimension D (K*D for VLAD over K words).
    """

    kind = "global"
    metric = "inner_product"

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
        return self._rows.append(self._as_matrix(vectors, "vectors"), names)

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
