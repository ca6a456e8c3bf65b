"""PCA (and optional whitening) of local descriptors, after the DELF reference (pure numpy).

Post-processing as in the reference: L2-normalize, subtract the mean, project on the
first ``dim`` principal directions, optionally divide by the square root of their
variances (whitening), L2-normalize again.  PCA is learned on L2-normalized
descriptors, the same input it is applied to.

Files: :meth:`PCA.save` writes a directory with ``mean.npy``, ``components.npy``,
``variances.npy`` and ``pca.json``; :func:`load_pca` reads such a directory or the
reference's datum files (``mean.datum``, ``pca_proj_mat.datum`` and optionally
``pca_variances.datum``, read with :func:`d2r.io.delf_files.read_datum`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PCA",
    "learn_pca",
    "load_pca",
    "l2_normalize",
    "postprocess_descriptors",
    "REFERENCE_DATUM_NAMES",
]

logger = logging.getLogger(__name__)

_EPS = 1e-12
"""Floor on squared norms and variances, as ``tf.nn.l2_normalize``'s epsilon."""

_FORMAT = "d2r.pca"
_VERSION = 1

REFERENCE_DATUM_NAMES = {
    "mean": "mean.datum",
    "components": "pca_proj_mat.datum",
    "variances": "pca_variances.datum",
}
"""File names of the DELF reference's PCA parameters (``delf_gld_20190411/pca/``)."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of (N, D) ``x`` divided by ``sqrt(max(|row|^2, 1e-12))``, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    return (x / np.sqrt(np.maximum(sq, _EPS))[:, None]).astype(np.float32)


@dataclass(frozen=True)
class PCA:
    """Learned PCA parameters.

    Attributes:
        mean: (D,) float32 mean of the (L2-normalized) training descriptors.
        components: (K, D) float32, orthonormal principal directions as rows, by
            decreasing variance (the reference's row-major projection matrix).
        variances: (K,) float32 variance along each component, or None when unknown
            (then whitening is unavailable).
        num_samples: number of descriptors it was learned from (0 if unknown).
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray | None = None
    num_samples: int = 0

    def __post_init__(self) -> None:
        mean = np.ascontiguousarray(np.asarray(self.mean, dtype=np.float32).reshape(-1))
        comp = np.ascontiguousarray(np.asarray(self.components, dtype=np.float32))
        if comp.ndim != 2 or comp.shape[1] != mean.shape[0]:
            raise ValueError(
                f"PCA components must have shape (K, {mean.shape[0]}) to match the mean, got {comp.shape}"
            )
        var = self.variances
        if var is not None:
            var = np.ascontiguousarray(np.asarray(var, dtype=np.float32).reshape(-1))
            if var.shape[0] < comp.shape[0]:
                raise ValueError(f"PCA has {comp.shape[0]} components but only {var.shape[0]} variances")
            var = var[: comp.shape[0]]
        for name, arr in (("mean", mean), ("components", comp), ("variances", var)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"PCA {name} contains NaN or infinite values")
            if arr is not None:
                arr.flags.writeable = False
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", comp)
        object.__setattr__(self, "variances", var)
        object.__setattr__(self, "num_samples", int(self.num_samples))

    @property
    def input_dim(self) -> int:
        """D, the descriptor dimension PCA applies to."""
        return int(self.mean.shape[0])

    @property
    def num_components(self) -> int:
        """K, the largest output dimension available."""
        return int(self.components.shape[0])

    def check_dim(self, dim: int, *, whiten: bool = False) -> int:
        """Validate an output dimension (and whitening availability); return it as int."""
        if isinstance(dim, bool) or int(dim) != dim or not 1 <= dim <= self.num_components:
            raise ValueError(f"PCA output dim must be an integer in [1, {self.num_components}], got {dim!r}")
        if whiten and self.variances is None:
            raise ValueError("whitening needs PCA variances, which these PCA parameters lack")
        return int(dim)

    def project(self, x: np.ndarray, *, dim: int, whiten: bool = False) -> np.ndarray:
        """``(x - mean) @ components[:dim].T``, divided by ``sqrt(variances[:dim])`` if ``whiten``.

        x: (N, D) -> (N, dim) float32.  No normalization here; see :meth:`transform`.
        """
        dim = self.check_dim(dim, whiten=whiten)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"descriptors must have shape (N, {self.input_dim}), got {x.shape}")
        out = (x - self.mean) @ self.components[:dim].T
        if whiten:
            out = out / np.sqrt(np.maximum(self.variances[:dim], _EPS))
        return out.astype(np.float32)

    def transform(self, x: np.ndarray, *, dim: int, whiten: bool = False) -> np.ndarray:
        """L2 -> PCA -> (whitening) -> L2, as the reference.  x: (N, D) -> (N, dim) float32."""
        return l2_normalize(self.project(l2_normalize(x), dim=dim, whiten=whiten))

    def fingerprint(self) -> str:
        """SHA-256 of the parameters (hex), for provenance records."""
        h = hashlib.sha256()
        for arr in (self.mean, self.components, self.variances):
            if arr is not None:
                h.update(str(arr.shape).encode())
                h.update(arr.tobytes())
        return h.hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``mean.npy``, ``components.npy``, ``variances.npy`` and ``pca.json`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "mean.npy", self.mean, allow_pickle=False)
        np.save(out / "components.npy", self.components, allow_pickle=False)
        if self.variances is not None:
            np.save(out / "variances.npy", self.variances, allow_pickle=False)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "input_dim": self.input_dim,
            "num_components": self.num_components,
            "has_variances": self.variances is not None,
            "num_samples": self.num_samples,
            "sha256": self.fingerprint(),
        }
        tmp = out / "pca.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out / "pca.json")
        return out


def learn_pca(
    descriptors: np.ndarray, *, dim: int | None = None, chunk_size: int = 65536
) -> PCA:
    """Learn PCA from a (N, D) sample of raw descriptors (L2-normalized here first).

    Eigen-decomposition of the (N-1)-normalized covariance in float64, accumulated in
    chunks of ``chunk_size`` rows.  Keeps ``dim`` components (default: all D), sorted by
    decreasing variance, each signed so that its largest-magnitude entry is positive.
    """
    x = np.asarray(descriptors)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"descriptors must have shape (N, D) with D > 0, got {x.shape}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"learning PCA needs at least 2 descriptors, got {n}")
    keep = d if dim is None else int(dim)
    if not 1 <= keep <= d:
        raise ValueError(f"dim must be in [1, {d}], got {dim!r}")
    total = np.zeros(d, np.float64)
    gram = np.zeros((d, d), np.float64)
    for start in range(0, n, chunk_size):
        block = l2_normalize(x[start : start + chunk_size]).astype(np.float64)
        total += block.sum(axis=0)
        gram += block.T @ block
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:keep]
    comps = evecs[:, order].T
    signs = np.sign(comps[np.arange(keep), np.argmax(np.abs(comps), axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    variances = np.maximum(evals[order], 0.0)
    logger.info("learned PCA: %d descriptors, %d -> %d dims", n, d, keep)
    return PCA(mean=mean, components=comps, variances=variances, num_samples=n)


def postprocess_descriptors(
    descriptors: np.ndarray, pca: PCA | None = None, *, dim: int | None = None, whiten: bool = False
) -> np.ndarray:
    """L2-normalize (N, D) descriptors; with ``pca`` also PCA (-> ``dim``), whitening, L2.

    Returns (N, dim) float32, or (N, D) without PCA.  ``dim`` defaults to all components.
    """
    if pca is None:
        if whiten:
            raise ValueError("whiten=True needs PCA parameters")
        return l2_normalize(descriptors)
    return pca.transform(descriptors, dim=pca.num_components if dim is None else dim, whiten=whiten)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read PCA array ({exc})") from exc


def _load_own(directory: Path) -> PCA:
    meta_path = directory / "pca.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{meta_path}: cannot read PCA metadata ({exc})") from exc
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(
            f"{meta_path}: not d2r PCA parameters of version {_VERSION} "
            f"(format={meta.get('format')!r}, version={meta.get('version')!r})"
        )
    variances = _load_npy(directory / "variances.npy") if meta.get("has_variances") else None
    pca = PCA(
        mean=_load_npy(directory / "mean.npy"),
        components=_load_npy(directory / "components.npy"),
        variances=variances,
        num_samples=int(meta.get("num_samples", 0)),
    )
    if pca.fingerprint() != meta.get("sha256"):
        raise ValueError(f"{directory}: PCA arrays do not match the checksum in pca.json")
    return pca


def _read_datum(path: Path) -> np.ndarray:
    """A reference DatumProto file as a float64 array of its recorded shape."""
    from d2r.io.delf_files import read_datum

    if not path.is_file():
        raise FileNotFoundError(f"{path}: PCA datum file does not exist")
    return np.asarray(read_datum(path), dtype=np.float64)


def _load_reference(directory: Path, *, mean_path=None, components_path=None, variances_path=None) -> PCA:
    mean_file = Path(mean_path) if mean_path else directory / REFERENCE_DATUM_NAMES["mean"]
    comp_file = Path(components_path) if components_path else directory / REFERENCE_DATUM_NAMES["components"]
    var_file = Path(variances_path) if variances_path else directory / REFERENCE_DATUM_NAMES["variances"]
    mean = _read_datum(mean_file)
    comps = _read_datum(comp_file)
    variances = _read_datum(var_file) if var_file.exists() else None
    return PCA(mean=mean, components=comps, variances=variances)


def load_pca(
    path: str | os.PathLike,
    *,
    mean_path: str | os.PathLike | None = None,
    components_path: str | os.PathLike | None = None,
    variances_path: str | os.PathLike | None = None,
) -> PCA:
    """Load PCA parameters from ``path``: a :meth:`PCA.save` directory or reference datum files.

    For reference files ``path`` is their directory; ``mean_path``, ``components_path``
    (``pca_proj_mat.datum``) and ``variances_path`` override individual file locations
    (as the reference config's ``mean_path`` etc. do).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: PCA parameter directory does not exist")
    if (directory / "pca.json").exists():
        return _load_own(directory)
    if mean_path or (directory / REFERENCE_DATUM_NAMES["mean"]).exists():
        return _load_reference(
            directory, mean_path=mean_path, components_path=components_path, variances_path=variances_path
        )
    raise ValueError(
        f"{directory}: neither d2r PCA parameters (pca.json) nor reference datum files "
        f"({REFERENCE_DATUM_NAMES['mean']}, {REFERENCE_DATUM_NAMES['components']})"
    )
