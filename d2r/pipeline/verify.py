"""Check a whole index directory (the library behind ``python -m d2r.verify``).

Every file of the search structure is hashed against its manifest (also the large
arrays that an ordinary open trusts by their verified-stamp), then the index is
opened as a query would open it: manifest format, ``index.json`` bound to the search
structure (every segment of an updated index), codebook hash, and the stored features
of every indexed image.
"""

from __future__ import annotations

import os
from pathlib import Path

from d2r.index.layout import inside, read_manifest, search_dir, segments
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
        problems = [p for segment in segments(manifest)
                    for p in verify_files(inside(path, segment["search"], "search"))]
    if problems or sharded:  # serving shards would start Ray actors: files only
        return problems
    try:
        with Searcher(path) as searcher:
            alive = getattr(searcher.index, "alive", None)
            for image_id in range(len(searcher.names)):  # every live image's features
                if alive is None or alive[image_id]:
                    searcher.database_features(image_id)
                    if alive is None:  # one image opens the build's store, which is checked
                        break
    except (OSError, ValueError, KeyError) as exc:
        return [str(exc)]
    return []
