"""Check a whole index directory (the library behind ``d2r check``).

Every file of the search structure is hashed against its manifest (also the large
arrays that an ordinary open trusts by their verified-stamp), every feature store the
index uses (``features/`` and ``maps/`` of each data directory) is read in full, every
chunk of every image of every shard, so that HDF5 checks each chunk's checksum
(:meth:`~d2r.io.feature_store.FeatureStore.check`), then the index is opened as a query
would open it: manifest format, ``index.json`` bound to the search structure (every
segment of an updated index), codebook hash, and every indexed image present in its
store.  A writer committing meanwhile makes it check the new generation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from d2r.index.layout import (
    FEATURES,
    MAPS,
    OPEN_ATTEMPTS,
    inside,
    read_manifest,
    search_dir,
    segments,
)
from d2r.index.storage import verify_files
from d2r.io.feature_store import FeatureStore
from d2r.pipeline.searcher import Searcher

__all__ = ["check_index"]


def check_index(path: str | os.PathLike) -> list[str]:
    """One line per problem found in index directory ``path`` (empty: the index is sound).

    Problems found while ``index.json`` changed underneath (a writer committed) are not
    the index's: the new generation is checked instead (up to
    :data:`~d2r.index.layout.OPEN_ATTEMPTS` times)."""
    path = Path(path)
    problems: list[str] = []
    for _ in range(OPEN_ATTEMPTS):
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError) as exc:
            return [str(exc)]
        problems = _problems(path, manifest)
        if not problems or _current(path) == manifest:
            return problems
    return problems


def _current(path: Path) -> dict[str, Any] | None:
    """The manifest of ``path`` now (None: unreadable)."""
    try:
        return read_manifest(path)
    except (OSError, ValueError):
        return None


def _problems(path: Path, manifest: dict[str, Any]) -> list[str]:
    """The problems of the generation ``manifest`` names."""
    try:
        location = search_dir(path, manifest)
        sharded = bool(manifest.get("shards")) and not location.is_dir()
        if sharded:
            shards = inside(path, manifest["shards"]["path"], "shards.path")
            problems = [p for shard in sorted(shards.glob("shard-*")) for p in verify_files(shard)]
        else:
            problems = [p for segment in segments(manifest)
                        for p in verify_files(inside(path, segment["search"], "search"))]
        problems += _store_problems(path, manifest)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [str(exc)]
    if problems or sharded:  # serving shards would start Ray actors: files only
        return problems
    try:
        with Searcher(path) as searcher:
            alive = getattr(searcher.index, "alive", None)
            for image_id in range(len(searcher.names)):  # every live image is in a store
                if alive is None or alive[image_id]:
                    searcher.stored_at(FEATURES, searcher.method.input_type, image_id)
                    if alive is None:  # the build's store, opened, holds every image
                        break
    except (OSError, ValueError, KeyError) as exc:
        return [str(exc)]
    return []


def _store_problems(path: Path, manifest: dict[str, Any]) -> list[str]:
    """Every feature store of the index's data directories, read in full."""
    folders = dict.fromkeys(inside(path, relative, "a data directory")
                            for segment in segments(manifest) for relative in segment["data"])
    problems = []
    for folder in folders:
        for part in (FEATURES, MAPS):
            if FeatureStore.exists(folder / part):
                with FeatureStore.open(folder / part) as store:
                    problems += store.check()
    return problems
