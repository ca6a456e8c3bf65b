"""Image regions for regional aggregation and regional search.

Every selection starts with the whole image; the other regions come from one
``source`` (:class:`d2r.config.RegionsConfig`):

* ``"none"``: the whole image only.
* ``"detector"``: landmark detector boxes with score ``>= score_threshold``
  (the reference's test; 0.1 is the paper's indexing threshold), best first,
  at most ``max_boxes``, clipped to the image.
* ``"grid"``: the R-MAC grid of Tolias et al. (:func:`rmac_grid`).
* ``"selective_search"``: hierarchical grouping of a Felzenszwalb
  over-segmentation (:func:`selective_search`).

Labels say where a region came from: :data:`WHOLE_IMAGE_LABEL` (0) for the
whole image, the detector's class for detector boxes (1 = landmark), the
pyramid level ``1..L`` for grid regions and :data:`PROPOSAL_LABEL` for
selective-search proposals.  The whole image and grid regions score 1; proposals
score ``1 - rank / N``.  Pure numpy / scipy / scikit-image: no TensorFlow.
"""

from __future__ import annotations

import heapq
import logging
from typing import Optional

import numpy as np

from d2r.config import RegionsConfig
from d2r.global_.regions import rmac_regions
from d2r.types import Boxes

__all__ = [
    "WHOLE_IMAGE_LABEL",
    "PROPOSAL_LABEL",
    "SOURCES",
    "whole_image",
    "rmac_grid",
    "filter_detections",
    "selective_search",
    "select_regions",
    "select_regions_for",
]

logger = logging.getLogger(__name__)

_DEFAULTS = RegionsConfig()

WHOLE_IMAGE_LABEL = 0
"""Label of the whole-image region."""
PROPOSAL_LABEL = 1
"""Label of selective-search proposals."""
SOURCES = ("none", "detector", "grid", "selective_search")


def _check_size(image_size) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in image_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from exc
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size!r}")
    return width, height


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
    only, for about 40% overlap; :func:`d2r.global_.regions.rmac_regions`), starts at ``floor(i * (L - side) / (n - 1))``
    along an axis of length ``L`` with ``n`` regions — the integer grid of the
    authors' MATLAB code and of cnnimageretrieval-pytorch, in pixels.  Boxes
    are row-major (top to bottom, then left to right) within a level; labels
    are the level, scores 1.  Regions narrower than one pixel are left out.

    Args:
        image_size: (width, height) in pixels.
        levels: number of levels L >= 1 (the paper uses 3).
    """
    width, height = _check_size(image_size)
    levels = _check_count("levels", levels, 1)
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
    max_boxes = _check_count("max_boxes", max_boxes, 0)
    if not isinstance(boxes, Boxes):
        raise TypeError(f"boxes must be d2r.types.Boxes, got {type(boxes).__name__}")
    xyxy = np.clip(boxes.xyxy, 0, np.array([width, height, width, height], np.float32))
    area_ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if np.any(~area_ok):
        logger.debug("dropping %d boxes outside the %dx%d image", int(np.sum(~area_ok)), width, height)
    keep = np.flatnonzero(area_ok & (boxes.scores >= score_threshold))
    keep = keep[np.argsort(-boxes.scores[keep], kind="stable")][:max_boxes]
    return Boxes(xyxy[keep], boxes.scores[keep], boxes.labels[keep])


# --- selective search -------------------------------------------------------------

_COLOUR_BINS = 25
_ORIENTATION_BINS = 8
_MAGNITUDE_BINS = 10


def _region_histograms(labels: np.ndarray, values: np.ndarray, bins: int, count: int) -> np.ndarray:
    """Per-region L1-normalized histograms of integer bin indices ``values`` (H, W, C)."""
    channels = values.shape[2]
    flat = (labels[..., None] * (channels * bins) + np.arange(channels) * bins + values).ravel()
    hist = np.bincount(flat, minlength=count * channels * bins).reshape(count, channels * bins)
    hist = hist.astype(np.float64)
    return hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)


def _texture_bins(gray: np.ndarray) -> np.ndarray:
    """(H, W, 1) joint bin of gradient orientation (8) and magnitude (10)."""
    from scipy import ndimage

    gx = ndimage.sobel(gray, axis=1)
    gy = ndimage.sobel(gray, axis=0)
    angle = np.mod(np.arctan2(gy, gx), 2 * np.pi)
    orientation = np.minimum((angle / (2 * np.pi) * _ORIENTATION_BINS).astype(np.int64), _ORIENTATION_BINS - 1)
    magnitude = np.hypot(gx, gy)
    scale = max(float(magnitude.max()), 1e-12)
    level = np.minimum((magnitude / scale * _MAGNITUDE_BINS).astype(np.int64), _MAGNITUDE_BINS - 1)
    return (orientation * _MAGNITUDE_BINS + level)[..., None]


def _initial_regions(image: np.ndarray, *, scale: float, sigma: float, min_size: int):
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size).astype(np.int64)
    count = int(labels.max()) + 1
    height, width = labels.shape
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count).astype(np.float64)
    x1 = np.full(count, width, np.int64)
    y1 = np.full(count, height, np.int64)
    x2 = np.zeros(count, np.int64)
    y2 = np.zeros(count, np.int64)
    np.minimum.at(x1, flat, cols.ravel())
    np.minimum.at(y1, flat, rows.ravel())
    np.maximum.at(x2, flat, cols.ravel() + 1)
    np.maximum.at(y2, flat, rows.ravel() + 1)
    colour = np.minimum(image.astype(np.int64) * _COLOUR_BINS // 256, _COLOUR_BINS - 1)
    colour_hist = _region_histograms(labels, colour, _COLOUR_BINS, count)
    gray = image.astype(np.float64).mean(axis=2)
    texture_hist = _region_histograms(
        labels, _texture_bins(gray), _ORIENTATION_BINS * _MAGNITUDE_BINS, count
    )
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], axis=1),
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], axis=1),
    ])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float64)
    return boxes, sizes, colour_hist, texture_hist, pairs


def _hierarchical_grouping(boxes, sizes, colour, texture, pairs, image_area: float) -> np.ndarray:
    """Greedy merging of the most similar neighbours (Uijlings et al., IJCV 2013).

    Similarity = colour + texture histogram intersection + size + fill.  Returns
    (R, 4) boxes of all regions, initial ones first then merges in order.
    """
    boxes = [b for b in boxes]
    sizes = list(sizes)
    colour = [c for c in colour]
    texture = [t for t in texture]
    neighbours: list[set[int]] = [set() for _ in sizes]
    for a, b in pairs:
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))
    alive = [True] * len(sizes)

    def similarity(a: int, b: int) -> float:
        union = np.concatenate([np.minimum(boxes[a][:2], boxes[b][:2]), np.maximum(boxes[a][2:], boxes[b][2:])])
        bbox_area = (union[2] - union[0]) * (union[3] - union[1])
        return float(
            np.minimum(colour[a], colour[b]).sum()
            + np.minimum(texture[a], texture[b]).sum()
            + 1.0 - (sizes[a] + sizes[b]) / image_area
            + 1.0 - (bbox_area - sizes[a] - sizes[b]) / image_area
        )

    heap = [(-similarity(int(a), int(b)), int(a), int(b)) for a, b in pairs]
    heapq.heapify(heap)
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        new = len(sizes)
        total = sizes[a] + sizes[b]
        boxes.append(np.concatenate([np.minimum(boxes[a][:2], boxes[b][:2]), np.maximum(boxes[a][2:], boxes[b][2:])]))
        colour.append((colour[a] * sizes[a] + colour[b] * sizes[b]) / total)
        texture.append((texture[a] * sizes[a] + texture[b] * sizes[b]) / total)
        sizes.append(total)
        alive[a] = alive[b] = False
        alive.append(True)
        merged = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(merged)
        for n in merged:
            neighbours[n].discard(a)
            neighbours[n].discard(b)
            neighbours[n].add(new)
            heapq.heappush(heap, (-similarity(new, n), new, n))
    return np.array(boxes, np.float64).reshape(-1, 4)


def selective_search(
    image: np.ndarray,
    *,
    max_boxes: int = _DEFAULTS.max_boxes,
    scale: float = 200.0,
    sigma: float = 0.8,
    min_size: int = 50,
    max_side: int = 256,
    seed: int = 0,
) -> Boxes:
    """Selective-search proposals (one strategy of Uijlings et al., IJCV 2013).

    A Felzenszwalb graph segmentation (scikit-image) of the image downscaled to
    ``max_side`` is merged greedily by colour, texture, size and fill
    similarity; every region of the hierarchy is a proposal.  Proposals are
    ranked as in the paper — hierarchy position (1 = last merge) times a
    uniform random number (``seed`` makes it deterministic) — deduplicated
    and cut to ``max_boxes``.  Boxes are in ``image`` pixels.

    Args:
        image: (H, W, 3) uint8 RGB.
        max_boxes: number of proposals returned (at most).
        scale, sigma, min_size: Felzenszwalb parameters (on the downscaled image).
        max_side: longer side of the image the segmentation runs on.
    """
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    max_boxes = _check_count("max_boxes", max_boxes, 0)
    max_side = _check_count("max_side", max_side, 8)
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    small = image
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    boxes, sizes, colour, texture, pairs = _initial_regions(small, scale=scale, sigma=sigma, min_size=min_size)
    hierarchy = _hierarchical_grouping(
        boxes, sizes, colour, texture, pairs, float(small.shape[0] * small.shape[1])
    )
    position = np.arange(len(hierarchy), 0, -1, dtype=np.float64)  # last merge = 1
    rank = position * np.random.default_rng(seed).random(len(hierarchy))
    order = np.argsort(rank, kind="stable")
    scale_xy = np.array([width / small.shape[1], height / small.shape[0]] * 2)
    ranked = np.clip(hierarchy[order] * scale_xy, 0, [width, height, width, height])
    _, first = np.unique(ranked, axis=0, return_index=True)
    ranked = ranked[np.sort(first)][:max_boxes].astype(np.float32)
    count = len(ranked)
    scores = (1.0 - np.arange(count) / max(count, 1)).astype(np.float32)
    return Boxes(ranked, scores, np.full(count, PROPOSAL_LABEL, np.int32))


# --- selection ---------------------------------------------------------------------


def _concat(first: Boxes, rest: Boxes) -> Boxes:
    return Boxes(
        np.concatenate([first.xyxy, rest.xyxy]),
        np.concatenate([first.scores, rest.scores]),
        np.concatenate([first.labels, rest.labels]),
    )


def select_regions(
    image_size: tuple[int, int],
    boxes: Optional[Boxes] = None,
    *,
    source: str = _DEFAULTS.source,
    score_threshold: float = _DEFAULTS.score_threshold,
    max_boxes: int = _DEFAULTS.max_boxes,
    grid_levels: int = _DEFAULTS.grid_levels,
    image: Optional[np.ndarray] = None,
) -> Boxes:
    """Regions of an ``image_size`` (width, height) image: the whole image first, then ``source``'s.

    Args:
        boxes: detector output in pixels; required for ``source="detector"``.
        source: ``none``, ``detector``, ``grid`` or ``selective_search``.
        score_threshold: detector boxes kept with score ``>=`` this.
        max_boxes: at most this many regions besides the whole image
            (detector and selective-search sources).
        grid_levels: R-MAC levels for ``source="grid"``.
        image: (H, W, 3) uint8, required for ``source="selective_search"``.

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
        rest = filter_detections(boxes, (width, height), score_threshold=score_threshold, max_boxes=max_boxes)
    elif source == "grid":
        rest = rmac_grid((width, height), levels=grid_levels)
    else:
        if image is None:
            raise ValueError("source='selective_search' needs the image pixels (image=...)")
        if tuple(np.shape(image)[1::-1]) != (width, height):
            raise ValueError(f"image shape {np.shape(image)} does not match image_size {(width, height)}")
        rest = selective_search(image, max_boxes=max_boxes + 1)
    rest = rest.select(np.flatnonzero(np.any(rest.xyxy != first.xyxy[0], axis=1)))
    if source == "selective_search":
        rest = rest.select(np.arange(min(len(rest), max_boxes)))
    return _concat(first, rest)


def select_regions_for(
    config: RegionsConfig,
    image_size: tuple[int, int],
    boxes: Optional[Boxes] = None,
    *,
    image: Optional[np.ndarray] = None,
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
    )
