"""Visual-word codebook: k-means training, storage, and quantization.

A :class:`Codebook` holds K centroids of dimension D (float32) with the
metadata that identifies it (seed, training count, content hash).  It is
trained with faiss k-means (:func:`train_codebook`), stored as a directory of
plain files (:func:`save_codebook` / :func:`load_codebook`: ``centroids.npy``
plus ``codebook.json``, no pickle, memory-mappable), or read from the DELF
reference's TensorFlow k-means checkpoint (:func:`load_tf_checkpoint`).

:func:`quantize` assigns descriptors to their nearest centroids by L2
distance, either exactly (faiss ``IndexFlatL2``) or approximately (faiss HNSW
graph over the centroids, for codebooks of 65k words).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Optional, Union

import faiss
import numpy as np

from d2r import extras
from d2r.errors import InputError
from d2r.io.atomic import atomic_write, atomic_write_json
from d2r.progress import track

__all__ = [
    "Codebook",
    "CodebookFormatError",
    "train_codebook",
    "save_codebook",
    "load_codebook",
    "load_tf_checkpoint",
    "open_codebook",
    "quantize",
    "hnsw_graph",
    "set_hnsw_graph",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "d2r.codebook"
FORMAT_VERSION = 1
CENTROIDS_FILE = "centroids.npy"
METADATA_FILE = "codebook.json"
_INIT_METHODS = {
    "random": faiss.ClusteringInitMethod_RANDOM,
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
}


class CodebookFormatError(InputError):
    """A stored codebook is missing, corrupt, or inconsistent with its metadata."""


@dataclass(frozen=True, eq=False)
class Codebook:
    """K visual words of dimension D.

    Attributes:
        centroids: (K, D) float32, read-only (possibly memory-mapped).
        seed: k-means seed, or None when unknown (loaded from elsewhere).
        num_training: number of descriptors k-means ran on (0 when unknown).
        source: free-form provenance, e.g. ``"faiss-kmeans"``.

    Quantizer indexes built by :func:`quantize` are cached on the instance,
    so reuse one ``Codebook`` for many images.
    """

    centroids: np.ndarray
    seed: Optional[int] = None
    num_training: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        centroids = np.asanyarray(self.centroids)
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(f"centroids must have shape (K, D) with K, D >= 1, got {centroids.shape}")
        if centroids.dtype != np.float32 or not centroids.flags.c_contiguous:
            centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if not np.all(np.isfinite(centroids)):
            raise ValueError("centroids contain NaN or infinite values")
        if centroids.flags.writeable:
            # Own the data: the cached hash and quantizers must not go stale.
            centroids = centroids.copy()
            centroids.flags.writeable = False
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))
        if int(self.num_training) < 0:
            raise ValueError(f"num_training must be >= 0, got {self.num_training}")
        object.__setattr__(self, "centroids", centroids)
        object.__setattr__(self, "num_training", int(self.num_training))
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "_quantizers", {})

    @property
    def num_words(self) -> int:
        """Number of visual words K."""
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        return int(self.centroids.shape[1])

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the (K, D) little-endian float32 centroid bytes."""
        data = np.ascontiguousarray(self.centroids, dtype="<f4")
        return hashlib.sha256(memoryview(data).cast("B")).hexdigest()

    def metadata(self) -> dict:
        """JSON-serialisable description (what ``codebook.json`` stores)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "num_words": self.num_words,
            "dim": self.dim,
            "dtype": "float32",
            "seed": self.seed,
            "num_training": self.num_training,
            "source": self.source,
            "sha256": self.sha256,
        }


def _as_codebook(codebook: Union[Codebook, np.ndarray]) -> Codebook:
    return codebook if isinstance(codebook, Codebook) else Codebook(codebook, source="array")


def _as_descriptors(descriptors, dim: Optional[int], name: str = "descriptors") -> np.ndarray:
    """(N, D) C-contiguous float32 copy-free when possible; any empty input becomes (0, dim)."""
    arr = np.asarray(descriptors)
    if arr.size == 0 and dim is not None:
        return np.zeros((0, dim), np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have dimension {arr.shape[1]}, the codebook has {dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def train_codebook(
    descriptors: np.ndarray,
    num_words: int,
    *,
    seed: int = 0,
    max_points_per_word: int = 256,
    niter: int = 20,
    init: Literal["random", "kmeans++"] = "random",
    show_progress: Optional[bool] = None,
) -> Codebook:
    """Train a codebook with faiss k-means, one iteration at a time (for progress; each
    iteration starts from the previous centroids, which gives the centroids of one
    ``niter``-iteration faiss run).

    Args:
        descriptors: (N, D) float32 training descriptors, N >= num_words.
        num_words: codebook size K (typically 1k to 65k).
        seed: seeds both the subsampling and the k-means initialisation; a
            seed gives the same centroids on one faiss thread.
        max_points_per_word: at most ``num_words * max_points_per_word``
            descriptors (a seeded uniform subsample) are clustered.
        niter: k-means iterations.
        init: ``"random"`` descriptors as initial centroids (what the DELF
            reference's TF k-means does by default), or ``"kmeans++"``
            (better seeds, O(N K D) extra work: for small codebooks).
        show_progress: a bar of the iterations (None: on a terminal, else log lines).

    Returns:
        the trained :class:`Codebook` (source ``"faiss-kmeans"``).
    """
    x = _as_descriptors(descriptors, None)
    num_words = int(num_words)
    if num_words < 1:
        raise ValueError(f"num_words must be >= 1, got {num_words}")
    if x.shape[0] < num_words:
        raise ValueError(
            f"descriptors has {x.shape[0]} rows, fewer than num_words={num_words} centroids"
        )
    if int(max_points_per_word) < 1:
        raise ValueError(f"max_points_per_word must be >= 1, got {max_points_per_word}")
    if int(niter) < 1:
        raise ValueError(f"niter must be >= 1, got {niter}")
    if init not in _INIT_METHODS:
        raise ValueError(f"init must be one of {sorted(_INIT_METHODS)}, got {init!r}")
    if not 0 <= int(seed) < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    cap = num_words * int(max_points_per_word)
    if x.shape[0] > cap:
        rng = np.random.default_rng(int(seed))
        x = x[np.sort(rng.choice(x.shape[0], size=cap, replace=False))]
    logger.info("k-means: %d words over %d descriptors of dim %d", num_words, x.shape[0], x.shape[1])
    centroids = None
    for _ in track(range(int(niter)), desc="k-means", unit="iter", show=show_progress):
        kmeans = faiss.Kmeans(
            x.shape[1],
            num_words,
            niter=1,
            seed=int(seed),
            max_points_per_centroid=int(max_points_per_word),
            min_points_per_centroid=1,
            init_method=_INIT_METHODS[init],
            verbose=False,
        )
        kmeans.train(x, init_centroids=centroids)
        centroids = np.asarray(kmeans.centroids, dtype=np.float32).reshape(num_words, x.shape[1])
    return Codebook(centroids, seed=int(seed), num_training=x.shape[0], source="faiss-kmeans")


def save_codebook(codebook: Codebook, path: Union[str, os.PathLike]) -> Path:
    """Write ``codebook`` to directory ``path`` (created if needed).

    Writes ``centroids.npy`` (K, D) float32 and ``codebook.json`` (metadata
    with the SHA-256 of the centroids), each atomically, metadata last.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    centroids = np.ascontiguousarray(codebook.centroids, dtype="<f4")
    atomic_write(directory / CENTROIDS_FILE, lambda f: np.save(f, centroids, allow_pickle=False))
    atomic_write_json(directory / METADATA_FILE, codebook.metadata(), sort_keys=True)
    return directory


def load_codebook(
    path: Union[str, os.PathLike], *, mmap: bool = True, verify: bool = True
) -> Codebook:
    """Read a codebook directory written by :func:`save_codebook`.

    Args:
        path: the directory.
        mmap: memory-map ``centroids.npy`` read-only instead of reading it.
        verify: check the centroids' SHA-256 against the metadata.

    Raises:
        CodebookFormatError: missing files, unreadable or foreign metadata,
            pickled or mistyped arrays, shape or hash mismatch.
    """
    directory = Path(path)
    meta_path, array_path = directory / METADATA_FILE, directory / CENTROIDS_FILE
    for p in (meta_path, array_path):
        if not p.is_file():
            raise CodebookFormatError(f"codebook {directory}: missing {p.name}")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodebookFormatError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CodebookFormatError(f"{meta_path}: not a {FORMAT_NAME} metadata file")
    if meta.get("version") != FORMAT_VERSION:
        raise CodebookFormatError(
            f"{meta_path}: format version {meta.get('version')!r}, this reader supports {FORMAT_VERSION}"
        )
    required = ("num_words", "dim", "dtype", "seed", "num_training", "sha256")
    missing = [k for k in required if k not in meta]
    if missing:
        raise CodebookFormatError(f"{meta_path}: missing keys {missing}")
    try:
        centroids = np.load(array_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CodebookFormatError(f"{array_path}: not a plain .npy array ({exc})") from exc
    if centroids.dtype != np.dtype("<f4") or meta["dtype"] != "float32":
        raise CodebookFormatError(
            f"{array_path}: dtype {centroids.dtype} (metadata {meta['dtype']!r}), expected float32"
        )
    expected_shape = (meta["num_words"], meta["dim"])
    if centroids.shape != expected_shape:
        raise CodebookFormatError(
            f"{array_path}: shape {centroids.shape}, metadata says {expected_shape}"
        )
    try:
        codebook = Codebook(
            centroids,
            seed=meta["seed"],
            num_training=meta["num_training"],
            source=meta.get("source", ""),
        )
    except (TypeError, ValueError) as exc:
        raise CodebookFormatError(f"codebook {directory}: {exc}") from exc
    if verify and codebook.sha256 != meta["sha256"]:
        raise CodebookFormatError(
            f"{array_path}: SHA-256 {codebook.sha256} does not match the metadata's {meta['sha256']}"
        )
    return codebook


def open_codebook(path: Union[str, os.PathLike]) -> Codebook:
    """The codebook at ``path``: a directory written by :func:`save_codebook`, else the DELF
    reference's TensorFlow checkpoint (:func:`load_tf_checkpoint`)."""
    if (Path(path) / METADATA_FILE).is_file():
        return load_codebook(path)
    return load_tf_checkpoint(path)


def load_tf_checkpoint(path: Union[str, os.PathLike], *, variable: str = "clusters") -> Codebook:
    """Read the centroids of the DELF reference's TensorFlow k-means checkpoint.

    The reference trains its codebook with ``tf.compat.v1.estimator.experimental.KMeans``,
    whose checkpoint stores the (K, D) centroids under the key ``clusters``
    (``KMeansClustering.CLUSTER_CENTERS_VAR_NAME``).  TF2 object-based
    checkpoints (key ``clusters/.ATTRIBUTES/VARIABLE_VALUE``) are accepted too.
    TensorFlow is imported only when this function runs.

    Args:
        path: checkpoint prefix (e.g. ``.../k65536_codebook_tfckpt/codebook``)
            or a directory with a ``checkpoint`` state file.
        variable: the variable name.
    """
    tf = extras.tensorflow("reading the DELF reference's codebook checkpoint")
    try:
        reader = tf.train.load_checkpoint(os.fspath(path))
    except (ValueError, tf.errors.OpError) as exc:
        raise FileNotFoundError(f"cannot read TensorFlow checkpoint {path}: {exc}") from exc
    shapes = reader.get_variable_to_shape_map()
    candidates = [variable, f"{variable}/.ATTRIBUTES/VARIABLE_VALUE"]
    key = next((k for k in candidates if k in shapes), None)
    if key is None:
        raise CodebookFormatError(
            f"checkpoint {path} has no variable {variable!r}; it holds {sorted(shapes)}"
        )
    if len(shapes[key]) != 2:
        raise CodebookFormatError(
            f"checkpoint {path}: variable {key!r} has shape {shapes[key]}, expected (K, D)"
        )
    centroids = np.asarray(reader.get_tensor(key))
    if not np.issubdtype(centroids.dtype, np.floating):
        raise CodebookFormatError(
            f"checkpoint {path}: variable {key!r} has dtype {centroids.dtype}, expected float"
        )
    logger.info("read %s codebook %r from %s", centroids.shape, key, path)
    return Codebook(centroids.astype(np.float32), source=f"tf-checkpoint:{os.fspath(path)}")


def _quantizer(codebook: Codebook, mode: str, hnsw_m: int, ef_construction: int) -> faiss.Index:
    if mode == "approximate":
        return hnsw_graph(codebook, hnsw_m=hnsw_m, ef_construction=ef_construction)
    cache = codebook._quantizers  # type: ignore[attr-defined]
    if "exact" not in cache:
        index = faiss.IndexFlatL2(codebook.dim)
        index.add(np.ascontiguousarray(codebook.centroids))
        cache["exact"] = index
    return cache["exact"]


def hnsw_graph(codebook: Codebook, *, hnsw_m: int, ef_construction: int) -> faiss.IndexHNSWFlat:
    """The faiss HNSW graph over ``codebook``'s centroids with these parameters: the one
    set by :func:`set_hnsw_graph`, else built now (seconds for 65k words) and cached."""
    key = ("approximate", int(hnsw_m), int(ef_construction))
    cache = codebook._quantizers  # type: ignore[attr-defined]
    if key not in cache:
        index = faiss.IndexHNSWFlat(codebook.dim, int(hnsw_m))
        index.hnsw.efConstruction = int(ef_construction)
        index.add(np.ascontiguousarray(codebook.centroids))
        cache[key] = index
    return cache[key]


def set_hnsw_graph(codebook: Codebook, graph: faiss.IndexHNSWFlat, *, hnsw_m: int,
                   ef_construction: int) -> None:
    """Make ``codebook`` quantize approximately with ``graph`` (e.g. one an index stored),
    which must hold exactly its centroids, in order."""
    stored = faiss.vector_to_array(faiss.downcast_index(graph.storage).codes).view(np.float32)
    if graph.d != codebook.dim or not np.array_equal(stored.reshape(-1, graph.d),
                                                     codebook.centroids):
        raise ValueError(f"the HNSW graph does not hold the {codebook.num_words} x {codebook.dim} "
                         f"centroids of this codebook")
    cache = codebook._quantizers  # type: ignore[attr-defined]
    cache[("approximate", int(hnsw_m), int(ef_construction))] = graph


def quantize(
    descriptors: np.ndarray,
    codebook: Union[Codebook, np.ndarray],
    *,
    num_assignments: int = 1,
    mode: Literal["exact", "approximate"] = "exact",
    ef_search: int = 128,
    hnsw_m: int = 32,
    ef_construction: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest visual words of each descriptor by L2 distance.

    Args:
        descriptors: (N, D) float32.
        codebook: a :class:`Codebook` (its quantizer is cached) or (K, D) centroids.
        num_assignments: k, the number of nearest words per descriptor.
        mode: ``"exact"`` (faiss ``IndexFlatL2``) or ``"approximate"``
            (faiss ``IndexHNSWFlat`` over the centroids).
        ef_search: HNSW search breadth (approximate only; raised to k if lower).
        hnsw_m: HNSW graph degree (approximate only).
        ef_construction: HNSW build breadth (approximate only).

    Returns:
        words: (N, k) int64, nearest first.
        distances: (N, k) float32 squared L2 distances, ascending per row.
    """
    codebook = _as_codebook(codebook)
    x = _as_descriptors(descriptors, codebook.dim)
    k = int(num_assignments)
    if not 1 <= k <= codebook.num_words:
        raise ValueError(
            f"num_assignments must be in [1, {codebook.num_words}] (the codebook size), "
            f"got {num_assignments}"
        )
    if mode not in ("exact", "approximate"):
        raise ValueError(f"mode must be 'exact' or 'approximate', got {mode!r}")
    if mode == "approximate" and min(int(ef_search), int(hnsw_m), int(ef_construction)) < 1:
        raise ValueError(
            "ef_search, hnsw_m, ef_construction must be >= 1, "
            f"got {ef_search}, {hnsw_m}, {ef_construction}"
        )
    if x.shape[0] == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    index = _quantizer(codebook, mode, int(hnsw_m), int(ef_construction))
    if mode == "exact":
        distances, words = index.search(x, k)
    else:
        params = faiss.SearchParametersHNSW(efSearch=max(int(ef_search), k))
        distances, words = index.search(x, k, params=params)
        if np.any(words < 0):
            raise RuntimeError(
                f"HNSW returned fewer than {k} words for some descriptors; raise ef_search"
            )
    return np.ascontiguousarray(words, dtype=np.int64), np.ascontiguousarray(distances, dtype=np.float32)
