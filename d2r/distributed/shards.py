"""Sharded search: the database split into N index directories, one Ray actor each.

For databases larger than one machine's memory, the images are cut into N
contiguous id ranges (:func:`shard_bounds`); shard ``s`` holds images
``bounds[s] .. bounds[s+1]-1`` as an ordinary index directory (inverted,
regional or global) with local ids.  Layout::

    SHARDS/shards.json      format, kind, num_images, bounds, one entry per shard
    SHARDS/shard-0000/      an index directory (manifest.json, names.json, *.npy)
    SHARDS/shard-0001/ ...

:func:`split_index` writes it from an existing index (one vectorized pass over
the memory-mapped posting lists), and :func:`d2r.distributed.build_index_ray`
with ``num_shards`` writes it directly, never holding the whole index.
:class:`ShardedIndex` serves each shard from a Ray actor that memory-maps it;
a batch of queries is sent to every shard, each returns its top-k by the exact
float64 score with *global* ids, and :func:`merge_topk` merges them by (score
descending, global id ascending) - exactly the order
:func:`d2r.index.inverted.top_k` gives on the unsharded index, so the merged
top-k equals the single-index result (scores and ids).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from d2r.checks import check_positive_int
from d2r.distributed._ray import init_ray, kill_actors
from d2r.index.inverted import check_k, top_k
from d2r.index.storage import IndexFormatError, IndexWriter, read_index
from d2r.types import AggregatedImage, SearchResult

__all__ = [
    "SHARDS_MANIFEST",
    "shard_bounds",
    "split_index",
    "read_shards_manifest",
    "write_shards_manifest",
    "merge_topk",
    "ShardedIndex",
    "main",
]

logger = logging.getLogger(__name__)

SHARDS_MANIFEST = "shards.json"
FORMAT = "d2r-sharded-index"
VERSION = 1
_KINDS = ("inverted", "regional", "global")
_BLOCK_BYTES = 1 << 28  # postings processed at once while splitting


def shard_bounds(num_images: int, num_shards: int) -> np.ndarray:
    """(num_shards + 1,) int64 boundaries of ``num_shards`` near-equal contiguous id ranges."""
    check_positive_int("num_shards", num_shards)
    if int(num_shards) > max(1, int(num_images)):
        raise ValueError(f"cannot split {num_images} images into {num_shards} non-empty shards")
    s = np.arange(int(num_shards) + 1, dtype=np.int64)
    return s * int(num_images) // int(num_shards)


def shard_name(shard: int) -> str:
    return f"shard-{shard:04d}"


def write_shards_manifest(path: str | os.PathLike, *, kind: str, bounds: np.ndarray,
                          config: Mapping[str, Any] | None = None) -> Path:
    """Write ``path/shards.json`` describing shards ``shard-NNNN`` with the given bounds."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    bounds = np.asarray(bounds, np.int64)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "num_images": int(bounds[-1]),
        "bounds": bounds.tolist(),
        "shards": [{"path": shard_name(s), "first_id": int(bounds[s]),
                    "num_images": int(bounds[s + 1] - bounds[s])} for s in range(len(bounds) - 1)],
        "config": dict(config or {}),
    }
    file = Path(path) / SHARDS_MANIFEST
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, file)
    return file


def read_shards_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The ``shards.json`` of a sharded index directory, checked for consistency."""
    file = Path(path) / SHARDS_MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{Path(path)} is not a sharded index (no {SHARDS_MANIFEST}); "
                                "make one with split_index or build_index_ray(num_shards=N)") from None
    except ValueError as exc:
        raise IndexFormatError(f"{file} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise IndexFormatError(f"{file} is not a {FORMAT} v{VERSION} manifest")
    bounds = np.asarray(manifest.get("bounds", []), np.int64)
    shards = manifest.get("shards", [])
    if (manifest.get("kind") not in _KINDS or bounds.ndim != 1 or len(bounds) != len(shards) + 1
            or len(shards) == 0 or bounds[0] != 0 or np.any(np.diff(bounds) < 0)
            or bounds[-1] != manifest.get("num_images")):
        raise IndexFormatError(f"{file} has inconsistent kind, bounds or shard entries")
    return manifest


# ------------------------------------------------------------------------ splitting


def _prepare_out(out: Path, overwrite: bool) -> None:
    if (out / SHARDS_MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a sharded index (pass overwrite=True, "
                              "--overwrite on the command line)")
    out.mkdir(parents=True, exist_ok=True)


def split_index(index_dir: str | os.PathLike, *, num_shards: int,
                out: Optional[str | os.PathLike] = None, overwrite: bool = False) -> Path:
    """Split a built index into ``num_shards`` shard index directories.

    Args:
        index_dir: a directory written by ``build_index`` (``index.json`` + ``search/``),
            or an index directory itself (``manifest.json`` of an inverted, regional or
            global index).
        num_shards: number of contiguous, near-equal image ranges.
        out: the sharded directory (default ``index_dir/shards`` for a built index).
        overwrite: replace shard directories and ``shards.json`` already in ``out``.

    Returns:
        ``out``.  Each shard is loadable with the index class's ``load`` and equals
        the index of its images alone (ids renumbered from 0, same posting order).
    """
    index_dir = Path(index_dir)
    search_dir = index_dir / "search" if (index_dir / "index.json").exists() else index_dir
    if out is None:
        if search_dir == index_dir:
            raise ValueError("out is required when index_dir is a bare index directory")
        out = index_dir / "shards"
    out = Path(out)
    kind = json.loads((search_dir / "manifest.json").read_text()).get("kind") \
        if (search_dir / "manifest.json").exists() else None
    if kind not in _KINDS:
        raise IndexFormatError(f"{search_dir} holds no inverted, regional or global index")
    stored = read_index(search_dir, kind=kind, mmap=True)
    meta, arrays, names = stored.meta, stored.arrays, list(stored.names)
    if kind == "global":
        num_images = int(meta["num_images"])
    elif kind == "regional":
        num_images = int(meta["num_images"])
    else:
        num_images = int(meta["num_items"])
    bounds = shard_bounds(num_images, num_shards)
    _prepare_out(out, overwrite)
    config = dict(stored.config)
    writers = [IndexWriter(out / shard_name(s), kind=kind, overwrite=overwrite)
               for s in range(len(bounds) - 1)]
    try:
        shard_meta = _split_arrays(kind, meta, arrays, bounds, writers)
        for s, writer in enumerate(writers):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            writer.commit(meta=shard_meta[s], names=names[lo:hi] if names else (),
                          config={**config, "shard": _shard_record(s, bounds)})
    finally:
        for writer in writers:
            writer.__exit__(None, None, None)
    write_shards_manifest(out, kind=kind, bounds=bounds, config=config)
    remove_extra_shards(out, len(bounds) - 1)
    logger.info("split %s (%d images, %s) into %d shards in %s", search_dir, num_images, kind,
                len(bounds) - 1, out)
    return out


def remove_extra_shards(out: Path, num_shards: int) -> None:
    """Delete ``shard-NNNN`` folders numbered ``num_shards`` or more (left by an earlier split)."""
    for folder in Path(out).glob("shard-*"):
        match = re.fullmatch(r"shard-(\d{4,})", folder.name)
        if match and int(match.group(1)) >= num_shards and folder.is_dir():
            shutil.rmtree(folder)


def _shard_record(shard: int, bounds: np.ndarray) -> dict[str, int]:
    return {"index": int(shard), "count": int(len(bounds) - 1), "first_id": int(bounds[shard]),
            "num_images": int(bounds[shard + 1] - bounds[shard])}


def _split_arrays(kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  bounds: np.ndarray, writers: Sequence[IndexWriter]) -> list[dict[str, Any]]:
    num_shards = len(bounds) - 1
    if kind == "global":
        vectors = arrays["vectors"]
        out = []
        for s in range(num_shards):
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            writers[s].put("vectors", np.ascontiguousarray(vectors[lo:hi]))
            out.append({**meta, "num_images": hi - lo})
        return out
    item_bounds = bounds
    if kind == "regional":
        mapping = arrays["item_to_image"]
        item_bounds = np.searchsorted(mapping, bounds, side="left").astype(np.int64)
        for s in range(num_shards):
            a, b = int(item_bounds[s]), int(item_bounds[s + 1])
            writers[s].put("item_to_image", np.asarray(mapping[a:b]) - int(bounds[s]))
    metas = _split_inverted(meta, arrays, item_bounds, writers)
    if kind == "regional":
        metas = [{**m, "num_images": int(bounds[s + 1] - bounds[s])} for s, m in enumerate(metas)]
    return metas


def _split_inverted(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                    item_bounds: np.ndarray, writers: Sequence[IndexWriter]) -> list[dict[str, Any]]:
    """Split CSR posting lists by item-id ranges, block of words by block of words."""
    payload_name = "codes" if meta["binary"] else "vectors"
    offsets = np.asarray(arrays["offsets"])
    ids, payload = arrays["image_ids"], arrays[payload_name]
    lengths = np.asarray(arrays["item_lengths"])
    num_words = offsets.shape[0] - 1
    num_shards = len(item_bounds) - 1
    totals = [int(lengths[item_bounds[s]:item_bounds[s + 1]].sum(dtype=np.int64))
              for s in range(num_shards)]
    outs = [(writers[s].create("image_ids", (totals[s],), np.int32),
             writers[s].create(payload_name, (totals[s], payload.shape[1]), payload.dtype))
            for s in range(num_shards)]
    counts = np.zeros((num_shards, num_words), np.int64)
    cursor = np.zeros(num_shards, np.int64)
    total = int(offsets[-1])
    row_bytes = 4 + payload.itemsize * max(1, payload.shape[1])
    step = max(1, _BLOCK_BYTES // row_bytes)
    bounds = np.unique(np.concatenate([
        [0], np.searchsorted(offsets, np.arange(step, total, step), side="right") - 1, [num_words]]))
    for w0, w1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        p0, p1 = int(offsets[w0]), int(offsets[w1])
        if p1 == p0:
            continue
        block_ids = np.asarray(ids[p0:p1])
        block_payload = np.asarray(payload[p0:p1])
        shard_of = np.searchsorted(item_bounds, block_ids, side="right") - 1
        word_of = np.repeat(np.arange(w1 - w0), np.diff(offsets[w0:w1 + 1]))
        counts[:, w0:w1] = np.bincount(shard_of * (w1 - w0) + word_of,
                                       minlength=num_shards * (w1 - w0)).reshape(num_shards, -1)
        for s in range(num_shards):
            mask = shard_of == s
            n = int(np.count_nonzero(mask))
            if not n:
                continue
            c = int(cursor[s])
            outs[s][0][c:c + n] = block_ids[mask] - int(item_bounds[s])
            outs[s][1][c:c + n] = block_payload[mask]
            cursor[s] += n
    metas = []
    for s in range(num_shards):
        shard_offsets = np.zeros(num_words + 1, np.int64)
        np.cumsum(counts[s], out=shard_offsets[1:])
        writers[s].put("offsets", shard_offsets)
        writers[s].put("item_lengths", lengths[item_bounds[s]:item_bounds[s + 1]])
        metas.append({**meta, "num_items": int(item_bounds[s + 1] - item_bounds[s]),
                      "num_postings": int(shard_offsets[-1])})
    return metas


# ------------------------------------------------------------------------ searching


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists into one top-``k`` per query.

    Args:
        scores: per shard (Q, k_s) scores (float64 for exact ties), -inf padded.
        ids: per shard (Q, k_s) int64 global ids, -1 padded.
        k: results per query.

    Returns:
        (Q, k) float32 scores and (Q, k) int64 ids, by score descending and, among
        equal scores, global id ascending (the order of the unsharded index); -inf / -1
        pad rows with fewer than ``k`` results.
    """
    k = check_k(k)
    if not scores:
        raise ValueError("merge_topk needs at least one shard's results")
    all_scores = np.concatenate([np.asarray(s, np.float64) for s in scores], axis=1)
    all_ids = np.concatenate([np.asarray(i, np.int64) for i in ids], axis=1)
    if all_scores.shape != all_ids.shape:
        raise ValueError(f"scores {all_scores.shape} and ids {all_ids.shape} differ in shape")
    num_queries = all_scores.shape[0]
    out_scores = np.full((num_queries, k), -np.inf, np.float32)
    out_ids = np.full((num_queries, k), -1, np.int64)
    if all_scores.shape[1] == 0 or num_queries == 0:
        return out_scores, out_ids
    id_key = np.where(all_ids < 0, np.iinfo(np.int64).max, all_ids)
    order = np.lexsort((id_key, -all_scores), axis=-1)[:, :k]
    kk = order.shape[1]
    best_ids = np.take_along_axis(all_ids, order, axis=1)
    best_scores = np.take_along_axis(all_scores, order, axis=1)
    best_scores[best_ids < 0] = -np.inf
    out_scores[:, :kk] = best_scores
    out_ids[:, :kk] = best_ids
    return out_scores, out_ids


def _index_class(kind: str):
    if kind == "inverted":
        from d2r.index.inverted import InvertedIndex
        return InvertedIndex
    if kind == "regional":
        from d2r.index.regional import RegionalIndex
        return RegionalIndex
    from d2r.index.global_index import GlobalIndex
    return GlobalIndex


def _rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _ShardServer:
    """A Ray actor serving one shard index (memory-mapped), answering with global ids."""

    def __init__(self, path: str, kind: str, first_id: int, mmap: bool) -> None:
        self.kind = kind
        self.first_id = int(first_id)
        self.index = _index_class(kind).load(path, mmap=mmap)

    def stats(self) -> dict[str, Any]:
        return {"num_images": len(self.index), "nbytes": int(self.index.nbytes),
                "rss_bytes": _rss_bytes(), "pid": os.getpid()}

    def search(self, queries: list[AggregatedImage], k: int,
               options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) float64 scores and int64 global ids (-inf / -1 padded)."""
        if self.kind == "global":
            result = self.index.search(queries, k=k) if queries else None
            if result is None:
                return np.zeros((0, k)), np.zeros((0, k), np.int64)
            ids = np.where(result.ids >= 0, result.ids + self.first_id, -1)
            return result.scores.astype(np.float64), ids
        out_scores = np.full((len(queries), k), -np.inf)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for i, query in enumerate(queries):
            if self.kind == "regional":
                scores = self.index.score_images(query, **options)
            else:
                scores = self.index.score_all(query, **options)
            _, local = top_k(scores, k)
            found = local >= 0
            out_scores[i, found] = scores[local[found]]
            out_ids[i, found] = local[found] + self.first_id
        return out_scores, out_ids


class ShardedIndex:
    """A sharded index directory served by one Ray actor per shard.

    Args:
        path: directory with ``shards.json`` (:func:`split_index`, ``build_index_ray``).
        address: Ray address (see :func:`d2r.distributed.init_ray`).
        mmap: memory-map the shard arrays in the actors.
        num_cpus_per_shard: Ray CPUs reserved by each actor (fractions allowed).
        max_restarts, max_task_retries: Ray restarts of a dead shard actor and
            retries of its pending search.
        actor_options: further ``.options(...)`` for every actor, e.g.
            ``{"resources": {"shard_host": 1}}`` or a scheduling strategy that pins
            shards to the nodes holding their files.
    """

    def __init__(self, path: str | os.PathLike, *, address: Optional[str] = None,
                 mmap: bool = True, num_cpus_per_shard: float = 1.0, max_restarts: int = 3,
                 max_task_retries: int = 3, actor_options: Optional[Mapping[str, Any]] = None) -> None:
        self.path = Path(path)
        self.manifest = read_shards_manifest(self.path)
        self.kind: str = self.manifest["kind"]
        self.bounds = np.asarray(self.manifest["bounds"], np.int64)
        names: list[str] = []
        for entry in self.manifest["shards"]:
            shard_names = read_index(self.path / entry["path"], kind=self.kind, mmap=True).names
            if len(shard_names) not in (0, entry["num_images"]):
                raise IndexFormatError(f"{self.path / entry['path']} holds {len(shard_names)} "
                                       f"names, shards.json says {entry['num_images']} images")
            names.extend(shard_names)
        self.names: tuple[str, ...] = tuple(names)
        ray = init_ray(address)
        remote = ray.remote(_ShardServer).options(
            num_cpus=num_cpus_per_shard, max_restarts=max_restarts,
            max_task_retries=max_task_retries, **dict(actor_options or {}))
        self._actors = [remote.remote(str((self.path / e["path"]).resolve()), self.kind,
                                      e["first_id"], mmap) for e in self.manifest["shards"]]
        self._ray = ray

    @property
    def num_shards(self) -> int:
        return len(self._actors)

    @property
    def num_images(self) -> int:
        return int(self.bounds[-1])

    def __len__(self) -> int:
        return self.num_images

    def stats(self) -> list[dict[str, Any]]:
        """Per shard: ``num_images``, ``nbytes`` of its arrays, ``rss_bytes`` of its actor."""
        return self._ray.get([a.stats.remote() for a in self._actors])

    def search(self, queries: Sequence[AggregatedImage], *, k: int = 100, alpha: float = 3.0,
               tau: float = 0.0, normalize: bool | str = True, pooling: str = "max") -> SearchResult:
        """Top-``k`` over all shards, equal to the unsharded index's ``search`` result.

        Keyword options are those of the index kind's ``search`` (``alpha``, ``tau``,
        ``normalize``; ``pooling`` for regional indexes; none for global ones).
        """
        k = check_k(k)
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, AggregatedImage):
                raise TypeError(f"queries[{i}] must be an AggregatedImage, got {type(q).__name__}")
        options: dict[str, Any] = {}
        if self.kind != "global":
            options = {"alpha": float(alpha), "tau": float(tau), "normalize": normalize}
            if self.kind == "regional":
                options["pooling"] = pooling
        if not queries:
            return SearchResult(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), self.names)
        ref = self._ray.put(queries)
        parts = self._ray.get([a.search.remote(ref, k, options) for a in self._actors])
        scores, ids = merge_topk([p[0] for p in parts], [p[1] for p in parts], k)
        return SearchResult(scores, ids, self.names)

    def close(self) -> None:
        """Terminate the shard actors."""
        kill_actors(self._actors)
        self._actors = []

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m d2r.distributed.shards INDEX --shards N [--out DIR]``: split a built index."""
    from d2r import cli

    parser = argparse.ArgumentParser(prog="python -m d2r.distributed.shards",
                                     description="Split a built index into N shard indexes "
                                                 "for sharded search on Ray.")
    parser.add_argument("index", help="index directory (index.json + search/) or a bare index")
    parser.add_argument("--shards", type=int, required=True, metavar="N", help="number of shards")
    parser.add_argument("--out", metavar="DIR", help="sharded directory (default INDEX/shards)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
    cli.add_common_args(parser)
    args = cli.parse(parser, argv)
    try:
        out = split_index(args.index, num_shards=args.shards, out=args.out,
                          overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        parser.error(str(exc))
    manifest = read_shards_manifest(out)
    print(f"{manifest['num_images']} images in {len(manifest['shards'])} {manifest['kind']} "
          f"shards -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
