"""Selective search (Uijlings et al., IJCV 2013): object proposals from grouped segments.

:func:`selective_search` over-segments an (H, W, 3) uint8 RGB image (Felzenszwalb,
scikit-image), merges the segments greedily by similarity (colour and texture histograms,
size, fill) and ranks every region of the resulting hierarchies; one strategy (``"single"``)
or the paper's diversified ``"fast"`` / ``"quality"`` sets (:data:`SELECTIVE_SEARCH_MODES`,
over :data:`COLOUR_SPACES` and :data:`SIMILARITIES`).  Proposals are
:class:`~d2r.types.Boxes` in image pixels, best first, labelled :data:`PROPOSAL_LABEL`,
scored ``1 - rank / N``.  Pure numpy / scipy / scikit-image (OpenCV for colour conversions
and resizing); :mod:`d2r.regions.selection` adds the whole image and dispatches on the
regions source.
"""

from __future__ import annotations

import heapq

import numpy as np

from d2r.config import RegionsConfig
from d2r.regions.checks import check_count
from d2r.types import Boxes

__all__ = [
    "COLOUR_SPACES",
    "PROPOSAL_LABEL",
    "SELECTIVE_SEARCH_MODES",
    "SIMILARITIES",
    "selective_search",
]

_DEFAULTS = RegionsConfig()

PROPOSAL_LABEL = 1
"""Label of selective-search proposals."""
SELECTIVE_SEARCH_MODES = ("single", "fast", "quality")
"""Selective-search modes (:func:`selective_search`)."""
COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi", "h", "i")
"""Colour spaces of the diversified strategies: RGB, HSV, CIE Lab, normalized
rg + intensity, hue only, intensity only (Uijlings et al., IJCV 2013, Table 1)."""
SIMILARITIES = {
    "ctsf": (True, True, True, True),
    "tsf": (False, True, True, True),
    "f": (False, False, False, True),
    "s": (False, False, True, False),
}
"""Similarity combinations: which of (colour, texture, size, fill) are summed."""

_MODE_STRATEGIES = {
    # (colour spaces, Felzenszwalb k values, similarities); min_size = k as in the
    # authors' code.  "single" is the legacy strategy of _single_strategy below.
    "fast": (("hsv", "lab"), (50.0, 100.0), ("ctsf", "tsf")),
    "quality": (("hsv", "lab", "rgi", "h", "i"), (50.0, 100.0, 150.0, 300.0),
                ("ctsf", "tsf", "f", "s")),
}
_SINGLE_SCALE = 200.0
_SINGLE_MIN_SIZE = 50

_COLOUR_BINS = 25
_ORIENTATION_BINS = 8
_MAGNITUDE_BINS = 10
_TEXTURE_BINS = 10
_TEXTURE_SIGMA = 1.0


def _region_histograms(labels: np.ndarray, values: np.ndarray, bins: int, count: int) -> np.ndarray:
    """Per-region L1-normalized histograms of integer bin indices ``values`` (H, W, C)."""
    channels = values.shape[2]
    flat = (labels[..., None] * (channels * bins) + np.arange(channels) * bins + values).ravel()
    hist = np.bincount(flat, minlength=count * channels * bins).reshape(count, channels * bins)
    hist = hist.astype(np.float64)
    return hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)


def _legacy_texture_bins(gray: np.ndarray) -> np.ndarray:
    """(H, W, 1) joint bin of gradient orientation (8) and magnitude (10): the ``single``
    mode's texture."""
    from scipy import ndimage

    gx = ndimage.sobel(gray, axis=1)
    gy = ndimage.sobel(gray, axis=0)
    angle = np.mod(np.arctan2(gy, gx), 2 * np.pi)
    orientation = np.minimum((angle / (2 * np.pi) * _ORIENTATION_BINS).astype(np.int64),
                             _ORIENTATION_BINS - 1)
    magnitude = np.hypot(gx, gy)
    scale = max(float(magnitude.max()), 1e-12)
    level = np.minimum((magnitude / scale * _MAGNITUDE_BINS).astype(np.int64), _MAGNITUDE_BINS - 1)
    return (orientation * _MAGNITUDE_BINS + level)[..., None]


def _texture_bins(colour: np.ndarray) -> np.ndarray:
    """(H, W, 8 C) bins of the paper's SIFT-like texture of an (H, W, C) image.

    Gaussian derivatives (sigma 1) of every channel in 8 orientations (every
    45 degrees, the positive part of the directional derivative), each map
    scaled by its maximum over the image and cut into 10 bins; histogrammed per region this
    is the paper's 8 x 10 x C texture histogram.
    """
    from scipy import ndimage

    values = colour.astype(np.float32)
    sigma = (_TEXTURE_SIGMA, _TEXTURE_SIGMA, 0)
    gx = ndimage.gaussian_filter(values, sigma, order=(0, 1, 0))
    gy = ndimage.gaussian_filter(values, sigma, order=(1, 0, 0))
    angles = np.arange(_ORIENTATION_BINS) * (2 * np.pi / _ORIENTATION_BINS)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    # Derivative along each of the 8 directions, positive part (the opposite
    # direction holds the negative part): (H, W, C, 8) -> (H, W, 8 C).
    response = gx[..., None] * cos
    response += gy[..., None] * sin
    response = np.maximum(response, 0, out=response).reshape(*colour.shape[:2], -1)
    peak = np.maximum(response.max(axis=(0, 1)), 1e-12)
    return np.minimum((response / peak * _TEXTURE_BINS).astype(np.int64), _TEXTURE_BINS - 1)


def _colour_space(image: np.ndarray, space: str) -> np.ndarray:
    """(H, W, C) uint8 of an RGB uint8 image in ``space`` (every channel 0..255)."""
    import cv2

    if space == "rgb":
        return image
    if space in ("hsv", "h"):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)  # hue 0..255
        return hsv if space == "hsv" else hsv[..., :1]
    if space == "lab":
        return cv2.cvtColor(image, cv2.COLOR_RGB2Lab)
    if space == "i":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    # rgi: chromaticity r = R / (R + G + B), g = G / (R + G + B) and intensity (R + G + B) / 3.
    rgb = image.astype(np.float64)
    total = rgb.sum(axis=2, keepdims=True)
    chroma = np.where(total > 0, rgb[..., :2] / np.maximum(total, 1.0), 1.0 / 3.0)
    out = np.concatenate([chroma * 255.0, total / 3.0], axis=2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _segment(image: np.ndarray, *, scale: float, sigma: float, min_size: int):
    """Felzenszwalb over-segmentation: labels, boxes, sizes and neighbour pairs of its regions."""
    from skimage.segmentation import felzenszwalb

    labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
    labels = labels.astype(np.int64)
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
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], axis=1),
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], axis=1),
    ])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    codes = np.unique(pairs.min(axis=1) * count + pairs.max(axis=1))  # (a, b), a < b, sorted
    pairs = np.stack([codes // count, codes % count], axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float64)
    return labels, count, boxes, sizes, pairs


def _colour_histograms(labels: np.ndarray, colour: np.ndarray, count: int) -> np.ndarray:
    """(count, 25 C) colour histograms (25 bins per channel) of an (H, W, C) uint8 image."""
    bins = np.minimum(colour.astype(np.int64) * _COLOUR_BINS // 256, _COLOUR_BINS - 1)
    return _region_histograms(labels, bins, _COLOUR_BINS, count)


def _hierarchical_grouping(
    boxes: np.ndarray,
    sizes: np.ndarray,
    features: list[np.ndarray],
    pairs: np.ndarray,
    image_area: float,
    *,
    use_size: bool = True,
    use_fill: bool = True,
) -> np.ndarray:
    """Greedy merging of the most similar neighbours (Uijlings et al., IJCV 2013).

    Similarity of regions a, b = the sum over ``features`` (each (N, D)
    L1-normalized histograms; colour and / or texture) of the histogram
    intersections, plus size ``1 - (|a| + |b|) / |image|`` and fill
    ``1 - (|box(a u b)| - |a| - |b|) / |image|`` when selected.  Merged regions
    get the size-weighted mean histograms.  Similarities of a new region with
    all its neighbours are computed in one vectorized step; ties go to the
    smaller (a, b).  Returns (R, 4) boxes of all regions, the initial ones
    first, then the merges in order.
    """
    count = len(sizes)
    capacity = max(2 * count - 1, 1)
    box = np.zeros((capacity, 4), np.float64)
    box[:count] = boxes
    size = np.zeros(capacity, np.float64)
    size[:count] = sizes
    hists = []
    for f in features:
        h = np.zeros((capacity, f.shape[1]), np.float64)
        h[:count] = f
        hists.append(h)

    def similarity(a, b) -> np.ndarray:
        # Same evaluation order for every pair, so equal inputs give equal floats.
        sim = np.zeros(np.broadcast_shapes(np.shape(a), np.shape(b)), np.float64)
        for h in hists:
            sim = sim + np.minimum(h[a], h[b]).sum(axis=-1)
        total = size[a] + size[b]
        if use_size:
            sim = sim + 1.0 - total / image_area
        if use_fill:
            lo = np.minimum(box[a, :2], box[b, :2])
            hi = np.maximum(box[a, 2:], box[b, 2:])
            area = (hi[..., 0] - lo[..., 0]) * (hi[..., 1] - lo[..., 1])
            sim = sim + 1.0 - (area - size[a] - size[b]) / image_area
        return sim

    neighbours: list[set[int]] = [set() for _ in range(count)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    alive = np.zeros(capacity, bool)
    alive[:count] = True
    first, second = pairs[:, 0], pairs[:, 1]
    heap = list(zip((-similarity(first, second)).tolist(), first.tolist(), second.tolist()))
    heapq.heapify(heap)
    new = count
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        total = size[a] + size[b]
        box[new, :2] = np.minimum(box[a, :2], box[b, :2])
        box[new, 2:] = np.maximum(box[a, 2:], box[b, 2:])
        for h in hists:
            h[new] = (h[a] * size[a] + h[b] * size[b]) / total
        size[new] = total
        alive[a] = alive[b] = False
        alive[new] = True
        merged = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(merged)
        if merged:
            others = np.fromiter(merged, np.int64, len(merged))
            for n, value in zip(others.tolist(), (-similarity(new, others)).tolist()):
                adjacent = neighbours[n]
                adjacent.discard(a)
                adjacent.discard(b)
                adjacent.add(new)
                heapq.heappush(heap, (value, new, n))
        new += 1
    return box[:new]


def _single_strategy(small: np.ndarray, *, scale: float, sigma: float,
                     min_size: int) -> list[np.ndarray]:
    """The ``single`` mode: RGB segmentation, RGB colour + grey gradient texture + size + fill."""
    labels, count, boxes, sizes, pairs = _segment(small, scale=scale, sigma=sigma,
                                                  min_size=min_size)
    colour = _colour_histograms(labels, small, count)
    texture = _region_histograms(
        labels, _legacy_texture_bins(small.astype(np.float64).mean(axis=2)),
        _ORIENTATION_BINS * _MAGNITUDE_BINS, count,
    )
    area = float(small.shape[0] * small.shape[1])
    return [_hierarchical_grouping(boxes, sizes, [colour, texture], pairs, area)]


def _diversified_strategies(
    small: np.ndarray,
    *,
    colour_spaces: tuple[str, ...],
    scales: tuple[float, ...],
    similarities: tuple[str, ...],
    sigma: float,
    min_size: int | None,
) -> list[np.ndarray]:
    """Hierarchies of every (colour space, k, similarity) strategy, in that loop order."""
    area = float(small.shape[0] * small.shape[1])
    out = []
    for space in colour_spaces:
        colour_image = _colour_space(small, space)
        texture_bins = _texture_bins(colour_image)
        for k in scales:
            labels, count, boxes, sizes, pairs = _segment(
                colour_image, scale=k, sigma=sigma,
                min_size=int(k) if min_size is None else min_size,
            )
            colour = _colour_histograms(labels, colour_image, count)
            texture = _region_histograms(labels, texture_bins, _TEXTURE_BINS, count)
            for name in similarities:
                use_colour, use_texture, use_size, use_fill = SIMILARITIES[name]
                features = [colour] * use_colour + [texture] * use_texture
                out.append(_hierarchical_grouping(
                    boxes, sizes, features, pairs, area, use_size=use_size, use_fill=use_fill
                ))
    return out


def _names(kind: str, values, allowed) -> tuple:
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise ValueError(
            f"{kind} must be a non-empty selection of {tuple(allowed)}, got {values!r}")
    return values


def selective_search(
    image: np.ndarray,
    *,
    mode: str = _DEFAULTS.selective_search_mode,
    max_boxes: int = _DEFAULTS.max_boxes,
    max_side: int = _DEFAULTS.selective_search_max_side,
    seed: int = 0,
    scale=None,
    sigma: float = 0.8,
    min_size: int | None = None,
    colour_spaces=None,
    similarities=None,
) -> Boxes:
    """Selective-search proposals (Uijlings et al., IJCV 2013), best first.

    The image, downscaled to ``max_side``, is over-segmented (Felzenszwalb,
    scikit-image) and the segments are merged greedily by similarity; every
    region of the hierarchy is a proposal.  Each *strategy* (colour space,
    Felzenszwalb k, similarity combination) gives one hierarchy:

    * ``"single"``: one strategy — RGB, k = 200 (``min_size`` 50), colour +
      grey-gradient texture + size + fill;
    * ``"fast"``: the paper's Selective Search Fast — HSV and Lab x k = 50,
      100 x (colour + texture + size + fill, texture + size + fill): 8 strategies;
    * ``"quality"``: Selective Search Quality — HSV, Lab, rgI, H, I x k = 50,
      100, 150, 300 x (those two, fill only, size only): 80 strategies.

    In ``fast`` / ``quality`` the segmentation and the histograms (25 colour
    bins per channel; Gaussian-derivative texture, 8 orientations x 10 bins per
    channel) are computed in the strategy's colour space, with ``min_size = k``
    as in the authors' code.  Ranking as in the paper: region ``i`` of a
    hierarchy (``i = 1`` the last merge, the top) gets ``i`` times a uniform
    random number (one generator seeded with ``seed`` for all strategies, so
    the output is deterministic); the regions of all strategies are ordered
    by that value, identical boxes keep their best-ranked copy, and the first
    ``max_boxes`` are returned with scores ``1 - rank / N``.  Boxes are in
    ``image`` pixels.

    Args:
        image: (H, W, 3) uint8 RGB.
        mode: ``"single"``, ``"fast"`` or ``"quality"``.
        max_boxes: number of proposals returned (at most), >= 1.
        max_side: longer side of the image the segmentation runs on.
        seed: seed of the ranking's random numbers.
        scale: Felzenszwalb k, one value or several (default: the mode's).
        sigma: Felzenszwalb smoothing.
        min_size: Felzenszwalb minimum segment size (default: 50 for
            ``single``, k otherwise).
        colour_spaces, similarities: override the mode's (``fast`` /
            ``quality`` only; names in :data:`COLOUR_SPACES` and
            :data:`SIMILARITIES`).
    """
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} "
                         f"dtype {image.dtype}")
    if mode not in SELECTIVE_SEARCH_MODES:
        raise ValueError(f"mode must be one of {SELECTIVE_SEARCH_MODES}, got {mode!r}")
    max_boxes = check_count("max_boxes", max_boxes, 1)
    max_side = check_count("max_side", max_side, 8)
    if min_size is not None:
        min_size = check_count("min_size", min_size, 1)
    if scale is None:
        scales = (_SINGLE_SCALE,) if mode == "single" else _MODE_STRATEGIES[mode][1]
    else:
        scales = tuple(np.atleast_1d(np.asarray(scale, np.float64)).tolist())
        if not scales or any(not (s > 0) for s in scales):
            raise ValueError(f"scale must be positive Felzenszwalb k value(s), got {scale!r}")
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    small = image
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if mode == "single":
        if colour_spaces is not None or similarities is not None:
            raise ValueError("mode='single' is one fixed strategy; colour_spaces / similarities "
                             "need 'fast' or 'quality'")
        if len(scales) != 1:
            raise ValueError(f"mode='single' takes one scale, got {scale!r}")
        hierarchies = _single_strategy(
            small, scale=scales[0], sigma=sigma,
            min_size=_SINGLE_MIN_SIZE if min_size is None else min_size,
        )
    else:
        default_spaces, _, default_sims = _MODE_STRATEGIES[mode]
        hierarchies = _diversified_strategies(
            small,
            colour_spaces=_names("colour_spaces",
                                 default_spaces if colour_spaces is None else colour_spaces,
                                 COLOUR_SPACES),
            scales=scales,
            similarities=_names("similarities",
                                default_sims if similarities is None else similarities,
                                tuple(SIMILARITIES)),
            sigma=sigma,
            min_size=min_size,
        )
    rng = np.random.default_rng(seed)
    # Position in each hierarchy: the last merge (the top) is 1.
    rank = np.concatenate([np.arange(len(h), 0, -1, dtype=np.float64) * rng.random(len(h))
                           for h in hierarchies])
    order = np.argsort(rank, kind="stable")
    scale_xy = np.array([width / small.shape[1], height / small.shape[0]] * 2)
    ranked = np.clip(np.concatenate(hierarchies)[order] * scale_xy, 0,
                     [width, height, width, height])
    _, first = np.unique(ranked, axis=0, return_index=True)
    ranked = ranked[np.sort(first)][:max_boxes].astype(np.float32)
    count = len(ranked)
    scores = (1.0 - np.arange(count) / max(count, 1)).astype(np.float32)
    return Boxes(ranked, scores, np.full(count, PROPOSAL_LABEL, np.int32))
