"""Batch local-feature extraction into a feature store: ``python -m d2r.extract``.

Images come from a directory, a list file or a benchmark directory (its
database; Holidays images listed by ``--rotations`` are turned upright first).
Extraction resumes: images already in the store are skipped, so a killed run
is simply started again.  ``--shard i/n`` takes every n-th
image starting at i, so n processes (or machines) split a collection, each
writing its own store.  Unreadable images are skipped, logged, and listed in
``skipped.tsv`` in the store (``images.on_error: raise`` stops instead).

With ``regions.source`` other than ``none`` each image's regions (the whole
image first, then detector boxes / grid cells / proposals) are written as a
reference-compatible ``.boxes`` file under ``--boxes DIR``, and with
``regions.features: crop`` the features of region ``i >= 1`` are stored under
the entry name ``"<image>#<i>"`` (:func:`region_entry`).  The whole-image entry
is written last, so its presence marks the image as done.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from d2r import cli
from d2r.config import Config, to_dict, upgrade_record
from d2r.detection.regions import select_regions_for
from d2r.distributed.options import add_ray_args, ray_kwargs, ray_requested
from d2r.features.base import LocalFeatureExtractor
from d2r.global_.activation_maps import map_to_features
from d2r.io.delf_files import read_boxes, write_boxes
from d2r.io.feature_store import FeatureStore
from d2r.io.images import LoadedImage, iter_images, write_skipped
from d2r.types import Boxes, LocalFeatures

__all__ = [
    "make_extractor",
    "image_features",
    "image_features_and_map",
    "region_entry",
    "boxes_path",
    "read_regions",
    "region_features",
    "RegionFinder",
    "store_config",
    "comparable_store_config",
    "comparable_extractor_config",
    "ExtractionSummary",
    "extract_to_store",
    "finish_summary",
    "main",
]

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.tsv"


def make_extractor(config: Config) -> LocalFeatureExtractor:
    """The feature backend ``config.features`` describes (TensorFlow models load lazily)."""
    features = config.features
    if features.backend == "cnn":
        from d2r.global_.extractor import make_global_extractor

        return make_global_extractor(features.cnn)
    if features.backend == "rootsift":
        from d2r.features.pca import load_pca
        from d2r.features.rootsift import RootSiftExtractor

        opts = features.rootsift
        pca = load_pca(opts.pca_path) if opts.pca_path else None
        return RootSiftExtractor(
            max_features=opts.max_features,
            contrast_threshold=opts.contrast_threshold,
            edge_threshold=opts.edge_threshold,
            pca=pca,
            pca_dim=opts.pca_dim if pca is not None else None,
            whiten=opts.use_whitening,
        )
    from d2r.features.delf import DelfExtractor

    return DelfExtractor.from_config(features.delf)


def image_features(
    extractor: LocalFeatureExtractor, image: LoadedImage, *, box: Optional[Sequence[float]] = None
) -> LocalFeatures:
    """Features of a decoded image (optionally of ``box``), in original-image pixels.

    ``box`` is (x1, y1, x2, y2) in original-image pixels; ``image.pixels`` may be a
    downscaled copy, and the returned locations and ``image_size`` refer to the
    original image either way.
    """
    return _in_original_pixels(image, extractor.extract(image.pixels, box=_scaled_box(image, box)))


def image_features_and_map(
    extractor, image: LoadedImage, *, box: Optional[Sequence[float]] = None
) -> tuple[LocalFeatures, np.ndarray]:
    """:func:`image_features` of a CNN global extractor and the (H', W', C) activation map behind them."""
    feats, amap = extractor.extract_with_map(image.pixels, box=_scaled_box(image, box))
    return _in_original_pixels(image, feats), amap


def _scaled_box(image: LoadedImage, box: Optional[Sequence[float]]):
    """An original-pixel box (x1, y1, x2, y2) in the pixels of ``image.pixels``."""
    if box is None:
        return None
    sx, sy = image.scale_xy
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def _in_original_pixels(image: LoadedImage, feats: LocalFeatures) -> LocalFeatures:
    return LocalFeatures(
        locations=image.to_original(feats.locations) if len(feats) else feats.locations,
        descriptors=feats.descriptors,
        scales=feats.scales,
        scores=feats.scores,
        image_size=image.original_size,
    )


def region_entry(name: str, region: int) -> str:
    """Feature-store entry of region ``region`` (>= 1) of image ``name``; 0 is ``name`` itself."""
    return name if region == 0 else f"{name}#{region}"


def boxes_path(boxes_dir: str | Path, name: str) -> Path:
    """Where the regions of image ``name`` are written (``name`` may contain ``/``)."""
    return Path(boxes_dir) / f"{name}.boxes"


def read_regions(boxes_dir: str | Path, name: str, image_size: tuple[int, int]) -> Boxes:
    """Regions of image ``name`` (row 0 the whole image), as written by extraction."""
    return read_boxes(boxes_path(boxes_dir, name), image_size=image_size)


def region_features(
    store: FeatureStore, name: str, regions: Boxes, *, mode: str
) -> list[LocalFeatures]:
    """Features of every region of image ``name``, the whole image first.

    ``mode="crop"`` reads the features extracted from each region's crop;
    ``"select"`` takes the whole-image features whose keypoints lie in the region.
    """
    whole = store.get(name)
    if mode == "crop":
        return [whole] + store.get_many([region_entry(name, i) for i in range(1, len(regions))])
    return [whole] + [whole.in_box(box) for box in regions.xyxy[1:]]


class RegionFinder:
    """Regions of decoded images per ``config.regions`` (the detector is loaded on first use)."""

    def __init__(self, config: Config) -> None:
        self.config = config.regions
        self._detector = None

    @property
    def enabled(self) -> bool:
        return self.config.source != "none"

    def __call__(self, image: LoadedImage) -> Boxes:
        """(R, 4) boxes in original-image pixels, row 0 the whole image."""
        detections = None
        if self.config.source == "detector":
            detections = self._detect(image)
        regions = select_regions_for(self.config, image.size, detections, image=image.pixels)
        sx, sy = image.scale_xy
        xyxy = regions.xyxy / np.array([sx, sy, sx, sy], np.float32)
        width, height = image.original_size
        xyxy = np.minimum(xyxy, np.array([width, height, width, height], np.float32))
        return Boxes(xyxy, regions.scores, regions.labels)

    def _detect(self, image: LoadedImage) -> Boxes:
        if self._detector is None:
            from d2r.detection.detector import load_detector

            if not self.config.detector_path:
                raise ValueError("regions.source=detector needs regions.detector_path")
            self._detector = load_detector(
                self.config.detector_path, score_threshold=self.config.score_threshold,
                max_boxes=self.config.max_boxes)
        return self._detector.detect(image.pixels)


def store_config(config: Config, extractor: LocalFeatureExtractor) -> dict:
    """What a feature store records about how its features were made."""
    return {
        "extractor": extractor.config(),
        "images": to_dict(config.images),
        "regions": to_dict(config.regions),
    }


def comparable_store_config(recorded: Mapping) -> dict:
    """A :func:`store_config` record as stores are compared: keys added since an older d2r
    filled in (:func:`d2r.config.upgrade_record`) and selective-search settings dropped
    when regions come from another source (they had no effect)."""
    out = upgrade_record(recorded)
    regions = out.get("regions")
    if isinstance(regions, dict) and regions.get("source") != "selective_search":
        out["regions"] = {k: v for k, v in regions.items() if not k.startswith("selective_search_")}
    if isinstance(out.get("extractor"), dict):
        out["extractor"] = comparable_extractor_config(out["extractor"])
    return out


def comparable_extractor_config(description: Mapping) -> dict:
    """An extractor's ``config()`` as stores and indexes compare it: a CNN extractor's
    keys added since an older d2r filled in (:func:`d2r.config.upgrade_record`)."""
    if description.get("type") == "cnn_global":
        return upgrade_record(description, "features.cnn")
    return dict(description)


@dataclass
class ExtractionSummary:
    """Outcome of one :func:`extract_to_store` run."""

    extracted: int = 0
    already_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def extract_to_store(
    config: Config,
    source: cli.ImageSource,
    store_path: str | Path,
    *,
    boxes_dir: Optional[str | Path] = None,
    extractor: Optional[LocalFeatureExtractor] = None,
    maps_path: Optional[str | Path] = None,
    show_progress: Optional[bool] = None,
) -> ExtractionSummary:
    """Extract features of every image of ``source`` missing from the store at ``store_path``.

    The store records the extractor, image and region config and refuses to be
    continued with another.  ``boxes_dir`` receives the regions when
    ``config.regions.source`` is not ``none``.  With ``maps_path`` (CNN global
    extractors only) each image's activation map goes to a second store there
    (float16, :func:`~d2r.global_.activation_maps.map_to_features`), from the same
    forward pass.  ``show_progress=None`` shows a bar only on a terminal.
    """
    extractor = extractor or make_extractor(config)
    find_regions = RegionFinder(config)
    if find_regions.enabled and boxes_dir is None:
        raise ValueError(f"regions.source={config.regions.source!r} needs a boxes directory")
    crop_regions = find_regions.enabled and config.regions.features == "crop"
    store_path = Path(store_path)
    summary = ExtractionSummary()
    start = time.perf_counter()
    with FeatureStore.open(
        store_path, mode="a", config=store_config(config, extractor), dim=extractor.dim,
        dtype=config.features.store_dtype, upgrade=comparable_store_config,
    ) as store, _open_maps(maps_path, config, extractor) as maps:
        todo = [i for i, name in enumerate(source.names)
                if name not in store or (maps is not None and name not in maps)]
        summary.already_done = len(source) - len(todo)
        if summary.already_done:
            logger.info("%s: %d of %d images already extracted", store_path,
                        summary.already_done, len(source))
        path_to_name = {source.paths[i]: source.names[i] for i in todo}
        path_to_rotation = {source.paths[i]: source.rotation(i) for i in todo}
        images = iter_images(
            [source.paths[i] for i in todo], max_side=config.images.max_side,
            max_pixels=config.images.max_pixels, on_error=config.images.on_error,
        )
        for path, loaded in tqdm(images, total=len(todo), disable=_no_bar(show_progress),
                                 desc="extract", unit="img"):
            t0 = time.perf_counter()
            name = path_to_name[path]
            loaded = loaded.rotated(path_to_rotation[path])
            if maps is None:
                feats = image_features(extractor, loaded)
            else:
                feats, amap = image_features_and_map(extractor, loaded)
                if name not in maps:
                    maps.put(name, map_to_features(amap))
            if find_regions.enabled:
                regions = find_regions(loaded)
                out = boxes_path(boxes_dir, name)
                out.parent.mkdir(parents=True, exist_ok=True)
                write_boxes(out, regions, image_size=loaded.original_size)
                for i in range(1, len(regions) if crop_regions else 1):
                    if region_entry(name, i) not in store:
                        store.put(region_entry(name, i),
                                  image_features(extractor, loaded, box=regions.xyxy[i]))
            if name not in store:
                store.put(name, feats)
            summary.extracted += 1
            logger.debug("%s: %d features in %.3f s", name, len(feats),
                         time.perf_counter() - t0)
        summary.skipped = [(path_to_name[Path(p)], reason) for p, reason in images.skipped]
    return finish_summary(summary, store_path, start)


def _open_maps(maps_path: Optional[str | Path], config: Config, extractor):
    """The activation-map store at ``maps_path`` opened for appending (a null context if None)."""
    if maps_path is None:
        return contextlib.nullcontext()
    if not hasattr(extractor, "extract_with_map"):
        raise ValueError("activation maps are kept for CNN global descriptors only "
                         "(features.backend=cnn)")
    return FeatureStore.open(maps_path, mode="a", dtype="float16", upgrade=comparable_store_config,
                             config={**store_config(config, extractor), "content": "activation maps"})


def finish_summary(summary: ExtractionSummary, store_path: Path, start: float,
                   *, where: str = "") -> ExtractionSummary:
    """List the skipped images in ``store_path/skipped.tsv``, time and log the run."""
    if summary.skipped:
        skipped_file = store_path / SKIPPED_FILE
        write_skipped(summary.skipped, skipped_file)
        logger.warning("%d unreadable images skipped, listed in %s", len(summary.skipped),
                       skipped_file)
    summary.seconds = time.perf_counter() - start
    logger.info("extracted %d images in %.1f s%s (%d already done, %d skipped)",
                summary.extracted, summary.seconds, where, summary.already_done,
                len(summary.skipped))
    return summary


def _no_bar(show_progress: Optional[bool]) -> Optional[bool]:
    """tqdm's ``disable``: None hides the bar when stderr is not a terminal."""
    return None if show_progress is None else not show_progress


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2r.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_source_args(parser)
    parser.add_argument("--out", required=True, metavar="STORE", help="feature store directory")
    parser.add_argument("--boxes", metavar="DIR",
                        help="where region .boxes files go (needed when regions.source != none)")
    parser.add_argument("--shard", type=cli.parse_shard, default=(0, 1), metavar="I/N",
                        help="process every N-th image starting at I (0-based)")
    cli.add_config_args(parser, default_preset="rootsift-asmk-star")
    add_ray_args(parser)
    cli.add_common_args(parser)
    args = cli.parse(parser, argv)
    config = cli.config_from_args(args)
    source = cli.source_from_args(args).shard(*args.shard)
    if ray_requested(args):
        from d2r.distributed import run_extract_ray

        summary = run_extract_ray(config, source, args.out, boxes_dir=args.boxes,
                                  **ray_kwargs(args))
    else:
        summary = extract_to_store(config, source, args.out, boxes_dir=args.boxes)
    print(f"{summary.extracted} extracted, {summary.already_done} already done, "
          f"{len(summary.skipped)} skipped -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
