"""``build_index`` on a Ray cluster: extraction actors, parallel quantization + aggregation.

Stages (the outputs are those of :func:`d2r.build_index.build_index`)::

    OUT/features/   run_extract_ray: one extractor per actor, part stores merged at the end
    OUT/codebooks/  trained on the driver from a sample (or reused / loaded)
    OUT/search/     encode actors quantize + aggregate batches of images in parallel; the
                    driver adds the batches *in image order* to one index, so the arrays,
                    names and ids equal the single-process build's
    OUT/shards/     instead of OUT/search with ``num_shards=N``: shard ``s`` gets the
                    contiguous images ``bounds[s]:bounds[s+1]`` and is saved as soon as its
                    last batch arrives, so the driver never holds more than one shard
    OUT/index.json  the same manifest (plus ``"shards"`` for a sharded build)

Every shard equals the corresponding shard of :func:`d2r.distributed.split_index`
applied to the unsharded build.  CNN global descriptors (``features.backend: cnn``)
are extracted on Ray and stacked into their global index on the driver (no codebook,
no shards, no activation maps).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from d2r import cli
from d2r.build_index import (
    finish_build,
    global_descriptor_index,
    index_record,
    indexed_names,
    load_or_train_codebook,
    new_index,
    save_index,
)
from d2r.codebook import Codebook
from d2r.config import Config
from d2r.distributed._ray import init_ray, kill_actors, run_on_actors
from d2r.distributed.extract import run_extract_ray
from d2r.distributed.shards import (
    remove_extra_shards,
    shard_bounds,
    shard_name,
    write_shards_manifest,
)
from d2r.encode import encode_database_image, validate
from d2r.extract import read_regions, region_features
from d2r.features.base import LocalFeatureExtractor
from d2r.io.feature_store import FeatureStore

__all__ = ["build_index_ray", "encode_ray"]

logger = logging.getLogger(__name__)


class _EncodeWorker:
    """A Ray actor: opens the feature store and the codebook once, encodes batches of images."""

    def __init__(self, config: Config, store_path: str, boxes_dir: str, centroids: np.ndarray) -> None:
        self.config = config
        self.boxes_dir = boxes_dir
        self.store = FeatureStore.open(store_path)
        self.codebook = Codebook(np.asarray(centroids))

    def encode(self, names: list[str]) -> list:
        use_regions = self.config.regions.source != "none"
        entries = []
        for name, whole in zip(names, self.store.get_many(names)):
            regions = [whole]
            if use_regions:
                boxes = read_regions(self.boxes_dir, name, whole.image_size)
                regions = region_features(self.store, name, boxes, mode=self.config.regions.features)
            entries.append(encode_database_image(regions, self.codebook, self.config))
        return entries


def encode_ray(
    config: Config,
    store_path: str | os.PathLike,
    boxes_dir: str | os.PathLike,
    codebook: Codebook,
    batches: list[list[str]],
    on_batch: Callable[[int, list], None],
    *,
    address: Optional[str] = None,
    num_workers: Optional[int] = None,
    num_cpus_per_worker: float = 1.0,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    show_progress: Optional[bool] = None,
) -> None:
    """Quantize + aggregate ``batches`` of stored images on Ray actors.

    ``on_batch(i, entries)`` receives the database entries of ``batches[i]``
    (:func:`d2r.encode.encode_database_image` of each image) in batch order.
    """
    if not batches:
        return
    ray = init_ray(address)
    if num_workers is None:
        num_workers = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus_per_worker, 1e-9)))
    num_workers = max(1, min(int(num_workers), len(batches)))
    remote = ray.remote(num_cpus=num_cpus_per_worker, max_restarts=max_restarts,
                        max_task_retries=max_task_retries)(_EncodeWorker)
    centroids = ray.put(np.ascontiguousarray(codebook.centroids))
    actors = [remote.remote(config, str(store_path), str(boxes_dir), centroids)
              for _ in range(num_workers)]
    logger.info("encoding %d batches with %d Ray actors", len(batches), num_workers)
    try:
        run_on_actors(actors, len(batches), lambda actor, i: actor.encode.remote(batches[i]),
                      on_batch, ordered=True, per_actor=2, show_progress=show_progress,
                      desc="aggregate")
    finally:
        kill_actors(actors)


def build_index_ray(
    config: Config,
    source: cli.ImageSource,
    out: str | os.PathLike,
    *,
    address: Optional[str] = None,
    num_workers: Optional[int] = None,
    num_cpus_per_worker: float = 1.0,
    num_gpus_per_worker: float = 0.0,
    num_encoders: Optional[int] = None,
    chunk_size: int = 128,
    batch_size: int = 512,
    num_shards: Optional[int] = None,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    extractor_factory: Optional[Callable[[Config], LocalFeatureExtractor]] = None,
    show_progress: Optional[bool] = None,
) -> Path:
    """:func:`d2r.build_index.build_index` on Ray: same directory, same index arrays.

    Args:
        config, source, out: as for ``build_index``.
        address: Ray address (``None``: running session / ``$RAY_ADDRESS`` / local;
            ``"auto"``: this node's cluster).
        num_workers, num_cpus_per_worker, num_gpus_per_worker, chunk_size,
        max_restarts, max_task_retries, extractor_factory: extraction, see
            :func:`d2r.distributed.run_extract_ray`.
        num_encoders: quantize + aggregate actors (default: one per cluster CPU).
        batch_size: images per encode task.
        num_shards: write ``OUT/shards`` (``num_shards`` shard indexes for
            sharded search through :class:`d2r.searcher.Searcher`) instead of ``OUT/search``.
        show_progress: progress bars (``None``: only on a terminal).

    Returns:
        ``out``.
    """
    validate(config)
    cnn = config.features.backend == "cnn"
    if cnn and (num_shards or config.features.cnn.store_maps):
        raise ValueError("CNN descriptors build one unsharded global index on Ray, without "
                         "activation maps (num_shards / features.cnn.store_maps: use the "
                         "single-process build)")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = run_extract_ray(
        config, source, out / "features", boxes_dir=out / "boxes", address=address,
        num_workers=num_workers, num_cpus_per_worker=num_cpus_per_worker,
        num_gpus_per_worker=num_gpus_per_worker, chunk_size=chunk_size,
        max_restarts=max_restarts, max_task_retries=max_task_retries,
        extractor_factory=extractor_factory, show_progress=show_progress)
    with FeatureStore.open(out / "features") as store:
        names = indexed_names(store, source)
        if cnn:
            index = global_descriptor_index(config, store, names)
            record = index_record(config, None, out, kind=index.kind, features=store.config,
                                  num_images=len(names), num_skipped=len(summary.skipped))
            save_index(index, out, record)
            return finish_build(out, record, start, where=" on Ray")
        codebook = load_or_train_codebook(config, store, names, out)
        feature_config = store.config
    record = index_record(config, codebook, out, kind=new_index(config, codebook).kind,
                          features=feature_config, num_images=len(names),
                          num_skipped=len(summary.skipped))
    bounds = shard_bounds(len(names), num_shards) if num_shards else np.array([0, len(names)])
    batches: list[list[str]] = []
    last_batch_of: dict[int, int] = {}  # batch index -> shard it completes
    for s in range(len(bounds) - 1):
        for lo in range(int(bounds[s]), int(bounds[s + 1]), int(batch_size)):
            batches.append(names[lo:min(lo + int(batch_size), int(bounds[s + 1]))])
        last_batch_of[len(batches) - 1] = s
    state: dict[str, Any] = {"index": new_index(config, codebook), "items": 0, "images": 0}
    if num_shards:
        shard_dir = out / "shards"
        shard_dir.mkdir(exist_ok=True)

    def on_batch(i: int, entries: list) -> None:
        index = state["index"]
        index.add(entries, names=batches[i])
        if not num_shards or i not in last_batch_of:
            return
        s = last_batch_of[i]
        shard_record = {"index": s, "count": len(bounds) - 1, "first_id": int(bounds[s]),
                        "num_images": int(bounds[s + 1] - bounds[s])}
        index.save(shard_dir / shard_name(s), config={**record, "shard": shard_record},
                   overwrite=True)
        state["items"] += getattr(index, "num_items", len(index))
        state["images"] += len(index)
        state["index"] = new_index(config, codebook)

    encode_ray(config, out / "features", out / "boxes", codebook, batches, on_batch,
               address=address, num_workers=num_encoders, max_restarts=max_restarts,
               max_task_retries=max_task_retries, show_progress=show_progress)
    index = state["index"]
    if num_shards:
        write_shards_manifest(shard_dir, kind=record["kind"], bounds=bounds, config=record)
        remove_extra_shards(shard_dir, len(bounds) - 1)
        if (out / "search").exists():
            logger.warning("removing %s left by an unsharded build", out / "search")
            shutil.rmtree(out / "search")
        record["shards"] = {"path": "shards", "count": int(len(bounds) - 1)}
        if record["kind"] == "regional":
            record["items_per_image"] = state["items"] / state["images"]
    else:
        if (out / "shards").exists():
            logger.warning("%s is from an earlier build; split the new index again "
                           "(python -m d2r.distributed.shards %s --shards N --overwrite)",
                           out / "shards", out)
        save_index(index, out, record)
    return finish_build(out, record, start, where=" on Ray")
