"""``build_index`` on a Ray cluster: extraction actors, parallel quantization + aggregation.

Stages (the outputs are those of :func:`d2r.pipeline.build.build_index`)::

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
applied to the unsharded build.  Methods without a codebook (the CNN baselines) build
one unsharded index on Ray, without activation maps.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from d2r.encoding.codebook import Codebook
from d2r.config import Config
from d2r.distributed._ray import init_ray, kill_actors, run_on_actors
from d2r.distributed.extract import run_extract_ray
from d2r.distributed.options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CPUS_PER_WORKER,
    DEFAULT_ENCODE_BATCH_SIZE,
    DEFAULT_GPUS_PER_WORKER,
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_TASK_RETRIES,
)
from d2r.distributed.shards import (
    remove_extra_shards,
    shard_bounds,
    shard_name,
    shard_record,
    write_shards_manifest,
)
from d2r.index.layout import BOXES, FEATURES, index_record
from d2r.io.feature_store import FeatureStore
from d2r.methods import make_method, validate
from d2r.pipeline.build import (
    finish_build,
    indexed_names,
    load_or_train_codebook,
    prepare_quantizer,
    save_index,
    start_build,
)
from d2r.pipeline.extraction import image_regions
from d2r.index.quantizer import attach_graph
from d2r.pipeline.sources import ImageSource

__all__ = ["build_index_ray", "encode_ray"]

logger = logging.getLogger(__name__)


class _EncodeWorker:
    """A Ray actor: opens the feature store and the codebook once, encodes batches of images."""

    def __init__(self, config: Config, store_path: str, boxes_dir: str,
                 centroids: Optional[np.ndarray], graph: Optional[tuple[str, dict]]) -> None:
        self.config = config
        self.method = make_method(config)
        self.boxes_dir = boxes_dir
        self.store = FeatureStore.open(store_path, value_type=self.method.input_type)
        self.codebook = None if centroids is None else Codebook(np.asarray(centroids))
        if graph is not None:
            index_dir, record = graph
            attach_graph(self.codebook, record, index_dir)

    def encode(self, names: list[str]) -> list:
        return [self.method.encode_database(
                    image_regions(self.config, self.store, self.boxes_dir, name, whole),
                    self.codebook)
                for name, whole in zip(names, self.store.get_many(names))]


def encode_ray(
    config: Config,
    store_path: str | os.PathLike,
    boxes_dir: str | os.PathLike,
    codebook: Optional[Codebook],
    batches: list[list[str]],
    on_batch: Callable[[int, list], None],
    *,
    graph: Optional[tuple[str, dict]] = None,
    address: Optional[str] = None,
    num_workers: Optional[int] = None,
    num_cpus_per_worker: float = DEFAULT_CPUS_PER_WORKER,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    show_progress: Optional[bool] = None,
) -> None:
    """Quantize + aggregate ``batches`` of stored images on Ray actors.

    ``on_batch(i, entries)`` receives the database entries of ``batches[i]`` (the
    method's ``encode_database`` of each image) in batch order.  ``graph``: (index
    directory, quantizer record) of the HNSW graph the actors quantize with
    (:func:`d2r.index.quantizer.attach_graph`; the directory must be readable by them).
    """
    if not batches:
        return
    ray = init_ray(address)
    if num_workers is None:
        num_workers = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus_per_worker, 1e-9)))
    num_workers = max(1, min(int(num_workers), len(batches)))
    remote = ray.remote(num_cpus=num_cpus_per_worker, max_restarts=max_restarts,
                        max_task_retries=max_task_retries)(_EncodeWorker)
    centroids = None if codebook is None else ray.put(np.ascontiguousarray(codebook.centroids))
    actors = [remote.remote(config, str(store_path), str(boxes_dir), centroids, graph)
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
    source: ImageSource,
    out: str | os.PathLike,
    *,
    address: Optional[str] = None,
    num_workers: Optional[int] = None,
    num_cpus_per_worker: float = DEFAULT_CPUS_PER_WORKER,
    num_gpus_per_worker: float = DEFAULT_GPUS_PER_WORKER,
    num_encoders: Optional[int] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = DEFAULT_ENCODE_BATCH_SIZE,
    num_shards: Optional[int] = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    extractor_factory: Optional[Callable[[Config], Any]] = None,
    show_progress: Optional[bool] = None,
) -> Path:
    """:func:`d2r.pipeline.build.build_index` on Ray: same directory, same index arrays.

    Args:
        config, source, out: as for ``build_index``.
        address: Ray address (``None``: running session / ``$RAY_ADDRESS`` / local;
            ``"auto"``: this node's cluster).
        num_workers, num_cpus_per_worker, num_gpus_per_worker, chunk_size,
        max_restarts, max_task_retries, extractor_factory: extraction, see
            :func:`d2r.distributed.run_extract_ray`.
        num_encoders: encode actors (default: one per cluster CPU).
        batch_size: images per encode task.
        num_shards: write ``OUT/shards`` (``num_shards`` shard indexes for sharded
            search through :class:`d2r.pipeline.searcher.Searcher`) instead of ``OUT/search``.
        show_progress: progress bars (``None``: only on a terminal).

    Returns:
        ``out``.
    """
    method = validate(config)
    if method.keeps_maps or (num_shards and not method.uses_codebook):
        raise ValueError(f"{method.name}: the Ray build writes one unsharded index without "
                         "activation maps for methods without a codebook (num_shards / "
                         "features.cnn.store_maps: use the single-process build)")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out)
    start_build(out)
    start = time.perf_counter()
    summary = run_extract_ray(
        config, source, out / FEATURES, boxes_dir=out / BOXES, address=address,
        num_workers=num_workers, num_cpus_per_worker=num_cpus_per_worker,
        num_gpus_per_worker=num_gpus_per_worker, chunk_size=chunk_size,
        max_restarts=max_restarts, max_task_retries=max_task_retries,
        extractor_factory=extractor_factory, show_progress=show_progress)
    with FeatureStore.open(out / FEATURES, value_type=method.input_type) as store:
        names = indexed_names(store, source)
        codebook = load_or_train_codebook(config, store, names, out) \
            if method.uses_codebook else None
        dim, feature_config = store.dim, store.config
    config, quantizer = prepare_quantizer(config, codebook, out)
    record = index_record(config, codebook, out, kind=method.new_index(codebook, dim).kind,
                          features=feature_config, num_images=len(names),
                          num_skipped=len(summary.skipped), images_root=source.root,
                          quantizer=quantizer)
    writer = _IndexWriter(method, codebook, dim, out, record, names, int(batch_size),
                          num_shards=num_shards)
    encode_ray(config, out / FEATURES, out / BOXES, codebook, writer.batches, writer.add,
               graph=None if quantizer is None else (str(out), quantizer), address=address,
               num_workers=num_encoders, max_restarts=max_restarts,
               max_task_retries=max_task_retries, show_progress=show_progress)
    writer.finish()
    return finish_build(out, record, start, where=" on Ray")


class _IndexWriter:
    """Adds encoded batches in order to one index, or to consecutive shards saved as they fill."""

    def __init__(self, method, codebook: Optional[Codebook], dim: int, out: Path, record: dict,
                 names: list[str], batch_size: int, *, num_shards: Optional[int]) -> None:
        self.method, self.codebook, self.dim, self.out = method, codebook, dim, out
        self.record, self.num_shards = record, num_shards
        self.shard_dir = out / "shards"
        self.index = method.new_index(codebook, dim)
        self.items = self.images = 0
        self.bounds = shard_bounds(len(names), num_shards) if num_shards \
            else np.array([0, len(names)])
        self.batches: list[list[str]] = []
        """The batches of ``names`` to encode, in order; none crosses a shard boundary."""
        self.last_batch_of: dict[int, int] = {}  # batch index -> shard it completes
        for s in range(len(self.bounds) - 1):
            lo, hi = int(self.bounds[s]), int(self.bounds[s + 1])
            self.batches += [names[i:min(i + batch_size, hi)] for i in range(lo, hi, batch_size)]
            self.last_batch_of[len(self.batches) - 1] = s
        if num_shards:
            self.shard_dir.mkdir(exist_ok=True)

    def add(self, i: int, entries: list) -> None:
        """Add batch ``i``; save the shard it completes (sharded build)."""
        self.method.add(self.index, entries, self.batches[i])
        if not self.num_shards or i not in self.last_batch_of:
            return
        s = self.last_batch_of[i]
        self.index.save(self.shard_dir / shard_name(s),
                        config={**self.record, "shard": shard_record(s, self.bounds)},
                        overwrite=True)
        self.items += getattr(self.index, "num_items", len(self.index))
        self.images += len(self.index)
        self.index = self.method.new_index(self.codebook, self.dim)

    def finish(self) -> None:
        """Write the shards manifest, or save the single index as a new generation; both
        note what they wrote in the record."""
        out, record = self.out, self.record
        if not self.num_shards:
            if self.shard_dir.exists():
                logger.warning("%s is from an earlier build; split the new index again "
                               "(d2r shards %s --shards N --overwrite)",
                               self.shard_dir, out)
            save_index(self.index, out, record)
            return
        count = len(self.bounds) - 1
        write_shards_manifest(self.shard_dir, kind=record["kind"], bounds=self.bounds,
                              config=record)
        remove_extra_shards(self.shard_dir, count)
        record["shards"] = {"path": "shards", "count": int(count)}
        if hasattr(self.index, "items_per_image"):
            record["items_per_image"] = self.items / self.images
