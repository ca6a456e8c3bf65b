"""Build a searchable index from images: ``python -m d2r.build_index``.

Stages, each writing into the index directory ``OUT``::

    OUT/features/     local features (+ region crops), resumable feature store
    OUT/maps/         CNN activation maps for AML re-ranking (features.cnn.store_maps)
    OUT/boxes/        regions per image as .boxes files (when regions are used)
    OUT/codebooks/    the trained codebook, one folder per codebook config
    OUT/search/       the inverted / regional / global index (flat arrays, mmap)
    OUT/index.json    manifest: resolved config, codebook hash, feature config, counts

A killed build is restarted with the same command: extracted images are kept,
a trained codebook is reused, and the search structure (cheap next to
extraction) is rebuilt and replaced atomically.  ``index.json`` is written last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from d2r import __version__, cli
from d2r.codebook import (
    Codebook,
    load_codebook,
    load_tf_checkpoint,
    save_codebook,
    train_codebook,
)
from d2r.config import Config, to_dict
from d2r.distributed.options import add_ray_args, ray_kwargs, ray_requested
from d2r.encode import encode_database_image, sample_descriptors, validate
from d2r.extract import extract_to_store, make_extractor, read_regions, region_features
from d2r.index.global_index import GlobalIndex
from d2r.index.global_local import GlobalLocalIndex
from d2r.index.inverted import InvertedIndex
from d2r.index.region_vectors import RegionVectorIndex
from d2r.index.regional import RegionalIndex
from d2r.io.atomic import atomic_write_json
from d2r.io.feature_store import FeatureStore

__all__ = [
    "MANIFEST", "MAPS", "FORMAT", "VERSION", "build_index", "codebook_dir", "indexed_names",
    "global_descriptor_index",
    "load_or_train_codebook",
    "new_index", "index_record", "save_index", "finish_build", "main",
]

logger = logging.getLogger(__name__)

MANIFEST = "index.json"
MAPS = "maps"
"""Folder of the database activation maps (CNN descriptors with ``features.cnn.store_maps``)."""
FORMAT = "d2r-index"
VERSION = 1
_BATCH = 512


def codebook_dir(out: Path, config: Config) -> Path:
    """Where the codebook trained for ``config.codebook`` lives inside index directory ``out``."""
    spec = json.dumps(to_dict(config.codebook), sort_keys=True).encode()
    return out / "codebooks" / hashlib.sha256(spec).hexdigest()[:16]


def indexed_names(store: FeatureStore, source: cli.ImageSource) -> list[str]:
    """The images of ``source`` whose features are in ``store``, in source order (not none)."""
    names = [n for n in source.names if n in store]
    if not names:
        raise ValueError(f"no image of the {len(source)} given could be read; see "
                         f"{store.path / 'skipped.tsv'}")
    return names


def load_or_train_codebook(
    config: Config, store: FeatureStore, names: Sequence[str], out: Path
) -> Codebook:
    """``config.codebook.path`` if set, else the codebook trained earlier for this config, else train.

    Training samples at most ``num_words * max_points_per_word`` descriptors
    from a random subset of ``names`` (whole-image features).
    """
    opts = config.codebook
    if opts.path:
        path = Path(opts.path)
        codebook = load_codebook(path) if path.is_dir() and (path / "codebook.json").exists() \
            else load_tf_checkpoint(path)
    else:
        folder = codebook_dir(out, config)
        if (folder / "codebook.json").exists():
            logger.info("reusing codebook %s", folder)
            return load_codebook(folder)
        budget = opts.num_words * opts.max_points_per_word
        rng = np.random.default_rng(opts.seed)
        order = rng.permutation(len(names))
        picked, count = [], 0
        for i in order:
            feats = store.get(names[i])
            picked.append(feats)
            count += len(feats)
            if count >= 2 * budget:
                break
        sample = sample_descriptors(picked, max_count=budget, seed=opts.seed)
        if len(sample) < opts.num_words:
            raise ValueError(
                f"codebook.num_words={opts.num_words} but the indexed images have only "
                f"{len(sample)} descriptors; use a smaller codebook or load one (codebook.path)")
        logger.info("training a %d-word codebook on %d descriptors", opts.num_words, len(sample))
        codebook = train_codebook(sample, opts.num_words, seed=opts.seed,
                                  max_points_per_word=opts.max_points_per_word, niter=opts.niter)
        save_codebook(codebook, folder)
    if codebook.dim != store.dim:
        raise ValueError(f"codebook has {codebook.dim}-D words but the features are "
                         f"{store.dim}-D ({opts.path or 'trained codebook'})")
    return codebook


def new_index(config: Config, codebook: Codebook):
    """An empty search structure for aggregated images of ``config``."""
    agg = config.aggregation
    if agg.method in ("vlad", "r_vlad"):
        return GlobalIndex(codebook.num_words * codebook.dim)
    binary = agg.method.endswith("_star")
    cls = RegionalIndex if agg.regional_search else InvertedIndex
    return cls(num_words=codebook.num_words, dim=codebook.dim, binary=binary)


def index_record(config: Config, codebook: Optional[Codebook], out: Path, *, kind: str,
                 features: dict, num_images: int, num_skipped: int) -> dict:
    """The ``index.json`` content (without timing) of an index built into ``out``."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "d2r_version": __version__,
        "kind": kind,
        "config": to_dict(config),
        "codebook": None if codebook is None else {
            "sha256": codebook.sha256, "num_words": codebook.num_words, "dim": codebook.dim,
            "path": os.path.relpath(config.codebook.path or codebook_dir(out, config), out)},
        "features": features,
        "num_images": num_images,
        "num_skipped": num_skipped,
    }


def _aggregated_index(config: Config, codebook: Codebook, store: FeatureStore,
                      names: Sequence[str], boxes_dir: Path, show_progress: Optional[bool]):
    """Aggregate every image (with its regions) and add it to a new index."""
    index = new_index(config, codebook)
    use_regions = config.regions.source != "none"
    for lo in tqdm(range(0, len(names), _BATCH), desc="aggregate", unit="batch",
                   disable=None if show_progress is None else not show_progress):
        batch = names[lo:lo + _BATCH]
        entries = []
        for name, whole in zip(batch, store.get_many(batch)):
            regions = [whole]
            if use_regions:
                boxes = read_regions(boxes_dir, name, whole.image_size)
                regions = region_features(store, name, boxes, mode=config.regions.features)
            entries.append(encode_database_image(regions, codebook, config))
        index.add(entries, names=batch)
    return index


def global_descriptor_index(config: Config, store: FeatureStore, names: Sequence[str]):
    """The stored CNN descriptors in the search structure their method needs.

    One row per image: a flat inner-product :class:`GlobalIndex`; global + CAM-local
    rows: :class:`GlobalLocalIndex` (smaller Manhattan distance); region rows
    (``regional``): :class:`RegionVectorIndex` (best region pair).
    """
    cnn = config.features.cnn
    if cnn.method == "regional":
        index, combine = RegionVectorIndex(store.dim), list
    elif cnn.cam:
        index, combine = GlobalLocalIndex(store.dim), np.stack
    else:
        index, combine = GlobalIndex(store.dim), np.concatenate
    for lo in range(0, len(names), _BATCH):
        batch = names[lo:lo + _BATCH]
        index.add(combine([f.descriptors for f in store.get_many(batch)]), names=batch)
    return index


def build_index(
    config: Config, source: cli.ImageSource, out: str | os.PathLike,
    *, show_progress: Optional[bool] = None,
) -> Path:
    """Extract, train or load the codebook, aggregate and index ``source`` into ``out``.

    With ``features.backend: cnn`` the stored global descriptors go straight into a
    global index (no codebook; see :func:`global_descriptor_index`).
    """
    validate(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    extractor = make_extractor(config)
    keep_maps = config.features.backend == "cnn" and config.features.cnn.store_maps
    summary = extract_to_store(config, source, out / "features", boxes_dir=out / "boxes",
                               extractor=extractor, show_progress=show_progress,
                               maps_path=out / MAPS if keep_maps else None)
    with FeatureStore.open(out / "features") as store:
        names = indexed_names(store, source)
        if config.features.backend == "cnn":
            codebook = None
            index = global_descriptor_index(config, store, names)
        else:
            codebook = load_or_train_codebook(config, store, names, out)
            index = _aggregated_index(config, codebook, store, names, out / "boxes",
                                      show_progress)
        feature_config = store.config
    record = index_record(config, codebook, out, kind=index.kind, features=feature_config,
                          num_images=len(names), num_skipped=len(summary.skipped))
    save_index(index, out, record)
    return finish_build(out, record, start)


def save_index(index, out: Path, record: dict) -> None:
    """Write the search structure to ``out/search`` (replacing an older one) and note its size."""
    index.save(out / "search", config=record, overwrite=True)
    if hasattr(index, "items_per_image"):
        record["items_per_image"] = float(index.items_per_image)


def finish_build(out: Path, record: dict, start: float, *, where: str = "") -> Path:
    """Write ``index.json`` last, with the build time; the index is then complete."""
    record["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(out / MANIFEST, record)
    logger.info("indexed %d images into %s in %.1f s%s", record["num_images"], out,
                record["seconds"], where)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2r.build_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_source_args(parser)
    parser.add_argument("--out", required=True, metavar="INDEX", help="index directory")
    cli.add_config_args(parser, default_preset="rootsift-asmk-star")
    add_ray_args(parser, shards=True)
    cli.add_common_args(parser)
    args = cli.parse(parser, argv)
    config = cli.config_from_args(args)
    source = cli.source_from_args(args)
    if ray_requested(args):
        from d2r.distributed import build_index_ray

        out = build_index_ray(config, source, args.out, **ray_kwargs(args))
    else:
        out = build_index(config, source, args.out)
    manifest = json.loads((out / MANIFEST).read_text())
    recorded = manifest["config"]
    method = recorded["features"]["cnn"]["method"] if recorded["features"]["backend"] == "cnn" \
        else recorded["aggregation"]["method"]
    print(f"indexed {manifest['num_images']} images ({manifest['kind']}, {method}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
