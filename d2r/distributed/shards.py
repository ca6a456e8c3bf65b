"""Sharded search: the database split into N index directories, one Ray actor each.

For databases larger than one machine's memory, the images are cut into N
contiguous id ranges (:func:`shard_bounds`); shard ``s`` holds images
``bounds[s] .. bounds[s+1]-1`` as an ordinary index directory of any registered
kind (:mod:`d2r.index.registry`) with local ids.  Layout::

    SHARDS/shards.json      format, kind, num_images, bounds, one entry per shard
    SHARDS/shard-0000/      an index directory (manifest.json, names.json, *.npy)
    SHARDS/shard-0001/ ...

:func:`split_index` writes it from an existing index with the index's own
``save_ranges`` (one pass over the memory-mapped posting lists of an inverted
file), and :func:`d2r.distributed.build_index_ray` with ``num_shards`` writes it
directly, never holding the whole index.  :class:`ShardedIndex` serves each shard
from a Ray actor that memory-maps it; a batch of queries is sent to every shard,
each returns its top-k by the scores its kind ranks on (``ranking``: float64 for
the inverted kinds) with *global* ids, and :func:`merge_topk` merges them by
(score descending, global id ascending) - the order of the unsharded index - so
the merged top-k equals the single-index result (scores and ids).
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from d2r.checks import check_positive_int
from d2r.distributed._ray import init_ray, kill_actors
from d2r.distributed.options import (
    DEFAULT_CPUS_PER_SHARD,
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_TASK_RETRIES,
)
from d2r.index.merge import merge_topk
from d2r.index.layout import read_versioned_json
from d2r.index.registry import index_class, open_index, register_sharded
from d2r.index.storage import IndexFormatError
from d2r.index.topk import check_k
from d2r.types import SearchResult

__all__ = [
    "SHARDS_MANIFEST",
    "shard_bounds",
    "shard_name",
    "shard_record",
    "split_index",
    "read_shards_manifest",
    "write_shards_manifest",
    "remove_extra_shards",
    "merge_topk",
    "ShardedIndex",
]

logger = logging.getLogger("d2r.distributed.shards")

SHARDS_MANIFEST = "shards.json"
FORMAT = "d2r-sharded-index"
VERSION = 1
_SHARD_DIR = re.compile(r"shard-(\d{4,})")


def shard_bounds(num_images: int, num_shards: int) -> np.ndarray:
    """(num_shards + 1,) int64 boundaries of ``num_shards`` near-equal contiguous id ranges."""
    check_positive_int("num_shards", num_shards)
    if int(num_shards) > max(1, int(num_images)):
        raise ValueError(f"cannot split {num_images} images into {num_shards} non-empty shards")
    s = np.arange(int(num_shards) + 1, dtype=np.int64)
    return s * int(num_images) // int(num_shards)


def shard_name(shard: int) -> str:
    """Folder of shard ``shard`` in a sharded directory: ``shard-NNNN``."""
    return f"shard-{shard:04d}"


def shard_record(shard: int, bounds: np.ndarray) -> dict[str, int]:
    """What shard ``shard``'s manifest records under ``config["shard"]``."""
    return {"index": int(shard), "count": int(len(bounds) - 1), "first_id": int(bounds[shard]),
            "num_images": int(bounds[shard + 1] - bounds[shard])}


def write_shards_manifest(path: str | os.PathLike, *, kind: str, bounds: np.ndarray,
                          config: Mapping[str, Any] | None = None) -> Path:
    """Write ``path/shards.json`` describing shards ``shard-NNNN`` with the given bounds.

    Raises:
        UnknownIndexKind: no registered index class serves ``kind``.
    """
    index_class(kind)
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
    """The ``shards.json`` of a sharded index directory, checked for consistency.

    Raises:
        UnknownIndexKind: the shards are of a kind no registered index class serves.
    """
    file = Path(path) / SHARDS_MANIFEST
    manifest = read_versioned_json(
        file, format=FORMAT, version=VERSION, error=IndexFormatError,
        missing=f"{Path(path)} is not a sharded index (no {SHARDS_MANIFEST}); make one with "
                "d2r shards or d2r build-index --ray-shards N")
    bounds = np.asarray(manifest.get("bounds", []), np.int64)
    shards = manifest.get("shards", [])
    if (not isinstance(manifest.get("kind"), str) or bounds.ndim != 1
            or len(bounds) != len(shards) + 1 or len(shards) == 0 or bounds[0] != 0
            or np.any(np.diff(bounds) < 0) or bounds[-1] != manifest.get("num_images")):
        raise IndexFormatError(f"{file} has inconsistent kind, bounds or shard entries")
    index_class(manifest["kind"])
    return manifest


# ------------------------------------------------------------------------ splitting


def split_index(index_dir: str | os.PathLike, *, num_shards: int,
                out: Optional[str | os.PathLike] = None, overwrite: bool = False) -> Path:
    """Split a built index into ``num_shards`` shard index directories.

    Args:
        index_dir: a directory written by ``build_index`` (``index.json`` + ``search/``),
            or an index directory itself (``manifest.json`` of any registered kind).
        num_shards: number of contiguous, near-equal image ranges.
        out: the sharded directory (default ``index_dir/shards`` for a built index).
        overwrite: replace shard directories and ``shards.json`` already in ``out``.

    Returns:
        ``out``.  Each shard opens with :func:`d2r.index.registry.open_index` and equals
        the index of its images alone (ids renumbered from 0), written by the index's
        ``save_ranges``.

    Raises:
        UnknownIndexKind: the index is of a kind no registered class serves.
    """
    index_dir = Path(index_dir)
    search_dir = index_dir / "search" if (index_dir / "index.json").exists() else index_dir
    if out is None:
        if search_dir == index_dir:
            raise ValueError("out is required when index_dir is a bare index directory")
        out = index_dir / "shards"
    out = Path(out)
    index = open_index(search_dir, mmap=True)
    bounds = shard_bounds(len(index), num_shards)
    if (out / SHARDS_MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a sharded index (pass overwrite=True, "
                              "--overwrite on the command line)")
    out.mkdir(parents=True, exist_ok=True)
    num = len(bounds) - 1
    index.save_ranges(bounds, [out / shard_name(s) for s in range(num)],
                      configs=[{**index.config, "shard": shard_record(s, bounds)} for s in range(num)],
                      overwrite=overwrite)
    write_shards_manifest(out, kind=index.kind, bounds=bounds, config=index.config)
    remove_extra_shards(out, num)
    logger.info("split %s (%d images, %s) into %d shards in %s", search_dir, len(index),
                index.kind, num, out)
    return out


def remove_extra_shards(out: Path, num_shards: int) -> None:
    """Delete ``shard-NNNN`` folders numbered ``num_shards`` or more (left by an earlier split)."""
    for folder in Path(out).glob("shard-*"):
        match = _SHARD_DIR.fullmatch(folder.name)
        if match and int(match.group(1)) >= num_shards and folder.is_dir():
            shutil.rmtree(folder)


# ------------------------------------------------------------------------ searching


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
        self.first_id = int(first_id)
        self.index = open_index(path, kind=kind, mmap=mmap)

    def stats(self) -> dict[str, Any]:
        return {"num_images": len(self.index), "nbytes": int(self.index.nbytes),
                "rss_bytes": _rss_bytes(), "pid": os.getpid()}

    def search(self, queries: Any, k: int, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The shard's ``ranking``: (Q, k) float64 scores and int64 global ids (-inf / -1 padded)."""
        scores, ids = self.index.ranking(queries, k=k, **options)
        return scores, np.where(ids >= 0, ids + self.first_id, -1)


@register_sharded
class ShardedIndex:
    """A sharded index directory served by one Ray actor per shard (sharded search executor
    ``ray``).

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

    Raises:
        UnknownIndexKind: the shards are of a kind no registered index class serves.
    """

    executor = "ray"

    def __init__(self, path: str | os.PathLike, *, address: Optional[str] = None,
                 mmap: bool = True, num_cpus_per_shard: float = DEFAULT_CPUS_PER_SHARD,
                 max_restarts: int = DEFAULT_MAX_RESTARTS,
                 max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
                 actor_options: Optional[Mapping[str, Any]] = None) -> None:
        self.path = Path(path)
        self.manifest = read_shards_manifest(self.path)
        self.kind: str = self.manifest["kind"]
        self.bounds = np.asarray(self.manifest["bounds"], np.int64)
        names: list[str] = []
        for entry in self.manifest["shards"]:
            shard_names = open_index(self.path / entry["path"], kind=self.kind, mmap=True).names
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

    def search(self, queries: Any, *, k: int = 100, **options: Any) -> SearchResult:
        """Top-``k`` over all shards, equal to the unsharded index's ``search`` result.

        ``queries`` and the keyword ``options`` are those of the shards' kind's ``search``
        (e.g. ``alpha``, ``tau``, ``normalize`` for inverted files, also ``pooling`` for
        regional indexes; none for the flat global indexes).
        """
        k = check_k(k)
        if len(queries) == 0:
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
