"""PCA-whitening of global / regional descriptors, learned on another data set (pure numpy).

Tolias et al. learn the whitening on R-MAC region vectors of a different data set
(Paris6k for Oxford5k and vice versa) and apply ``l2 -> (x - mean) P -> l2`` to every
region vector.  The parameters are a :class:`d2r.features.pca.PCA`; this module adds
learning that stays fast when the dimension exceeds the number of samples (second-order
descriptors), the output dimension, and files (``.npy`` + JSON, no pickle).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2r.features.pca import PCA, load_pca
from d2r.cnn.pooling import l2_normalize

__all__ = ["Whitening", "learn_whitening", "load_whitening"]

logger = logging.getLogger(__name__)

_FILE = "whitening.json"


@dataclass(frozen=True)
class Whitening:
    """Learned PCA-whitening.

    Attributes:
        pca: mean, principal directions and their variances.
        dim: output dimension (<= ``pca.num_components``).
        whiten: divide by the square root of the variances (False: plain PCA).
    """

    pca: PCA
    dim: int
    whiten: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", self.pca.check_dim(self.dim, whiten=self.whiten))

    @property
    def input_dim(self) -> int:
        return self.pca.input_dim

    def apply(self, vectors) -> np.ndarray:
        """l2 -> PCA (-> whitening) -> l2: (N, D) -> (N, dim) float32 (a (D,) vector gives (dim,))."""
        x = np.asarray(vectors, dtype=np.float32)
        single = x.ndim == 1
        x = x.reshape(1, -1) if single else x
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"vectors must have shape (N, {self.input_dim}), got {np.shape(vectors)}")
        out = self.pca.transform(x, dim=self.dim, whiten=self.whiten)
        return out[0] if single else out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the PCA arrays and ``whitening.json`` (dim, whiten) into ``directory``."""
        out = self.pca.save(directory)
        tmp = out / f"{_FILE}.tmp"
        tmp.write_text(json.dumps({"dim": self.dim, "whiten": self.whiten}) + "\n")
        os.replace(tmp, out / _FILE)
        return out


def load_whitening(directory: str | os.PathLike) -> Whitening:
    """Read a directory written by :meth:`Whitening.save`."""
    path = Path(directory) / _FILE
    try:
        meta = json.loads(path.read_text())
        dim, whiten = int(meta["dim"]), bool(meta["whiten"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read whitening parameters ({exc})") from exc
    return Whitening(load_pca(directory), dim=dim, whiten=whiten)


def learn_whitening(vectors, *, dim: int | None = None, whiten: bool = True) -> Whitening:
    """Learn PCA-whitening from (N, D) vectors (l2-normalized here first, as they are when applied).

    Args:
        vectors: (N, D) training vectors, from a data set other than the one searched
            (R-MAC: the l2-normalized region vectors of its images).
        dim: output dimension; default ``min(D, N - 1)``, the rank of the sample
            covariance.  Larger values are refused (their variances are zero).
        whiten: divide by the square roots of the variances.

    Returns:
        A :class:`Whitening`; components sorted by decreasing variance.
    """
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"vectors must have shape (N, D) with D > 0, got {x.shape}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"learning whitening needs at least 2 vectors, got {n}")
    rank = min(d, n - 1)
    keep = rank if dim is None else int(dim)
    if not 1 <= keep <= rank:
        raise ValueError(f"dim must be in [1, {rank}] for {n} vectors of dimension {d}, got {dim!r}")
    x = l2_normalize(x).astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    if n <= d:
        # Thin SVD: the principal directions are the right singular vectors.
        _, sing, vt = np.linalg.svd(centred, full_matrices=False)
        variances = sing[:keep] ** 2 / (n - 1)
        comps = vt[:keep]
    else:
        evals, evecs = np.linalg.eigh(centred.T @ centred / (n - 1))
        order = np.argsort(evals)[::-1][:keep]
        variances, comps = np.maximum(evals[order], 0.0), evecs[:, order].T
    signs = np.sign(comps[np.arange(keep), np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    tiny = variances <= 1e-10 * max(float(variances[0]), 1e-30)
    if whiten and tiny.any():
        raise ValueError(
            f"the training vectors span only {int((~tiny).sum())} directions; "
            f"choose dim <= {int((~tiny).sum())} or provide more varied vectors"
        )
    logger.info("learned whitening: %d vectors, %d -> %d dims", n, d, keep)
    pca = PCA(mean=mean, components=comps, variances=variances, num_samples=n)
    return Whitening(pca, dim=keep, whiten=whiten)
