"""Inverted file for ASMK-family aggregated images (ASMK, ASMK*, R-ASMK, R-ASMK*).

Posting lists are stored contiguously (CSR): ``offsets`` (K+1,) int64 indexes ``image_ids``
(P,) int32 and the payload, either ``codes`` (P, ceil(D/8)) uint8 packed sign bits or
``vectors`` (P, D) float32/float16.  ``item_lengths`` (N,) int32 holds each item's number of
words, for normalisation.  Within a posting list, items appear in ascending id order.

Building is incremental: :meth:`InvertedIndex.add` turns a batch into a word-sorted *run*
(one stable argsort) and keeps it pending; the runs are merged into the CSR arrays, word
block by word block (:mod:`d2r.index.posting_runs`), on the first
:meth:`~InvertedIndex.search` after an add (or :meth:`~InvertedIndex.finalize`), and directly
into the output files by :meth:`~InvertedIndex.save`.  :class:`InvertedIndexWriter` spills
every batch's run to disk, so indexes larger than memory are built in bounded RAM.

Search scores every database item at once per query: the per-word similarity ``u`` is
computed for all postings of all the query's words (binary codes: one gather of the
concatenated posting ranges, XOR + popcount, sigma by lookup in a table indexed by the
popcounts, see :func:`~d2r.index.match_kernel.code_kernel`; float vectors: one BLAS mat-vec
per query word over its contiguous posting slice, then
:func:`~d2r.index.match_kernel.vector_selectivity`) and accumulated per item in posting order
with ``np.bincount`` (so each item's sum is the sequential sum, in query-word order, that the
brute-force ``similarity_matrix`` computes); top-k by :mod:`d2r.index.topk`.  With numba, large
indexes (codes of whole 64-bit words, or float32 vectors) score in the compiled passes of
:mod:`d2r.index.compiled` instead (:attr:`InvertedIndex.backend`).
With ``normalize="both"`` the score equals ``similarity(query, item)`` of the aggregation
module::

    S(q, d) = sum_{w in W_q & W_d} sigma(u_w) / sqrt(|W_q| |W_d|),
    sigma(u) = sign(u) |u|^alpha if u > tau else 0,
    u_w = <x_w, y_w>  or, for D-bit codes,  1 - 2 Hamming(b_w, c_w) / D.

:class:`InvertedIndex` stays one class of about 540 lines because it is one data structure:
building, search and storage all read and write the same CSR triple, pending runs, item
lengths and cache (invalidated together on every add), and ``save``, ``save_ranges`` and
``load`` write and validate that one layout.  The parts with a job of their own live in
:mod:`d2r.index.posting_runs`, :mod:`d2r.index.match_kernel` and :mod:`d2r.index.topk`;
:class:`InvertedIndexWriter` stays beside the class as its out-of-core build, which moves
the index's pending runs to disk.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from d2r.encoding.aggregation import check_normalize
from d2r.index import compiled
from d2r.index.match_kernel import (CodeKernel, code_kernel, code_weights, sigma_by_distance,
                                    vector_selectivity)
from d2r.index.names import EntryNames
from d2r.index.posting_runs import (Run, merge_runs, merged_offsets, spill_run, stable_word_order,
                                    word_blocks)
from d2r.index.ranges import IdRanges
from d2r.index.storage import IndexFormatError, IndexWriter, StoredIndex, read_index
from d2r.index.registry import register_index
from d2r.index.topk import check_k, top_k_exact
from d2r.types import AggregatedImage, SearchResult

__all__ = ["AUTO_MIN_POSTINGS", "InvertedIndex", "InvertedIndexWriter", "BACKENDS"]

logger = logging.getLogger(__name__)

_GATHER_BYTES = 1 << 25  # bytes of gathered postings processed at once in search
_INT32_MAX = np.iinfo(np.int32).max
_VECTOR_DTYPES = ("float32", "float16")


BACKENDS = compiled.BACKENDS
"""How binary codes are scored: ``auto`` compiles when numba is installed and the index
holds at least :data:`AUTO_MIN_POSTINGS` postings; or forced."""

AUTO_MIN_POSTINGS = 1 << 23
"""Postings (about 14k images of 600 words) from which ``auto`` uses the compiled kernel."""


@register_index
class InvertedIndex:
    """In-memory (or memory-mapped) inverted file over aggregated images.

    Args:
        num_words: codebook size K.
        dim: descriptor dimension D.
        binary: whether items carry packed sign bits (ASMK*) instead of float vectors (ASMK).
        vector_dtype: storage dtype of float vectors, ``"float32"`` or ``"float16"``
            (ignored for binary indexes; queries are always computed in float32).
    """

    kind = "inverted"
    backend = "auto"
    """Scoring backend (:data:`BACKENDS`); ``auto`` defers to ``$D2R_BACKEND`` (or its former
    name ``$D2R_KERNEL``)."""

    def __init__(self, *, num_words: int, dim: int, binary: bool,
                 vector_dtype: str = "float32") -> None:
        if int(num_words) < 1:
            raise ValueError(f"num_words must be >= 1, got {num_words}")
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not binary and str(vector_dtype) not in _VECTOR_DTYPES:
            raise ValueError(f"vector_dtype must be one of {_VECTOR_DTYPES}, got {vector_dtype!r}")
        self.num_words = int(num_words)
        self.dim = int(dim)
        self.binary = bool(binary)
        self.vector_dtype = "uint8" if self.binary else str(vector_dtype)
        self.width = (self.dim + 7) // 8 if self.binary else self.dim
        self.config: dict[str, Any] = {}
        self._csr = Run(np.zeros(self.num_words + 1, np.int64), np.zeros(0, np.int32),
                         np.zeros((0, self.width), self.vector_dtype))
        self._pending: list[Run] = []
        self._lengths_parts: list[np.ndarray] = []
        self._lengths = np.zeros(0, np.int32)
        self._names = EntryNames("items")
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return self.num_items

    @property
    def num_items(self) -> int:
        """Number of indexed items N (images, or regions in a regional index)."""
        return int(self.item_lengths.shape[0])

    @property
    def num_postings(self) -> int:
        """Total number of posting entries P (= sum of item lengths)."""
        return int(self._csr.ids.shape[0]) + sum(int(r.ids.shape[0]) for r in self._pending)

    @property
    def item_lengths(self) -> np.ndarray:
        """(N,) int32 number of words of each item."""
        if self._lengths_parts:
            self._lengths = np.concatenate([self._lengths, *self._lengths_parts])
            self._lengths_parts = []
        return self._lengths

    @property
    def names(self) -> tuple[str, ...]:
        """Item names by id (empty when items were added without names)."""
        if "names" not in self._cache:
            self._cache["names"] = self._names.names
        return self._cache["names"]

    @property
    def nbytes(self) -> int:
        """Bytes of the posting arrays, offsets and item lengths (as saved)."""
        row = 4 + np.dtype(self.vector_dtype).itemsize * self.width
        return self.num_postings * row + 8 * (self.num_words + 1) + 4 * self.num_items

    @property
    def bytes_per_posting(self) -> float:
        """:attr:`nbytes` divided by the number of postings (nan when empty)."""
        return self.nbytes / self.num_postings if self.num_postings else float("nan")

    def posting_lengths(self) -> np.ndarray:
        """(K,) int64 number of postings of every visual word."""
        self.finalize()
        return np.diff(self._csr.offsets)

    def posting_list(self, word: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (n,) int32 and payload (n, width) of visual word ``word``."""
        if not 0 <= int(word) < self.num_words:
            raise ValueError(f"word {word} is outside the codebook [0, {self.num_words})")
        self.finalize()
        lo, hi = int(self._csr.offsets[word]), int(self._csr.offsets[word + 1])
        return self._csr.ids[lo:hi], self._csr.payload[lo:hi]

    # ------------------------------------------------------------------ building

    def _check_item(self, what: str, item: Any) -> None:
        if not isinstance(item, AggregatedImage):
            raise TypeError(f"{what} must be an AggregatedImage, got {type(item).__name__}")
        if item.dim != self.dim or item.binary != self.binary:
            raise ValueError(f"{what} has dim={item.dim}, binary={item.binary}; this index "
                             f"holds dim={self.dim}, binary={self.binary}")
        if len(item) and int(item.words[-1]) >= self.num_words:
            raise ValueError(f"{what} has word {int(item.words[-1])} outside the codebook "
                             f"[0, {self.num_words})")

    def add(self, items: Sequence[AggregatedImage],
            names: Sequence[str] | None = None) -> np.ndarray:
        """Append a batch of items; returns their ids (n,) int64 (consecutive from N).

        Items added with names must always be added with names (and vice versa).  The batch
        becomes a pending run; it is merged into the CSR arrays on the next search.
        """
        items = list(items)
        for i, item in enumerate(items):
            self._check_item(f"items[{i}]", item)
        names = self._names.check(names, len(items))
        first = self.num_items
        if first + len(items) > _INT32_MAX:
            raise ValueError(f"an index holds at most {_INT32_MAX} items")
        ids = np.arange(first, first + len(items), dtype=np.int64)
        if not items:
            return ids
        lengths = np.fromiter((len(it) for it in items), dtype=np.int32, count=len(items))
        self._pending.append(self._make_run(items, lengths, first))
        self._lengths_parts.append(lengths)
        self._names.append(names, len(items))
        self._cache.clear()
        return ids

    def _make_run(self, items: list[AggregatedImage], lengths: np.ndarray, first: int) -> Run:
        words = np.concatenate([it.words for it in items])
        payload = np.concatenate([it.vectors for it in items]).astype(self.vector_dtype, copy=False)
        ids = np.repeat(np.arange(first, first + len(items), dtype=np.int32), lengths)
        order = stable_word_order(words, self.num_words)
        offsets = np.zeros(self.num_words + 1, np.int64)
        np.cumsum(np.bincount(words, minlength=self.num_words), out=offsets[1:])
        return Run(offsets, np.take(ids, order), np.take(payload, order, axis=0))

    def finalize(self) -> None:
        """Merge pending runs into the CSR arrays (in memory; a memory-mapped base is copied)."""
        if not self._pending:
            return
        if len(self._pending) == 1 and self._csr.ids.shape[0] == 0:
            self._csr, self._pending = self._pending[0], []
            self._cache.clear()
            return
        runs = [self._csr, *self._pending]
        offsets = merged_offsets(runs)
        total = int(offsets[-1])
        ids = np.empty(total, np.int32)
        payload = np.empty((total, self.width), self.vector_dtype)
        merge_runs(runs, offsets, ids, payload)
        self._csr = Run(offsets, ids, payload)
        self._pending = []
        self._cache.clear()
        logger.debug("merged %d runs into %d postings", len(runs) - 1, total)

    def _shallow_copy(self) -> "InvertedIndex":
        """A new index sharing this one's arrays; adding to either leaves the other unchanged."""
        other = InvertedIndex.__new__(InvertedIndex)
        other.__dict__.update(self.__dict__)
        other.config = dict(self.config)
        other._pending = list(self._pending)
        other._lengths_parts = list(self._lengths_parts)
        other._names = self._names.copy()
        other._cache = {}
        return other

    # ------------------------------------------------------------------ search

    def _inv_sqrt_lengths(self) -> np.ndarray:
        if "inv_sqrt" not in self._cache:
            lengths = self.item_lengths.astype(np.float64)
            inv = np.zeros_like(lengths)
            np.divide(1.0, np.sqrt(lengths), out=inv, where=lengths > 0)
            self._cache["inv_sqrt"] = inv
        return self._cache["inv_sqrt"]

    def score_all(self, query: AggregatedImage, *, alpha: float = 3.0, tau: float = 0.0,
                  normalize: str = "both") -> np.ndarray:
        """Similarity of ``query`` to every item: (N,) float64.

        ``normalize``: ``"both"`` divides by sqrt(|W_q| |W_d|), ``"query"`` by
        sqrt(|W_q|) only, ``"none"`` not at all.  Items sharing no word with the
        query score 0.
        """
        self._check_item("query", query)
        return self._score(query, float(alpha), float(tau), check_normalize(normalize))

    def _score(self, query: AggregatedImage, alpha: float, tau: float,
               normalize: str) -> np.ndarray:
        """:meth:`score_all` of a checked query (``normalize`` canonical)."""
        scores = self._raw_scores(query, alpha, tau)
        if scores is None:
            return np.zeros(self.num_items, np.float64)
        factors, divisor = self._normalization(len(query), normalize)
        if len(factors):
            scores *= factors / divisor
        elif divisor:
            scores /= divisor
        return scores

    def _normalization(self, num_query_words: int, normalize: str) -> tuple[np.ndarray, float]:
        """Scores are multiplied by ``factors / divisor`` (``factors`` empty: divided by
        ``divisor``; ``divisor`` 0: unchanged)."""
        none = np.zeros(0, np.float64)
        if normalize == "both":
            return self._inv_sqrt_lengths(), float(np.sqrt(num_query_words))
        if normalize == "query":
            return none, float(np.sqrt(num_query_words))
        return none, 0.0

    def _top(self, query: AggregatedImage, k: int, alpha: float, tau: float,
             normalize: str) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` items: (k,) float64 scores and (k,) int64 ids (-inf / -1 padded),
        by score then lower id; selected in the compiled pass when it applies."""
        if self.num_items and len(query) and self._compiled():
            scores = self._raw_scores(query, alpha, tau)
            factors, divisor = self._normalization(len(query), normalize)
            kk = min(k, self.num_items)
            values, ids = compiled.normalized_top_k(scores, factors, divisor, kk)
            if kk == k:
                return values, ids
            return (np.concatenate([values, np.full(k - kk, -np.inf)]),
                    np.concatenate([ids, np.full(k - kk, -1, np.int64)]))
        return top_k_exact(self._score(query, alpha, tau, normalize), k)

    def _raw_scores(self, query: AggregatedImage, alpha: float, tau: float) -> np.ndarray | None:
        """Unnormalized scores of every item, (N,) float64; None when no posting is shared."""
        self.finalize()
        n_items = self.num_items
        nq = len(query)
        scores = None
        if nq and n_items and self._compiled():
            _, db_ids, payload = self._csr
            if self.binary:
                scores = compiled.binary_scores(
                    self._csr.offsets, db_ids, payload.view(np.uint64),
                    query.words, np.ascontiguousarray(query.vectors).view(np.uint64),
                    self._sigma(alpha, tau), n_items)
            else:
                scores = compiled.float_scores(self._csr.offsets, db_ids, payload, query.words,
                                               query.vectors, alpha, tau, n_items)
        elif nq and n_items:
            offsets = self._csr.offsets
            starts = offsets.take(query.words)
            lengths = offsets[1:].take(query.words)
            lengths -= starts
            ends = lengths.cumsum()
            first = ends - lengths  # where each word's postings start among the query's
            total = int(ends[-1])
            # temporaries per posting: position, id, weight, and for codes the XOR operands
            row_bytes = 24 + (2 * self.width if self.binary else 0)
            budget = max(1, _GATHER_BYTES // row_bytes)
            lo = 0
            while lo < nq:
                before = int(first[lo])
                if total - before <= budget:
                    hi = nq
                else:
                    hi = max(lo + 1, int(np.searchsorted(ends, before + budget, side="right")))
                n = int(ends[hi - 1]) - before
                if n:
                    at = first[lo:hi] - before if before else first[lo:hi]
                    ids, weights = self._posting_weights(query, lo, hi, starts[lo:hi],
                                                         lengths[lo:hi], at, n, alpha, tau)
                    # both add in posting order: every item's sum is the same sequential sum
                    # from 0.0 in query-word order, however the postings are chunked
                    if scores is None:
                        scores = np.bincount(ids, weights=weights, minlength=n_items)
                    else:
                        np.add.at(scores, ids, weights)
                lo = hi
        return scores

    def _compiled(self) -> bool:
        """Whether to score with :mod:`d2r.index.compiled`: ``backend`` is ``"compiled"``, or
        ``"auto"``, numba is installed and the index is large enough; for binary codes of
        whole 64-bit words or float32 vectors, in posting lists of ascending ids (checked
        once)."""
        choice = compiled.requested_backend(self.backend, "the inverted file's backend")
        if choice == "numpy" or (self.width % 8 if self.binary else self.vector_dtype != "float32"):
            return False
        if choice == "auto" and self.num_postings < AUTO_MIN_POSTINGS:
            return False  # loading the compiled code (~0.5 s per process) would not pay off
        if not compiled.AVAILABLE:
            if choice == "compiled":
                raise RuntimeError(compiled.unavailable_reason())
            return False
        if "ascending" not in self._cache:
            offsets, ids = self._csr.offsets, self._csr.ids
            falls = np.flatnonzero(np.diff(ids) < 0) + 1  # positions where an id decreases
            self._cache["ascending"] = bool(np.all(np.isin(falls, offsets)))
        return self._cache["ascending"]

    def _sigma(self, alpha: float, tau: float) -> np.ndarray:
        key = ("sigma", alpha, tau)
        if key not in self._cache:
            self._cache[key] = sigma_by_distance(self.dim, alpha=alpha, tau=tau)
        return self._cache[key]

    def _code_kernel(self, alpha: float, tau: float) -> CodeKernel:
        """The :class:`CodeKernel` of this index's codes for (alpha, tau), cached."""
        key = ("code_kernel", alpha, tau)
        if key not in self._cache:
            self._cache[key] = code_kernel(self.dim, alpha=alpha, tau=tau)
        return self._cache[key]

    def _posting_weights(self, query: AggregatedImage, lo: int, hi: int, starts: np.ndarray,
                         lengths: np.ndarray, first: np.ndarray, n: int, alpha: float,
                         tau: float) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (n,) int32 and sigma(u) (n,) float64 of the postings of query words [lo, hi).

        ``starts``, ``lengths``: the words' posting ranges; ``first``: where each word's
        postings start in the output; ``n`` > 0: their total.  Binary codes, fully
        vectorised: the posting ranges are gathered in one ``take`` (codes viewed as the
        widest unsigned words) and XORed in place with the repeated query codes;
        :func:`code_weights` turns the XORs into sigma.  Float vectors: one BLAS mat-vec per
        query word over its contiguous posting slice (no gathered copies; measured >10x
        faster than gathering rows and query vectors per posting), then
        :func:`vector_selectivity`.
        """
        # positions are in range by construction (validated offsets): take skips bounds checks
        pos = (starts - first).repeat(lengths)
        pos += np.arange(n, dtype=np.int64)
        _, db_ids, payload = self._csr
        if self.binary:
            kernel = self._code_kernel(alpha, tau)
            q_codes = np.ascontiguousarray(query.vectors[lo:hi]).view(kernel.view)
            xor = payload.view(kernel.view).take(pos, axis=0, mode="wrap")
            xor ^= q_codes.repeat(lengths, axis=0)
            weights = code_weights(xor, kernel)
        else:
            u = np.empty(n, np.float32)
            convert = payload.dtype != np.float32
            spans = zip(starts.tolist(), lengths.tolist(), first.tolist(), query.vectors[lo:hi])
            for start, length, at, q_vector in spans:
                if length:
                    rows = payload[start:start + length]
                    if convert:
                        rows = rows.astype(np.float32)
                    np.dot(rows, q_vector, out=u[at:at + length])
            weights = vector_selectivity(u, alpha=alpha, tau=tau)
        return db_ids.take(pos, mode="wrap"), weights

    def search(self, queries: Sequence[AggregatedImage], *, k: int = 100, alpha: float = 3.0,
               tau: float = 0.0, normalize: str = "both") -> SearchResult:
        """Top-``k`` items for each query, best first (ties to the lower id).

        Returns:
            SearchResult with (Q, k) float32 scores and int64 ids (-inf / -1 padding when
            the index holds fewer than k items), and the item names.
        """
        queries = list(queries)
        for i, q in enumerate(queries):
            self._check_item(f"queries[{i}]", q)
        k = check_k(k)
        alpha, tau, normalize = float(alpha), float(tau), check_normalize(normalize)
        out_scores = np.empty((len(queries), k), np.float32)
        out_ids = np.empty((len(queries), k), np.int64)
        for i, q in enumerate(queries):
            out_scores[i], out_ids[i] = self._top(q, k, alpha, tau, normalize)
        return SearchResult(out_scores, out_ids, self.names)

    def ranking(self, queries: Sequence[AggregatedImage], *, k: int = 100, alpha: float = 3.0,
                tau: float = 0.0, normalize: str = "both") -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as (Q, k) float64 scores and (Q, k) int64 ids.

        The ids are those of :meth:`search`; the scores are the float64 values they were
        ranked by (:func:`top_k_exact`), on which the lists of shards are merged.
        """
        queries = list(queries)
        for i, q in enumerate(queries):
            self._check_item(f"queries[{i}]", q)
        k = check_k(k)
        alpha, tau, normalize = float(alpha), float(tau), check_normalize(normalize)
        out_scores = np.empty((len(queries), k))
        out_ids = np.empty((len(queries), k), np.int64)
        for i, q in enumerate(queries):
            out_scores[i], out_ids[i] = self._top(q, k, alpha, tau, normalize)
        return out_scores, out_ids

    # ------------------------------------------------------------------ storage

    def _meta(self) -> dict[str, Any]:
        return {
            "num_words": self.num_words,
            "dim": self.dim,
            "binary": self.binary,
            "vector_dtype": self.vector_dtype,
            "num_items": self.num_items,
            "num_postings": self.num_postings,
        }

    @property
    def _payload_name(self) -> str:
        return "codes" if self.binary else "vectors"

    def _write_arrays(self, writer: IndexWriter) -> None:
        runs = [self._csr, *self._pending]
        offsets = merged_offsets(runs)
        total = int(offsets[-1])
        writer.put("offsets", offsets)
        ids = writer.create("image_ids", (total,), np.int32)
        payload = writer.create(self._payload_name, (total, self.width), self.vector_dtype)
        merge_runs(runs, offsets, ids, payload)
        writer.put("item_lengths", self.item_lengths)

    def save(self, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write the index to directory ``path`` atomically (pending runs merged on the way).

        ``config`` is recorded verbatim in the manifest (e.g. resolved config, codebook hash,
        feature config); it must be JSON-serialisable.  Returns ``path``.
        """
        config = dict(self.config if config is None else config)
        with IndexWriter(path, kind=self.kind, overwrite=overwrite) as writer:
            self._write_arrays(writer)
            return writer.commit(meta=self._meta(), names=self.names, config=config)

    def save_ranges(self, bounds: Sequence[int] | np.ndarray, paths: Sequence[str | os.PathLike], *,
                    configs: Sequence[Mapping[str, Any]] | None = None,
                    overwrite: bool = False) -> list[Path]:
        """Write items ``bounds[s]:bounds[s+1]`` to ``paths[s]``, each a standalone inverted index.

        Item ids are renumbered from 0 and every posting list keeps its order, so a range
        equals the index of its items alone.  One pass over the (memory-mapped) posting
        lists writes all ranges.  ``configs[s]`` (default: this index's config) goes into
        range ``s``'s manifest.  Returns ``paths``.
        """
        ranges = IdRanges.check(bounds, paths, configs, count=self.num_items, config=self.config)
        with ranges.writers(self.kind, overwrite=overwrite) as writers:
            metas = self._write_ranges(writers, ranges.bounds)
            return [writer.commit(meta=meta, names=self.names[r.start:r.stop], config=r.config)
                    for writer, meta, r in zip(writers, metas, ranges)]

    def _write_ranges(self, writers: Sequence[IndexWriter],
                      bounds: np.ndarray) -> list[dict[str, Any]]:
        """Write the arrays of items ``bounds[s]:bounds[s+1]`` into ``writers[s]``; their metas.

        Word block by word block (:func:`word_blocks`), each posting is copied to the range
        of its item with its id made local; items outside ``bounds`` are left out.
        """
        self.finalize()
        offsets, ids, payload = self._csr
        offsets = np.asarray(offsets)
        lengths = np.asarray(self.item_lengths)
        num_ranges = len(writers)
        outs = []
        for s, writer in enumerate(writers):
            size = int(lengths[bounds[s]:bounds[s + 1]].sum(dtype=np.int64))
            outs.append((writer.create("image_ids", (size,), np.int32),
                         writer.create(self._payload_name, (size, self.width), self.vector_dtype)))
        # counts[s + 1, w]: postings of word w in range s; rows 0 and -1 count items outside
        counts = np.zeros((num_ranges + 2, self.num_words), np.int64)
        cursor = np.zeros(num_ranges, np.int64)
        for w0, w1 in word_blocks(offsets, 4 + payload.itemsize * self.width):
            p0, p1 = int(offsets[w0]), int(offsets[w1])
            block_ids = np.asarray(ids[p0:p1])
            block_payload = np.asarray(payload[p0:p1])
            where = np.searchsorted(bounds, block_ids, side="right")  # range + 1
            word_of = np.repeat(np.arange(w1 - w0), np.diff(offsets[w0:w1 + 1]))
            span = w1 - w0
            block_counts = np.bincount(where * span + word_of, minlength=(num_ranges + 2) * span)
            counts[:, w0:w1] = block_counts.reshape(-1, span)
            for s, (out_ids, out_payload) in enumerate(outs):
                mask = where == s + 1
                n = int(np.count_nonzero(mask))
                if n:
                    c = int(cursor[s])
                    out_ids[c:c + n] = block_ids[mask] - bounds[s]
                    out_payload[c:c + n] = block_payload[mask]
                    cursor[s] += n
        metas = []
        for s, writer in enumerate(writers):
            range_offsets = np.zeros(self.num_words + 1, np.int64)
            np.cumsum(counts[s + 1], out=range_offsets[1:])
            writer.put("offsets", range_offsets)
            writer.put("item_lengths", lengths[bounds[s]:bounds[s + 1]])
            metas.append({**self._meta(), "num_items": int(bounds[s + 1] - bounds[s]),
                          "num_postings": int(range_offsets[-1])})
        return metas

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True,
             verify: bool = False) -> "InvertedIndex":
        """Open an index saved by :meth:`save` (arrays memory-mapped read-only by default).

        Adding to a loaded index works: new batches stay pending and the next merge copies
        the mapped arrays into memory (copy-on-write); the files are never modified.
        """
        stored = read_index(path, kind=cls.kind, mmap=mmap, verify=verify)
        return cls._from_stored(stored, names=stored.names)

    @classmethod
    def _from_stored(cls, stored: StoredIndex, *, names: Sequence[str]) -> "InvertedIndex":
        meta, arrays, where = stored.meta, stored.arrays, stored.path
        try:
            index = cls(num_words=int(meta["num_words"]), dim=int(meta["dim"]),
                        binary=bool(meta["binary"]), vector_dtype=str(meta["vector_dtype"]))
            num_items, num_postings = int(meta["num_items"]), int(meta["num_postings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where}/manifest.json has invalid inverted-index metadata: "
                                   f"{exc}") from exc
        expected = {
            "offsets": ((index.num_words + 1,), np.int64),
            "image_ids": ((num_postings,), np.int32),
            index._payload_name: ((num_postings, index.width), np.dtype(index.vector_dtype)),
            "item_lengths": ((num_items,), np.int32),
        }
        for name, (shape, dtype) in expected.items():
            if name not in arrays:
                raise IndexFormatError(f"{where} lacks array {name}.npy")
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise IndexFormatError(f"{where}/{name}.npy holds {arr.dtype} {arr.shape}, "
                                       f"expected {np.dtype(dtype)} {shape}")
        offsets = arrays["offsets"]
        if offsets[0] != 0 or offsets[-1] != num_postings or np.any(np.diff(offsets) < 0):
            raise IndexFormatError(f"{where}/offsets.npy is not a valid CSR offset array")
        lengths = arrays["item_lengths"]
        if num_items and (lengths.min() < 0 or lengths.max() > index.num_words
                          or int(lengths.sum(dtype=np.int64)) != num_postings):
            raise IndexFormatError(f"{where}/item_lengths.npy: every item must hold 0..K words, "
                                   f"{num_postings} in total")
        if len(names) not in (0, num_items):
            raise IndexFormatError(f"{where}/names.json has {len(names)} names for {num_items} "
                                   f"items")
        index._csr = Run(offsets, arrays["image_ids"], arrays[index._payload_name])
        index._lengths = arrays["item_lengths"]
        index._names.restore(names, num_items)
        index.config = dict(stored.config)
        return index


class InvertedIndexWriter:
    """Build an :class:`InvertedIndex` directory on disk in batches, in bounded memory.

    Every :meth:`add` sorts its batch by word and spills the run to a scratch directory beside
    ``path``; :meth:`close` merges all runs word block by word block straight into the output
    arrays and commits the directory atomically.  Memory stays at about one batch plus one
    merge block (``_MERGE_BYTES`` of :mod:`d2r.index.posting_runs`) plus per-item lengths and
    names.  Open the result with :meth:`InvertedIndex.load`.  Use as a context manager (an
    exception discards everything)::

        with InvertedIndexWriter(path, num_words=K, dim=128, binary=True) as writer:
            for batch in batches:
                writer.add(batch, names=...)
            writer.close(config=config)

    Args:
        path: output index directory.
        num_words, dim, binary, vector_dtype: as for :class:`InvertedIndex`.
        base: optional existing index (e.g. loaded with mmap) whose items come first.
        overwrite: replace an existing directory at ``path`` on close.
    """

    def __init__(self, path: str | os.PathLike, *, num_words: int, dim: int, binary: bool,
                 vector_dtype: str = "float32", base: InvertedIndex | None = None,
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"index directory {self.path} already exists "
                                  f"(pass overwrite=True)")
        self.overwrite = bool(overwrite)
        self._index = InvertedIndex(num_words=num_words, dim=dim, binary=binary,
                                    vector_dtype=vector_dtype)
        if base is not None:
            index = self._index
            mine = (index.num_words, index.dim, index.binary, index.vector_dtype)
            theirs = (base.num_words, base.dim, base.binary, base.vector_dtype)
            if mine != theirs:
                raise ValueError(f"base index has (num_words, dim, binary, vector_dtype)={theirs}, "
                                 f"writer was asked for {mine}")
            self._index = base._shallow_copy()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = self.path.parent / f".{self.path.name}.runs-{uuid.uuid4().hex[:12]}"
        self._scratch.mkdir()
        self._closed = False

    def __enter__(self) -> "InvertedIndexWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._closed = True

    @property
    def num_items(self) -> int:
        return self._index.num_items

    @property
    def num_postings(self) -> int:
        return self._index.num_postings

    def add(self, items: Sequence[AggregatedImage],
            names: Sequence[str] | None = None) -> np.ndarray:
        """Add a batch (see :meth:`InvertedIndex.add`) and spill its run to disk; returns ids."""
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        pending = len(self._index._pending)
        ids = self._index.add(items, names)
        if len(self._index._pending) > pending:
            run = self._index._pending.pop()
            stem = self._scratch / f"run{len(self._index._pending):06d}"
            self._index._pending.append(spill_run(run, stem))
        return ids

    def close(self, *, config: Mapping[str, Any] | None = None) -> Path:
        """Merge the spilled runs into ``path``, commit it atomically, remove the scratch runs."""
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        try:
            path = self._index.save(self.path, config=config, overwrite=self.overwrite)
        finally:
            self.__exit__(None, None, None)
        return path
