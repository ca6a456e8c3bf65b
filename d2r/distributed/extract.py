"""Feature extraction on a Ray cluster, written into one resumable feature store.

Design.  A :class:`~d2r.io.feature_store.FeatureStore` has a single writer, so
every extraction actor (one model load per actor, ``num_gpus`` per actor on a GPU
cluster) writes its own *part store* ``<store>.parts/shard-0007/``.  The image
list is cut into chunks of consecutive images; each chunk is one actor task that
runs :func:`d2r.pipeline.extraction.extract_to_store` into the actor's part
store, which commits the chunk when the task ends.  At the end the part stores
are merged into the store by *adopting their committed shard files*
(:meth:`~d2r.io.feature_store.FeatureStore.adopt_shard`: hard links, or copies
across file systems): merging costs one ``link`` per shard file, not a rewrite
of the features, and every reader (``build_index``, ``Searcher``, re-ranking)
keeps reading one ordinary store.

Fault tolerance.  Committed shards are immutable, so a crashed actor loses at
most its current chunk; Ray restarts it (``max_restarts``) and retries the
chunk (``max_task_retries``) into the same part store, which skips what it
already holds.  A killed driver loses nothing committed either: the rerun
collects the names present in the store and in every part store, extracts only
the others, and merges.  The merge itself is idempotent (a shard whose entries
are all in the store is skipped; one partly present is copied entry by entry,
first occurrence wins), so a merge killed half-way is finished by the rerun.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from d2r.config import Config
from d2r.distributed._ray import init_ray, kill_actors, run_on_actors
from d2r.distributed.options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CPUS_PER_WORKER,
    DEFAULT_GPUS_PER_WORKER,
    DEFAULT_MAX_RESTARTS,
    DEFAULT_MAX_TASK_RETRIES,
)
from d2r.features.registry import make_extractor
from d2r.io.feature_store import FeatureStore, StoreConfigError
from d2r.pipeline.extraction import (
    ExtractionSummary,
    Extractor,
    comparable_store_config,
    extract_to_store,
    finish_summary,
    store_config,
)
from d2r.pipeline.sources import ImageSource

__all__ = ["run_extract_ray", "merge_feature_stores", "part_store_paths", "parts_dir_for"]

logger = logging.getLogger(__name__)

_PART_RE = re.compile(r"^shard-(\d{4,})$")  # part store folders, one per actor
_COPY_BATCH = 256


def parts_dir_for(store_path: str | os.PathLike) -> Path:
    """Default folder of the per-worker part stores of ``store_path``: ``<store>.parts``."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".parts")


def part_store_paths(parts_dir: str | os.PathLike) -> list[Path]:
    """The part stores ``shard-NNNN`` inside ``parts_dir``, by number (none if it is absent)."""
    parts_dir = Path(parts_dir)
    if not parts_dir.is_dir():
        return []
    found = [p for p in parts_dir.iterdir() if p.is_dir() and _PART_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_PART_RE.match(p.name).group(1)))


class _ExtractWorker:
    """A Ray actor: one extractor (one model load) writing one part store."""

    def __init__(self, config: Config, store_path: str, boxes_dir: Optional[str],
                 extractor_factory: Optional[Callable[[Config], Extractor]]) -> None:
        self.config = config
        self.store_path = store_path
        self.boxes_dir = boxes_dir
        self.extractor = (extractor_factory or make_extractor)(config)

    def describe(self) -> dict[str, Any]:
        """What the part store records: extractor/image/region config, dim, dtype."""
        return {"config": store_config(self.config, self.extractor), "dim": self.extractor.dim,
                "dtype": self.config.features.store_dtype}

    def extract(self, names: Sequence[str], paths: Sequence[str],
                rotations: Sequence[int] = ()) -> dict[str, Any]:
        source = ImageSource(tuple(names), tuple(Path(p) for p in paths), tuple(rotations))
        summary = extract_to_store(self.config, source, self.store_path, boxes_dir=self.boxes_dir,
                                   extractor=self.extractor, show_progress=False)
        return {"extracted": summary.extracted, "already_done": summary.already_done,
                "skipped": list(summary.skipped), "featureless": list(summary.featureless),
                "seconds": summary.seconds}


def run_extract_ray(
    config: Config,
    source: ImageSource,
    store_path: str | os.PathLike,
    *,
    boxes_dir: Optional[str | os.PathLike] = None,
    address: Optional[str] = None,
    num_workers: Optional[int] = None,
    num_cpus_per_worker: float = DEFAULT_CPUS_PER_WORKER,
    num_gpus_per_worker: float = DEFAULT_GPUS_PER_WORKER,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    parts_dir: Optional[str | os.PathLike] = None,
    keep_parts: bool = False,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    extractor_factory: Optional[Callable[[Config], Extractor]] = None,
    show_progress: Optional[bool] = None,
) -> ExtractionSummary:
    """Extract every image of ``source`` missing from the store at ``store_path``, on Ray.

    The result is the store :func:`d2r.pipeline.extraction.extract_to_store` would write
    (same entries, possibly in another internal order, which no reader depends on).

    Args:
        config: resolved config (features, images, regions).
        source: the images.
        store_path: the feature store to complete (created if absent).
        boxes_dir: where ``.boxes`` files go when ``regions.source`` is not ``none``;
            like ``store_path`` it must be on a file system every node sees.
        address: Ray address (``None``: a running session, ``$RAY_ADDRESS`` or a new
            local instance; ``"auto"``: the cluster of this node).
        num_workers: extraction actors; default: as many as the cluster's CPUs
            (or GPUs, with ``num_gpus_per_worker``) allow.
        num_cpus_per_worker, num_gpus_per_worker: Ray resources of one actor
            (``num_gpus_per_worker=1`` puts one DELF model on each GPU; 0.5 packs two).
        chunk_size: images per task; a crash loses at most one chunk per actor.
        parts_dir: where the part stores go (default ``<store>.parts``).
        keep_parts: keep the part stores after the merge (their shard files are
            hard links into the store, so keeping them costs no space on one file system).
        max_restarts, max_task_retries: Ray retries of a dead actor and its task.
        extractor_factory: ``config -> extractor`` run once in each actor
            (default :func:`d2r.features.registry.make_extractor`).
        show_progress: progress bar (``None``: only on a terminal).

    Returns:
        The summary over all images (``already_done`` counts images found in the
        store or in part stores of an earlier run).
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if num_workers is not None and int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if config.regions.source != "none" and boxes_dir is None:
        raise ValueError(f"regions.source={config.regions.source!r} needs a boxes directory")
    start = time.perf_counter()
    store_path = Path(store_path)
    parts_dir = Path(parts_dir) if parts_dir is not None else parts_dir_for(store_path)
    done = _names_present([store_path, *part_store_paths(parts_dir)])
    todo = [i for i, name in enumerate(source.names) if name not in done]
    summary = ExtractionSummary(already_done=len(source) - len(todo),
                                skipped=list(source.rejected))
    if summary.already_done:
        logger.info("%s: %d of %d images already extracted", store_path, summary.already_done,
                    len(source))
    if todo:
        ray = init_ray(address)
        workers = _worker_count(ray, num_workers, num_cpus_per_worker, num_gpus_per_worker,
                                -(-len(todo) // int(chunk_size)))
        parts_dir.mkdir(parents=True, exist_ok=True)
        taken = {int(_PART_RE.match(p.name).group(1)) for p in part_store_paths(parts_dir)}
        remote = ray.remote(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
                            max_restarts=max_restarts, max_task_retries=max_task_retries)(_ExtractWorker)
        actors = [remote.remote(config, str(parts_dir / f"shard-{w:04d}"),
                                None if boxes_dir is None else str(boxes_dir), extractor_factory)
                  for w in range(workers)]
        logger.info("extracting %d images with %d Ray actors (%d used part numbers before)",
                    len(todo), workers, len(taken))
        try:
            described = ray.get(actors[0].describe.remote())
            _check_store(store_path, described)
            chunks = [todo[i:i + int(chunk_size)] for i in range(0, len(todo), int(chunk_size))]
            skipped: list[tuple[str, str]] = list(summary.skipped)
            featureless: list[str] = []

            def submit(actor, i):
                idx = chunks[i]
                return actor.extract.remote([source.names[j] for j in idx],
                                            [str(source.paths[j]) for j in idx],
                                            [source.rotation(j) for j in idx])

            def on_result(i, value):
                summary.extracted += value["extracted"]
                summary.already_done += value["already_done"]
                skipped.extend(value["skipped"])
                featureless.extend(value["featureless"])

            run_on_actors(actors, len(chunks), submit, on_result, per_actor=2,
                          show_progress=show_progress, desc="extract")
        finally:
            kill_actors(actors)
        order = {name: i for i, name in enumerate(source.names)}
        summary.skipped = sorted(skipped, key=lambda item: order.get(item[0], -1))
        summary.featureless = sorted(featureless, key=order.__getitem__)
    parts = part_store_paths(parts_dir)
    if parts:
        merge_feature_stores(parts, store_path)
        if not keep_parts:
            shutil.rmtree(parts_dir, ignore_errors=True)
    return finish_summary(summary, store_path, start, where=" on Ray")


def _worker_count(ray, requested: Optional[int], cpus: float, gpus: float, num_chunks: int) -> int:
    if requested is not None:
        return max(1, min(int(requested), num_chunks))
    resources = ray.cluster_resources()
    fits = []
    if cpus > 0:
        fits.append(int(resources.get("CPU", 1) // cpus))
    if gpus > 0:
        fits.append(int(resources.get("GPU", 0) // gpus))
        if fits[-1] == 0:
            raise ValueError(f"num_gpus_per_worker={gpus} but the Ray cluster has no GPU")
    return max(1, min([*fits, num_chunks]) if fits else num_chunks)


def _names_present(stores: Iterable[Path]) -> set[str]:
    """Names held by the stores among ``stores`` that exist (opened read-only)."""
    names: set[str] = set()
    for path in stores:
        if not FeatureStore.exists(path):
            continue
        with FeatureStore.open(path) as store:
            names.update(store.names())
    return names


def _check_store(store_path: Path, described: dict[str, Any]) -> None:
    """Fail before extracting when the existing store was made with another config."""
    if FeatureStore.exists(store_path):
        FeatureStore.open(store_path, config=described["config"], dim=described["dim"],
                          dtype=described["dtype"], upgrade=comparable_store_config).close()


def merge_feature_stores(sources: Sequence[str | os.PathLike], dest: str | os.PathLike) -> int:
    """Merge the feature stores ``sources`` into the store ``dest`` (created if absent).

    Whole committed shards are adopted by hard link (copy across file systems);
    a shard holding names that ``dest`` already has is copied entry by entry,
    skipping those (first occurrence wins).  All stores must record the same
    extractor config, descriptor dim and dtype.  Idempotent: merging again adds
    nothing.  Sources are left as they are.

    Returns:
        The number of entries added to ``dest``.

    Raises:
        StoreConfigError: a source made with another config, dim or dtype.
        RuntimeError: ``dest`` is open for writing elsewhere.
    """
    dest = Path(dest)
    readers = []
    try:
        for src in sources:
            src = Path(src)
            if src.resolve() == dest.resolve():
                raise ValueError(f"cannot merge feature store {str(src)!r} into itself")
            readers.append(FeatureStore.open(src))
        if not readers:
            return 0
        first = readers[0]
        dims = {r.dim for r in readers if r.dim is not None}
        for other in readers[1:]:
            if other.config != first.config or other.dtype != first.dtype:
                raise StoreConfigError(f"feature stores {str(first.path)!r} and "
                                       f"{str(other.path)!r} were made with other configs "
                                       "or descriptor dtypes; not merging them")
        if len(dims) > 1:
            raise StoreConfigError(f"feature stores to merge hold descriptors of dims {sorted(dims)}")
        dim = dims.pop() if dims else None
        added = 0
        with FeatureStore.open(dest, mode="a", config=first.config, dim=dim,
                               dtype=first.dtype) as out:
            for reader in readers:
                for file, names in reader.shards():
                    new = list(dict.fromkeys(n for n in names if n not in out))
                    if new == names:
                        out.adopt_shard(reader, file)
                    elif new:
                        logger.warning("%s: %d of its %d entries are already in %s or repeated; "
                                       "copying the others", file, len(names) - len(new),
                                       len(names), dest)
                        for lo in range(0, len(new), _COPY_BATCH):
                            batch = new[lo:lo + _COPY_BATCH]
                            for name, feats in zip(batch, reader.get_many(batch)):
                                out.put(name, feats)
                    added += len(new)
        logger.info("merged %d entries from %d stores into %s", added, len(readers), dest)
        return added
    finally:
        for reader in readers:
            reader.close()
