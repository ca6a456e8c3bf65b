"""The quantizer of an index: how descriptors find their visual words.

``codebook.quantization`` chooses it: ``exact`` (faiss ``IndexFlatL2``, one BLAS product
with all K centroids), ``approximate`` (a faiss HNSW graph over the centroids, searched
with ``codebook.ef_search``), or ``auto`` (the default): approximate for codebooks of at
least :data:`d2r.config.AUTO_APPROXIMATE_WORDS` (16384) words, where exact quantization
dominates the build.

A build resolves ``auto`` (:func:`resolve`) and records the quantizer in ``index.json``
(``codebook.quantizer``, :func:`save_graph`).  The HNSW graph is built once and written
into the index (``codebooks/hnsw-<codebook sha256[:16]>-m<M>-efc<E>.faiss``) with its
SHA-256 (a rebuild reuses it); every later process that quantizes for the index
(queries, ``d2r add``, Ray workers) reads that file after checking it
(:func:`attach_graph`), so it uses the build's own graph and pays no construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from d2r.encoding.codebook import Codebook, hnsw_graph, set_hnsw_graph
from d2r.config import CodebookConfig, Config
from d2r.errors import InputError
from d2r.index.layout import inside
from d2r.io.atomic import atomic_write

__all__ = ["QuantizerError", "options", "resolve", "save_graph", "attach_graph"]

CODEBOOK_DIR = "codebooks"


class QuantizerError(InputError):
    """An index's quantizer file is missing, damaged, or not the one it was built with."""


def options(config: CodebookConfig, num_words: int) -> dict[str, Any]:
    """:func:`d2r.encoding.codebook.quantize` keyword arguments of the configured quantizer."""
    return {"mode": config.quantizer_mode(num_words), "ef_search": config.ef_search,
            "hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction}


def resolve(config: Config, num_words: int) -> Config:
    """``config`` with ``codebook.quantization: auto`` replaced by its meaning for a
    ``num_words`` codebook (what an index records, so that it keeps its quantizer)."""
    mode = config.codebook.quantizer_mode(num_words)
    return dataclasses.replace(config, codebook=dataclasses.replace(config.codebook,
                                                                     quantization=mode))


def save_graph(codebook: Codebook, config: CodebookConfig, out: Path,
               previous: Optional[dict] = None) -> Optional[dict]:
    """Write the HNSW graph of ``codebook`` into index directory ``out``; its ``index.json``
    record (``file`` relative to ``out``, ``sha256``, the graph's parameters), or None when
    the quantization is exact.

    ``previous``: the quantizer record of the index being rebuilt in ``out``; its graph is
    reused when it is this codebook's with these parameters and intact (a rebuild keeps
    its quantizer, and readers of the previous index never see their graph change).
    """
    if config.quantizer_mode(codebook.num_words) != "approximate":
        return None
    name = f"hnsw-{codebook.sha256[:16]}-m{config.hnsw_m}-efc{config.ef_construction}.faiss"
    record = {"kind": "hnsw", "file": f"{CODEBOOK_DIR}/{name}", "hnsw_m": config.hnsw_m,
              "ef_construction": config.ef_construction, "ef_search": config.ef_search}
    if previous and previous.get("file") == record["file"]:
        try:
            attach_graph(codebook, previous, out)
            return {**record, "sha256": previous["sha256"]}
        except QuantizerError:
            pass  # damaged or missing: built again below
    graph = hnsw_graph(codebook, hnsw_m=config.hnsw_m, ef_construction=config.ef_construction)
    data = faiss.serialize_index(graph).tobytes()
    path = out / record["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    return {**record, "sha256": hashlib.sha256(data).hexdigest()}


def attach_graph(codebook: Codebook, record: dict, index_dir: str | os.PathLike) -> None:
    """Make ``codebook`` quantize with the HNSW graph an index recorded (:func:`save_graph`),
    after checking that the file lies inside the index (else
    :class:`~d2r.index.layout.IndexManifestError`, before it is read), its SHA-256, and
    that it indexes this codebook's centroids."""
    path = inside(Path(index_dir), record["file"], "codebook.quantizer.file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QuantizerError(f"the quantizer graph {path} of index {index_dir} cannot be read "
                             f"({exc.strerror or exc}); rebuild the index") from None
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise QuantizerError(f"the quantizer graph {path} is damaged (its SHA-256 differs "
                             f"from index.json's); rebuild the index")
    graph = faiss.deserialize_index(np.frombuffer(data, np.uint8))
    try:
        if not isinstance(graph, faiss.IndexHNSWFlat):
            raise ValueError(f"it holds a {type(graph).__name__}, not an HNSW graph")
        set_hnsw_graph(codebook, graph, hnsw_m=record["hnsw_m"],
                       ef_construction=record["ef_construction"])
    except ValueError as exc:
        raise QuantizerError(f"the quantizer graph {path} is not the one of index {index_dir} "
                             f"({exc}); rebuild the index") from None
