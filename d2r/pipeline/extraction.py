"""Features of images into a resumable feature store: the library behind ``d2r extract``.

:func:`extract_to_store` runs the registered extractor (:mod:`d2r.features.registry`)
over an :class:`~d2r.pipeline.sources.ImageSource` and puts each image's value
(:class:`~d2r.types.LocalFeatures` or :class:`~d2r.types.GlobalDescriptors`, in
original-image pixels) into a :class:`~d2r.io.feature_store.FeatureStore`, and the
:class:`~d2r.types.ActivationMap` into a second store when asked.  Images already
stored are skipped; unreadable ones are listed in the store's ``skipped.tsv``, and so
are featureless ones (blank images): stored (a build indexes them) or, with
``keep_featureless=False`` (``d2r add``), left out.

Regions (``regions.source`` other than ``none``): the whole image first, then detector
boxes / grid cells / proposals, written as a reference-compatible ``.boxes`` file
(:func:`boxes_path`); with ``regions.features: crop`` region ``i >= 1`` is stored under
``"<image>#<i>"`` (:func:`region_entry`), read back by :func:`image_regions`.  The
whole-image entry is written last, so its presence marks the image as done.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from d2r.config import Config, to_dict, upgrade_record
from d2r.regions.selection import select_regions_for
from d2r.features.base import check_box
from d2r.features.registry import comparable_extractor_config, make_extractor
from d2r.io.delf_files import read_boxes, write_boxes
from d2r.io.feature_store import FeatureStore
from d2r.io.images import LoadedImage, iter_images, write_skipped
from d2r.progress import progress
from d2r.pipeline.sources import ImageSource
from d2r.types import ActivationMap, Boxes, GlobalDescriptors, LocalFeatures

Extractor = Any
"""A registered feature extractor (:mod:`d2r.features.registry`)."""
Features = Union[LocalFeatures, GlobalDescriptors]

__all__ = [
    "image_features",
    "image_features_and_map",
    "region_entry",
    "boxes_path",
    "read_regions",
    "region_features",
    "image_regions",
    "RegionFinder",
    "store_config",
    "comparable_store_config",
    "ExtractionSummary",
    "extract_to_store",
    "finish_summary",
]

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.tsv"
FEATURELESS = "no features (blank image?): indexed, but no query can find it"
FEATURELESS_LEFT_OUT = "no features (blank image?): left out, no query could find it"


def image_features(
    extractor: Extractor, image: LoadedImage, *, box: Optional[Sequence[float]] = None
) -> Features:
    """Features of a decoded image (optionally of ``box``), in original-image pixels.

    ``box`` is (x1, y1, x2, y2) in original-image pixels; ``image.pixels`` may be a
    downscaled copy, and the returned locations and ``image_size`` refer to the
    original image either way.
    """
    found = extractor.extract(image.pixels, box=_scaled_box(image, box))
    return found.mapped(image.to_original, image.original_size)


def image_features_and_map(
    extractor: Extractor, image: LoadedImage, *, box: Optional[Sequence[float]] = None
) -> tuple[GlobalDescriptors, ActivationMap]:
    """:func:`image_features` of a CNN global extractor and the activation map behind them."""
    found, amap = extractor.extract_with_map(image.pixels, box=_scaled_box(image, box))
    return found.mapped(image.to_original, image.original_size), amap


def _scaled_box(image: LoadedImage, box: Optional[Sequence[float]]):
    """An original-pixel box (x1, y1, x2, y2) in the pixels of ``image.pixels``."""
    if box is None:
        return None
    sx, sy = image.scale_xy
    x1, y1, x2, y2 = check_box(box, image.original_size)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def region_entry(name: str, region: int) -> str:
    """Feature-store entry of region ``region`` (>= 1) of image ``name``; 0 is ``name`` itself."""
    return name if region == 0 else f"{name}#{region}"


def boxes_path(boxes_dir: str | Path, name: str) -> Path:
    """Where the regions of image ``name`` are written (``name`` may contain ``/``, never
    ``..`` or a leading ``/``: nothing is written outside ``boxes_dir``)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"image name {name!r} would leave the boxes folder {boxes_dir}")
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


def image_regions(config: Config, store: FeatureStore, boxes_dir: str | Path, name: str,
                  whole: Features) -> list[Features]:
    """The features of every region of image ``name`` (whole image ``whole`` first); only
    ``[whole]`` when ``config.regions.source`` is ``none``."""
    if config.regions.source == "none":
        return [whole]
    boxes = read_regions(boxes_dir, name, whole.image_size)
    return region_features(store, name, boxes, mode=config.regions.features)


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
            from d2r.regions.detector import load_detector

            if not self.config.detector_path:
                raise ValueError("regions.source=detector needs regions.detector_path")
            self._detector = load_detector(
                self.config.detector_path, score_threshold=self.config.score_threshold,
                max_boxes=self.config.max_boxes)
        return self._detector.detect(image.pixels)


def store_config(config: Config, extractor: Extractor) -> dict:
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


@dataclass
class ExtractionSummary:
    """Outcome of one :func:`extract_to_store` run.

    ``skipped``: (name, reason) of inputs not extracted (unreadable files, duplicates,
    unusable names); ``featureless``: images extracted with no features (blank), listed
    with ``featureless_reason`` (stored and indexed, or left out).
    """

    extracted: int = 0
    already_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    featureless: list[str] = field(default_factory=list)
    featureless_reason: str = FEATURELESS
    seconds: float = 0.0


def extract_to_store(
    config: Config,
    source: ImageSource,
    store_path: str | Path,
    *,
    boxes_dir: Optional[str | Path] = None,
    extractor: Optional[Extractor] = None,
    maps_path: Optional[str | Path] = None,
    show_progress: Optional[bool] = None,
    keep_featureless: bool = True,
) -> ExtractionSummary:
    """Extract features of every image of ``source`` missing from the store at ``store_path``.

    The store records the extractor, image and region config and refuses to be
    continued with another.  ``boxes_dir`` receives the regions when
    ``config.regions.source`` is not ``none``.  With ``maps_path`` (CNN global
    extractors only) each image's activation map goes to a second store there
    (:class:`~d2r.types.ActivationMap` values, float16), from the same forward pass.
    ``keep_featureless=False`` stores nothing of an image without features (its map,
    regions and entry are left out).  ``show_progress=None`` shows a bar only on a terminal.
    """
    extractor = extractor or make_extractor(config)
    find_regions = RegionFinder(config)
    if find_regions.enabled and boxes_dir is None:
        raise ValueError(f"regions.source={config.regions.source!r} needs a boxes directory")
    crop_regions = find_regions.enabled and config.regions.features == "crop"
    store_path = Path(store_path)
    summary = ExtractionSummary(
        featureless_reason=FEATURELESS if keep_featureless else FEATURELESS_LEFT_OUT)
    start = time.perf_counter()
    with FeatureStore.open(
        store_path, mode="a", config=store_config(config, extractor), dim=extractor.dim,
        dtype=config.features.store_dtype, upgrade=comparable_store_config,
        value_type=extractor.output_type,
    ) as store, _open_maps(maps_path, config, extractor) as maps:
        todo = [i for i, name in enumerate(source.names)
                if name not in store or (maps is not None and name not in maps)]
        summary.already_done = len(source) - len(todo)
        if summary.already_done:
            logger.info("%s: %d of %d images already extracted", store_path,
                        summary.already_done, len(source))
        path_to_name = {source.paths[i]: source.names[i] for i in todo}
        path_to_rotation = {source.paths[i]: source.rotation(i) for i in todo}
        skipped_before = 0
        images = iter_images(
            [source.paths[i] for i in todo], max_side=config.images.max_side,
            max_pixels=config.images.max_pixels, on_error=config.images.on_error,
        )
        with progress("extract", len(todo), show=show_progress) as bar:
            for path, loaded in images:
                bar.skip(len(images.skipped) - skipped_before)
                skipped_before = len(images.skipped)
                t0 = time.perf_counter()
                name = path_to_name[path]
                count = _store_image(loaded.rotated(path_to_rotation[path]), name, extractor,
                                     store, maps, find_regions, crop_regions, boxes_dir,
                                     keep_featureless)
                summary.extracted += 1
                if count == 0:
                    summary.featureless.append(name)
                logger.debug("%s: %d features in %.3f s", name, count, time.perf_counter() - t0)
                bar.update()
            bar.skip(len(images.skipped) - skipped_before)
        summary.skipped = list(source.rejected) + [(path_to_name[Path(p)], reason)
                                                   for p, reason in images.skipped]
    return finish_summary(summary, store_path, start)


def _store_image(loaded: LoadedImage, name: str, extractor: Extractor, store: FeatureStore,
                 maps: Optional[FeatureStore], find_regions: RegionFinder, crop_regions: bool,
                 boxes_dir: Optional[str | Path], keep_featureless: bool) -> int:
    """Extract one decoded image into the stores: its map, its regions' ``.boxes`` file and
    crops, then its whole-image entry (last, so its presence marks the image done); nothing
    when it has no features and not ``keep_featureless``.  Returns its number of
    whole-image features."""
    amap = None
    if maps is None:
        feats = image_features(extractor, loaded)
    else:
        feats, amap = image_features_and_map(extractor, loaded)
    if len(feats) == 0 and not keep_featureless:
        return 0
    if amap is not None and name not in maps:
        maps.put(name, amap)
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
    return len(feats)


def _open_maps(maps_path: Optional[str | Path], config: Config, extractor):
    """The activation-map store at ``maps_path`` opened for appending (a null context if None)."""
    if maps_path is None:
        return contextlib.nullcontext()
    if not hasattr(extractor, "extract_with_map"):
        raise ValueError("activation maps are kept for CNN global descriptors only "
                         "(features.backend=cnn)")
    return FeatureStore.open(maps_path, mode="a", dtype="float16", upgrade=comparable_store_config,
                             config={**store_config(config, extractor), "content": "activation maps"},
                             value_type=ActivationMap)


def finish_summary(summary: ExtractionSummary, store_path: Path, start: float,
                   *, where: str = "") -> ExtractionSummary:
    """List the skipped and the featureless images in ``store_path/skipped.tsv``, time and
    log the run."""
    report = summary.skipped + [(name, summary.featureless_reason)
                                for name in summary.featureless]
    if report:
        skipped_file = store_path / SKIPPED_FILE
        write_skipped(report, skipped_file)
        if summary.skipped:
            logger.warning("%d inputs skipped (unreadable, duplicate or unusable name), listed "
                           "in %s", len(summary.skipped), skipped_file)
        if summary.featureless:
            logger.warning("%d images have no features (blank?): %s; listed in %s",
                           len(summary.featureless),
                           summary.featureless_reason.split(": ", 1)[1], skipped_file)
    summary.seconds = time.perf_counter() - start
    logger.info("extracted %d images in %.1f s%s (%d already done, %d skipped)",
                summary.extracted, summary.seconds, where, summary.already_done,
                len(summary.skipped))
    return summary

