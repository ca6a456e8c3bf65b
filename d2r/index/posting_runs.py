"""Word-sorted runs of postings and their merging into CSR posting lists.

A :class:`Run` holds postings sorted by visual word: ``offsets`` (K+1,) int64 indexes
``ids`` (P,) int32 and ``payload`` (P, width), packed codes (uint8) or vectors (float32 or
float16).  :func:`merge_runs` merges runs (in memory or memory-mapped) into one such CSR
triple, word block by word block (:func:`word_blocks`), writing into preallocated
(possibly memory-mapped) output arrays; within a word, earlier runs come first.
:func:`spill_run` moves a run to ``.npy`` files, for building indexes larger than memory.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np

__all__ = ["Run", "merge_runs", "merged_offsets", "spill_run", "stable_word_order",
           "word_blocks"]

_MERGE_BYTES = 1 << 28  # bytes of merged postings written per block in merges


class Run(NamedTuple):
    """Postings sorted by word: ``offsets`` (K+1,) int64, ``ids`` (P,) int32, ``payload``
    (P, width)."""

    offsets: np.ndarray
    ids: np.ndarray
    payload: np.ndarray


def _rows(table: np.ndarray) -> np.ndarray:
    """(P, width) C-contiguous table viewed as (P,) opaque rows (fast fancy assignment)."""
    return table.view(np.dtype((np.void, table.shape[1] * table.itemsize))).reshape(-1)


def stable_word_order(words: np.ndarray, num_words: int) -> np.ndarray:
    """Stable argsort of word ids by 16-bit radix passes (numpy radix-sorts 16-bit keys)."""
    if num_words <= 1 << 16:
        return np.argsort(words.astype(np.uint16), kind="stable")
    low = np.argsort((words & 0xFFFF).astype(np.uint16), kind="stable")
    high = np.argsort((words[low] >> 16).astype(np.uint16), kind="stable")
    return low[high]


def merged_offsets(runs: Sequence[Run]) -> np.ndarray:
    """CSR offsets (K+1,) int64 of the merge of ``runs``: their posting counts summed by word."""
    counts = np.zeros(runs[0].offsets.shape[0] - 1, np.int64)
    for run in runs:
        counts += np.diff(run.offsets)
    offsets = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def word_blocks(offsets: np.ndarray, row_bytes: int) -> Iterator[tuple[int, int]]:
    """Word ranges ``[w0, w1)`` holding about ``_MERGE_BYTES`` of postings each (none empty).

    ``offsets`` (K+1,) are CSR offsets; ``row_bytes`` the bytes of one posting.
    """
    num_words = offsets.shape[0] - 1
    total = int(offsets[-1])
    block = max(1, _MERGE_BYTES // row_bytes)
    cuts = np.searchsorted(offsets, np.arange(block, total, block), side="right") - 1
    bounds = np.unique(np.concatenate([[0], cuts, [num_words]]))
    for w0, w1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if offsets[w1] > offsets[w0]:
            yield w0, w1


def merge_runs(runs: Sequence[Run], offsets: np.ndarray, out_ids: np.ndarray,
               out_payload: np.ndarray) -> None:
    """Merge word-sorted runs into CSR arrays (``offsets`` from :func:`merged_offsets`).

    Works block by block over word ranges holding about ``_MERGE_BYTES`` of output, so that
    reads from each run and writes to the output (both possibly memory-mapped files) are
    contiguous.  Within a word, postings keep run order (earlier runs first).
    """
    row_bytes = out_ids.itemsize + out_payload.itemsize * out_payload.shape[1]
    for w0, w1 in word_blocks(offsets, row_bytes):
        p0, p1 = int(offsets[w0]), int(offsets[w1])
        dst_ids = out_ids[p0:p1]
        dst_payload = _rows(out_payload[p0:p1])
        filled = offsets[w0:w1] - p0
        for run in runs:
            r_off = np.asarray(run.offsets[w0:w1 + 1])
            r0, r1 = int(r_off[0]), int(r_off[-1])
            if r1 == r0:
                continue
            counts = np.diff(r_off)
            shift = np.repeat(filled - (r_off[:-1] - r0), counts)
            dest = shift + np.arange(r1 - r0, dtype=np.int64)
            dst_ids[dest] = run.ids[r0:r1]
            dst_payload[dest] = _rows(np.ascontiguousarray(run.payload[r0:r1]))
            filled = filled + counts


def spill_run(run: Run, stem: str | os.PathLike) -> Run:
    """Save ``run``'s arrays to ``{stem}_{field}.npy``; the run memory-mapped from them."""
    spilled = []
    for part, arr in zip(Run._fields, run):
        np.save(f"{stem}_{part}.npy", arr, allow_pickle=False)
        spilled.append(np.load(f"{stem}_{part}.npy", mmap_mode="r"))
    return Run(*spilled)
