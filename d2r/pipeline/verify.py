"""Check a whole index directory (the library behind ``python -m d2r.verify``).

Every file of the search structure is hashed against its manifest (also the large
arrays that an ordinary open trusts by their verified-stamp), then the index is
opened as a query would open it: manifest format, ``index.json`` bound to the search
structure, codebook hash, and a feature store holding every indexed image.
"""

from __future__ import annotations

import os
from pathlib import Path

from d2r.index.layout import read_manifest, search_dir
from d2r.index.storage import verify_files
from d2r.pipeline.searcher import Searcher

__all__ = ["verify_index"]


def verify_index(path: str | os.PathLike) -> list[str]:
    """One line per problem found in index directory ``path`` (empty: the index is sound)."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    location = search_dir(path, manifest)
    sharded = bool(manifest.get("shards")) and not location.is_dir()
    if sharded:
        shards = path / manifest["shards"]["path"]
        problems = [p for shard in sorted(shards.glob("shard-*")) for p in verify_files(shard)]
    else:
        problems = verify_files(location)
    if problems or sharded:  # serving shards would start Ray actors: files only
        return problems
    try:
        with Searcher(path) as searcher:
            if searcher.names:
                searcher.database_features(0)  # opens the store: every indexed image present
    except (OSError, ValueError, KeyError) as exc:
        return [str(exc)]
    return []
