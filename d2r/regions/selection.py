"""Image regions for regional aggregation and regional search.

Every selection starts with the whole image; the other regions come from one
``source`` (:class:`d2r.config.RegionsConfig`):

* ``"none"``: the whole image only.
* ``"detector"``: landmark detector boxes with score ``>= score_threshold``
  (the reference's test; 0.1 is the paper's indexing threshold), best first,
  at most ``max_boxes``, clipped to the image.
* ``"grid"``: the R-MAC grid of Tolias et al. (:func:`rmac_grid`).
* ``"selective_search"``: selective search (Uijlings et al., IJCV 2013) —
  hierarchical grouping of Felzenszwalb over-segmentations, one strategy or
  the paper's diversified "fast" / "quality" sets
  (:func:`d2r.regions.selective_search.selective_search`).

Labels say where a region came from: :data:`WHOLE_IMAGE_LABEL` (0) for the
whole image, the detector's class for detector boxes (1 = landmark), the
pyramid level ``1..L`` for grid regions and
:data:`d2r.regions.selective_search.PROPOSAL_LABEL` for selective-search proposals.  The
whole image and grid regions score 1; proposals score ``1 - rank / N``.  Regions are
:class:`~d2r.types.Boxes` in image pixels, row 0 the whole image.  Pure numpy / scipy /
scikit-image: no TensorFlow.
"""

from __future__ import annotations

import logging

import numpy as np

from d2r.config import RegionsConfig
from d2r.regions.checks import check_count
from d2r.regions.grids import rmac_regions
from d2r.regions.selective_search import selective_search
from d2r.types import Boxes

__all__ = [
    "SOURCES",
    "WHOLE_IMAGE_LABEL",
    "filter_detections",
    "rmac_grid",
    "select_regions",
    "select_regions_for",
    "whole_image",
]

logger = logging.getLogger(__name__)

_DEFAULTS = RegionsConfig()

WHOLE_IMAGE_LABEL = 0
"""Label of the whole-image region."""
SOURCES = ("none", "detector", "grid", "selective_search")


def _check_size(image_size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in image_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from exc
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size!r}")
    return width, height


def whole_image(image_size: tuple[int, int]) -> Boxes:
    """The single box ``[0, 0, W, H]`` of an ``image_size`` (width, height) image, score 1."""
    width, height = _check_size(image_size)
    return Boxes(
        np.array([[0, 0, width, height]], np.float32),
        np.ones(1, np.float32),
        np.full(1, WHOLE_IMAGE_LABEL, np.int32),
    )


def rmac_grid(image_size: tuple[int, int], *, levels: int = _DEFAULTS.grid_levels) -> Boxes:
    """R-MAC regions (Tolias, Sicre & Jégou, ICLR 2016), level 1 first.

    Level ``l`` has square regions of side ``floor(2 * min(W, H) / (l + 1))``
    on an ``(l + extra_W) x (l + extra_H)`` grid (extra regions on the long side
    only, for about 40% overlap; :func:`d2r.regions.grids.rmac_regions`), starts at
    ``floor(i * (L - side) / (n - 1))`` along an axis of length ``L`` with ``n`` regions —
    the integer grid of the authors' MATLAB code and of cnnimageretrieval-pytorch, in
    pixels.  Boxes are row-major (top to bottom, then left to right) within a level; labels
    are the level, scores 1.  Regions narrower than one pixel are left out.

    Args:
        image_size: (width, height) in pixels.
        levels: number of levels L >= 1 (the paper uses 3).
    """
    width, height = _check_size(image_size)
    levels = check_count("levels", levels, 1)
    xyxy, level_of = rmac_regions(height, width, levels=levels, with_levels=True)
    return Boxes(xyxy.astype(np.float32), np.ones(len(xyxy), np.float32), level_of)


def filter_detections(
    boxes: Boxes,
    image_size: tuple[int, int],
    *,
    score_threshold: float = _DEFAULTS.score_threshold,
    max_boxes: int = _DEFAULTS.max_boxes,
) -> Boxes:
    """Detector boxes with score ``>= score_threshold``, best first, at most ``max_boxes``.

    Boxes are clipped to the ``image_size`` (width, height) image; boxes left
    with zero area are dropped.
    """
    width, height = _check_size(image_size)
    max_boxes = check_count("max_boxes", max_boxes, 0)
    if not isinstance(boxes, Boxes):
        raise TypeError(f"boxes must be d2r.types.Boxes, got {type(boxes).__name__}")
    xyxy = np.clip(boxes.xyxy, 0, np.array([width, height, width, height], np.float32))
    area_ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if np.any(~area_ok):
        logger.debug("dropping %d boxes outside the %dx%d image", int(np.sum(~area_ok)),
                     width, height)
    keep = np.flatnonzero(area_ok & (boxes.scores >= score_threshold))
    keep = keep[np.argsort(-boxes.scores[keep], kind="stable")][:max_boxes]
    return Boxes(xyxy[keep], boxes.scores[keep], boxes.labels[keep])


def _concat(first: Boxes, rest: Boxes) -> Boxes:
    return Boxes(
        np.concatenate([first.xyxy, rest.xyxy]),
        np.concatenate([first.scores, rest.scores]),
        np.concatenate([first.labels, rest.labels]),
    )


def select_regions(
    image_size: tuple[int, int],
    boxes: Boxes | None = None,
    *,
    source: str = _DEFAULTS.source,
    score_threshold: float = _DEFAULTS.score_threshold,
    max_boxes: int = _DEFAULTS.max_boxes,
    grid_levels: int = _DEFAULTS.grid_levels,
    image: np.ndarray | None = None,
    selective_search_mode: str = _DEFAULTS.selective_search_mode,
    selective_search_max_side: int = _DEFAULTS.selective_search_max_side,
) -> Boxes:
    """Regions of an ``image_size`` (width, height) image: the whole image first, then
    ``source``'s.

    Args:
        boxes: detector output in pixels; required for ``source="detector"``.
        source: ``none``, ``detector``, ``grid`` or ``selective_search``.
        score_threshold: detector boxes kept with score ``>=`` this.
        max_boxes: at most this many regions besides the whole image
            (detector and selective-search sources).
        grid_levels: R-MAC levels for ``source="grid"``.
        image: (H, W, 3) uint8, required for ``source="selective_search"``.
        selective_search_mode, selective_search_max_side: ``mode`` and
            ``max_side`` of :func:`d2r.regions.selective_search.selective_search`.

    Returns:
        Boxes, row 0 the whole image (label 0, score 1).  Regions equal to the
        whole image are not repeated.
    """
    width, height = _check_size(image_size)
    first = whole_image((width, height))
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "none":
        return first
    if source == "detector":
        if boxes is None:
            raise ValueError("source='detector' needs the detector's boxes")
        rest = filter_detections(boxes, (width, height), score_threshold=score_threshold,
                                 max_boxes=max_boxes)
    elif source == "grid":
        rest = rmac_grid((width, height), levels=grid_levels)
    else:
        if image is None:
            raise ValueError("source='selective_search' needs the image pixels (image=...)")
        if tuple(np.shape(image)[1::-1]) != (width, height):
            raise ValueError(f"image shape {np.shape(image)} does not match image_size "
                             f"{(width, height)}")
        if check_count("max_boxes", max_boxes, 0) == 0:
            return first
        rest = selective_search(
            image, mode=selective_search_mode, max_boxes=max_boxes + 1,
            max_side=selective_search_max_side,
        )
    rest = rest.select(np.flatnonzero(np.any(rest.xyxy != first.xyxy[0], axis=1)))
    if source == "selective_search":
        rest = rest.select(np.arange(min(len(rest), max_boxes)))
    return _concat(first, rest)


def select_regions_for(
    config: RegionsConfig,
    image_size: tuple[int, int],
    boxes: Boxes | None = None,
    *,
    image: np.ndarray | None = None,
) -> Boxes:
    """:func:`select_regions` with the options of a :class:`~d2r.config.RegionsConfig`."""
    return select_regions(
        image_size,
        boxes,
        source=config.source,
        score_threshold=config.score_threshold,
        max_boxes=config.max_boxes,
        grid_levels=config.grid_levels,
        image=image,
        selective_search_mode=config.selective_search_mode,
        selective_search_max_side=config.selective_search_max_side,
    )
