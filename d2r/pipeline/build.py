"""Build a searchable index from images (the library behind ``python -m d2r.build_index``).

The build is a driver over the registries: the extractor named by
``features.backend`` fills ``INDEX/features``; the retrieval method selected by
the config (:func:`d2r.methods.validate`) turns each image's stored features
into index entries and makes the index they go into; the index is saved under
``INDEX/search`` and ``index.json`` is written last (:mod:`d2r.index.layout`).

A killed build is restarted with the same command: extracted images are kept,
a trained codebook is reused, and the search structure (cheap next to
extraction) is rebuilt and replaced atomically.  A codebook larger than the
collection's descriptors is refused before any work when even
``features.<backend>.max_features`` per image could not fill it, else after
extraction, the features kept for a rerun with fewer words.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from d2r.encoding.codebook import Codebook, load_codebook, open_codebook, save_codebook, train_codebook
from d2r.config import Config
from d2r.errors import InputError
from d2r.features.registry import make_extractor
from d2r.index.layout import (
    BOXES,
    FEATURES,
    MANIFEST,
    MAPS,
    SEARCH,
    check_output_dir,
    codebook_dir,
    index_record,
    new_generation,
    read_manifest,
    retire_generations,
    writer_lock,
)
from d2r.io.crash import crash_point
from d2r.io.atomic import atomic_write_json
from d2r.io.feature_store import FeatureStore
from d2r.io.images import read_skipped
from d2r.methods import validate
from d2r.pipeline.extraction import SKIPPED_FILE, extract_to_store, image_regions
from d2r.progress import progress
from d2r.index.quantizer import resolve, save_graph
from d2r.pipeline.sources import ImageSource

__all__ = [
    "build_index", "indexed_names", "check_codebook_size", "load_or_train_codebook",
    "prepare_quantizer", "sample_descriptors",
    "encode_batches", "start_build", "save_index", "finish_build",
]

logger = logging.getLogger(__name__)

BATCH = 512
"""Images read from the store and added to the index at once."""


def indexed_names(store: FeatureStore, source: ImageSource) -> list[str]:
    """The images of ``source`` whose features are in ``store``, in source order; none is
    an :class:`~d2r.errors.InputError` with the first reason of ``skipped.tsv``."""
    names = [n for n in source.names if n in store]
    if not names:
        listed = store.path / SKIPPED_FILE
        skipped = read_skipped(listed) if listed.is_file() else []
        example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise InputError(f"none of the {len(source)} images could be read{example}; all are "
                         f"listed in {listed}")
    return names


def _max_features(config: Config) -> Optional[int]:
    """The most features the configured extractor keeps per image (None: no such bound)."""
    section = getattr(config.features, config.features.backend, None)
    return getattr(section, "max_features", None)


def check_codebook_size(config: Config, method, source: ImageSource, out: Path) -> None:
    """Refuse, before any work, a codebook to train that ``source`` cannot fill: more words
    than ``len(source) * max_features`` descriptors."""
    per_image = _max_features(config)
    words = config.codebook.num_words
    if not method.uses_codebook or config.codebook.path or per_image is None \
            or (codebook_dir(out, config) / "codebook.json").exists():
        return
    most = len(source) * per_image
    if most < words:
        images = f"{len(source)} image{'s' * (len(source) != 1)}"
        raise InputError(
            f"codebook.num_words={words} but {images} give at most {most} descriptors "
            f"({per_image} each, features.{config.features.backend}.max_features): "
            f"use fewer words (--set codebook.num_words=N, N <= {most}), more images, or a "
            f"trained codebook (codebook.path)")


def sample_descriptors(features: Sequence, *, max_count: int, seed: int) -> np.ndarray:
    """Up to ``max_count`` descriptors drawn uniformly without replacement, (N, D) float32."""
    if not features:
        raise ValueError("no features to sample descriptors from")
    stacked = np.concatenate([f.descriptors for f in features])
    if len(stacked) <= max_count:
        return stacked
    rng = np.random.default_rng(seed)
    return stacked[np.sort(rng.choice(len(stacked), size=max_count, replace=False))]


def load_or_train_codebook(
    config: Config, store: FeatureStore, names: Sequence[str], out: Path
) -> Codebook:
    """``config.codebook.path`` if set, else the codebook trained earlier for this config, else train.

    Training samples at most ``num_words * max_points_per_word`` descriptors
    from a random subset of ``names`` (whole-image features).
    """
    opts = config.codebook
    if opts.path:
        codebook = open_codebook(opts.path)
    else:
        folder = codebook_dir(out, config)
        if (folder / "codebook.json").exists():
            logger.info("reusing codebook %s", folder)
            return load_codebook(folder)
        budget = opts.num_words * opts.max_points_per_word
        order = np.random.default_rng(opts.seed).permutation(len(names))
        picked, count = [], 0
        for i in order:
            picked.append(store.get(names[i]))
            count += len(picked[-1])
            if count >= 2 * budget:
                break
        sample = sample_descriptors(picked, max_count=budget, seed=opts.seed)
        if len(sample) < opts.num_words:
            raise InputError(
                f"codebook.num_words={opts.num_words} but the {len(names)} indexed images have "
                f"only {len(sample)} descriptors: run the same command with fewer words "
                f"(--set codebook.num_words=N, N <= {len(sample)}) or a trained codebook "
                f"(codebook.path); the extracted features in {store.path} are kept and reused")
        logger.info("training a %d-word codebook on %d descriptors", opts.num_words, len(sample))
        codebook = train_codebook(sample, opts.num_words, seed=opts.seed,
                                  max_points_per_word=opts.max_points_per_word, niter=opts.niter)
        save_codebook(codebook, folder)
    if codebook.dim != store.dim:
        raise InputError(f"codebook has {codebook.dim}-D words but the features are "
                         f"{store.dim}-D ({opts.path or 'trained codebook'})")
    return codebook


def prepare_quantizer(config: Config, codebook: Optional[Codebook],
                      out: Path) -> tuple[Config, Optional[dict]]:
    """``config`` with ``codebook.quantization`` resolved for ``codebook``, and the record of
    its HNSW graph, written into ``out`` (reused from the index being rebuilt there) when
    the quantization is approximate (:mod:`d2r.index.quantizer`)."""
    if codebook is None:
        return config, None
    previous = None
    if (out / MANIFEST).exists():
        previous = (read_manifest(out).get("codebook") or {}).get("quantizer")
    config = resolve(config, codebook.num_words)
    return config, save_graph(codebook, config.codebook, out, previous)


def encode_batches(method, config: Config, codebook: Optional[Codebook], store: FeatureStore,
                   names: Sequence[str], boxes_dir: Path, *, featureless: list[str],
                   show_progress: Optional[bool] = None):
    """Yield ``(batch_names, entries)``: the method's index entries of ``names``, BATCH at a
    time; the names of images without features are appended to ``featureless``."""
    with progress("aggregate", len(names), show=show_progress) as bar:
        for lo in range(0, len(names), BATCH):
            batch = names[lo:lo + BATCH]
            wholes = store.get_many(batch)
            featureless += [name for name, whole in zip(batch, wholes) if len(whole) == 0]
            entries = []
            for name, whole in zip(batch, wholes):
                entries.append(method.encode_database(
                    image_regions(config, store, boxes_dir, name, whole), codebook))
                bar.update()
            yield batch, entries


def build_index(config: Config, source: ImageSource, out: str | os.PathLike,
                *, show_progress: Optional[bool] = None) -> Path:
    """Extract, train or load the codebook (if the method uses one), encode and index
    ``source`` into ``out``; returns ``out``."""
    method = validate(config)
    out = Path(out)
    check_output_dir(out)
    check_codebook_size(config, method, source, out)
    with writer_lock(out):
        return _build(config, method, source, out, show_progress)


def _build(config: Config, method, source: ImageSource, out: Path,
           show_progress: Optional[bool]) -> Path:
    start_build(out)
    start = time.perf_counter()
    extractor = make_extractor(config)
    summary = extract_to_store(config, source, out / FEATURES, boxes_dir=out / BOXES,
                               extractor=extractor, show_progress=show_progress,
                               maps_path=out / MAPS if method.keeps_maps else None)
    crash_point("extracted")
    with FeatureStore.open(out / FEATURES, value_type=extractor.output_type) as store:
        names = indexed_names(store, source)
        codebook = load_or_train_codebook(config, store, names, out) \
            if method.uses_codebook else None
        config, quantizer = prepare_quantizer(config, codebook, out)
        crash_point("codebook")
        index = method.new_index(codebook, store.dim)
        featureless: list[str] = []
        for batch, entries in encode_batches(method, config, codebook, store, names, out / BOXES,
                                             featureless=featureless, show_progress=show_progress):
            method.add(index, entries, batch)
        feature_config = store.config
    record = index_record(config, codebook, out, kind=index.kind, features=feature_config,
                          num_images=len(names), num_skipped=len(summary.skipped),
                          images_root=source.root, quantizer=quantizer)
    if featureless:
        record["num_featureless"] = len(featureless)
    save_index(index, out, record)
    return finish_build(out, record, start)


def start_build(out: Path) -> None:
    """Refuse a directory d2r did not write, create ``out``, and remove what an interrupted
    build left (generations the manifest does not name, temporary files)."""
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        retire_generations(out, read_manifest(out))


def save_index(index, out: Path, record: dict) -> None:
    """Write the search structure into a new generation of ``out`` (named in ``record``,
    not yet current) and note its size."""
    record["search"] = f"{new_generation(out)}/{SEARCH}"
    start = time.perf_counter()
    logger.info("writing the %s index of %d images", index.kind, len(index))
    index.save(out / record["search"], config=record)
    logger.info("index written in %.1f s", time.perf_counter() - start)
    if hasattr(index, "items_per_image"):
        record["items_per_image"] = float(index.items_per_image)
    crash_point("search-saved")


def finish_build(out: Path, record: dict, start: float, *, where: str = "") -> Path:
    """Make the build current: write ``index.json`` (one atomic, fsync'd rename; the commit
    point), then remove the previous generation."""
    record["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(out / MANIFEST, record, durable=True)
    crash_point("committed")
    retire_generations(out, record)
    logger.info("indexed %d images into %s in %.1f s%s", record["num_images"], out,
                record["seconds"], where)
    return out
