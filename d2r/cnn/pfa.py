"""Principal Feature Analysis (Lu et al., ACM MM 2007): select a subset of dimensions (pure numpy).

The rows of the first q principal directions (one row per original dimension) are
clustered into ``dim`` groups by k-means; from each group the dimension whose row
is closest to the group's centre is kept.  Unlike PCA the output is a subset of
the original dimensions, so it needs no projection at query time.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2r.cnn._kmeans import kmeans, squared_distances

__all__ = ["PFA", "learn_pfa", "load_pfa"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PFA:
    """Selected dimensions.

    Attributes:
        indices: (dim,) int64 selected input dimensions, ascending.
        input_dim: dimension D of the vectors it selects from.
    """

    indices: np.ndarray
    input_dim: int

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= self.input_dim or np.unique(idx).size != idx.size:
            raise ValueError(f"indices must be distinct values in [0, {self.input_dim}), got {idx.tolist()[:10]}...")
        idx = np.sort(idx)
        idx.flags.writeable = False
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "input_dim", int(self.input_dim))

    @property
    def dim(self) -> int:
        return int(self.indices.size)

    def select(self, vectors) -> np.ndarray:
        """(..., D) -> (..., dim) float32, the selected dimensions (not re-normalized)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"vectors must have last dimension {self.input_dim}, got shape {x.shape}")
        return x[..., self.indices]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the selection as JSON to ``path``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"input_dim": self.input_dim, "indices": self.indices.tolist()}) + "\n")
        os.replace(tmp, path)
        return path


def load_pfa(path: str | os.PathLike) -> PFA:
    """Read a selection written by :meth:`PFA.save`."""
    try:
        data = json.loads(Path(path).read_text())
        return PFA(np.asarray(data["indices"], np.int64), int(data["input_dim"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read a PFA selection ({exc})") from exc


def learn_pfa(vectors, *, dim: int, num_components: int | None = None, variance: float = 0.9,
              standardize: bool = True, seed: int = 0) -> PFA:
    """Learn which ``dim`` of the D dimensions of (N, D) ``vectors`` to keep.

    Args:
        vectors: (N, D) training vectors.
        dim: number of dimensions to keep (the paper's p).
        num_components: q, the number of principal directions whose rows are
            clustered; default the fewest explaining ``variance`` of the total, at most ``dim``.
        standardize: use the correlation matrix (unit-variance dimensions) instead of
            the covariance.
        seed: k-means seed.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"vectors must have shape (N, D) with N >= 2, got {x.shape}")
    n_dims = x.shape[1]
    if isinstance(dim, bool) or int(dim) != dim or not 1 <= dim <= n_dims:
        raise ValueError(f"dim must be an integer in [1, {n_dims}], got {dim!r}")
    x = x - x.mean(axis=0)
    if standardize:
        std = x.std(axis=0)
        x = x / np.where(std > 0, std, 1.0)
    evals, evecs = np.linalg.eigh(x.T @ x / (x.shape[0] - 1))
    order = np.argsort(evals)[::-1]
    evals, evecs = np.maximum(evals[order], 0.0), evecs[:, order]
    if num_components is None:
        explained = np.cumsum(evals) / max(float(evals.sum()), 1e-30)
        q = min(int(np.searchsorted(explained, variance - 1e-12) + 1), int(dim))
    else:
        q = int(num_components)
        if not 1 <= q <= n_dims:
            raise ValueError(f"num_components must be in [1, {n_dims}], got {num_components!r}")
    rows = evecs[:, :q]
    centres, labels = kmeans(rows, int(dim), seed=seed)
    d = squared_distances(rows, centres)
    chosen = []
    for c in range(int(dim)):
        members = np.flatnonzero(labels == c)
        if members.size:
            chosen.append(int(members[np.argmin(d[members, c])]))
    if len(chosen) < dim:
        # Empty clusters: fill with the unchosen dimensions nearest to any centre.
        rest = np.setdiff1d(np.arange(n_dims), chosen)
        chosen.extend(rest[np.argsort(d[rest].min(axis=1))][: int(dim) - len(chosen)].tolist())
    logger.info("PFA: %d -> %d dimensions (q=%d principal directions)", n_dims, dim, q)
    return PFA(np.asarray(chosen, np.int64), n_dims)
