"""Ray execution of extraction and indexing, and sharded search (Ray imported lazily).

* :func:`run_extract_ray` - feature extraction by a pool of model actors (one
  model load per actor, ``num_gpus`` each), per-actor part stores merged into
  one resumable feature store (:func:`merge_feature_stores`);
* :func:`build_index_ray` - ``build_index`` with extraction and quantization +
  aggregation on Ray; the same index arrays, names and order; ``num_shards``
  writes shard indexes instead;
* :func:`split_index`, :class:`ShardedIndex`, :func:`merge_topk` - a database
  split into N shard indexes, each served by a Ray actor (memory-mapped), queries
  scattered and the top-k merged exactly (``d2r.pipeline.searcher.Searcher`` and
  ``python -m d2r.query`` search them);
* :mod:`d2r.distributed.options` - the Ray defaults and the ``--ray`` / ``--ray-address`` flags.

Importing this package does not import Ray; calling a function that needs it
without Ray installed raises an ImportError naming the package to install.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "init_ray",
    "run_extract_ray",
    "merge_feature_stores",
    "build_index_ray",
    "encode_ray",
    "shard_bounds",
    "split_index",
    "merge_topk",
    "read_shards_manifest",
    "ShardedIndex",
    "add_ray_args",
    "ray_requested",
    "ray_kwargs",
]

_HOME = {
    "init_ray": "_ray",
    "run_extract_ray": "extract",
    "merge_feature_stores": "extract",
    "build_index_ray": "build",
    "encode_ray": "build",
    "shard_bounds": "shards",
    "split_index": "shards",
    "merge_topk": "shards",
    "read_shards_manifest": "shards",
    "ShardedIndex": "shards",
    "add_ray_args": "options",
    "ray_requested": "options",
    "ray_kwargs": "options",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'd2r.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
