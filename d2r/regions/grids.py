"""Region grids on activation maps (pure numpy).

* :func:`rmac_regions`: the R-MAC grid of Tolias et al. (ICLR 2016): square regions
  at ``levels`` scales, side ``floor(2 min(W, H) / (l + 1))`` at scale ``l``, sampled
  uniformly with about 40% overlap; the number of regions along the long side
  is chosen from the aspect ratio.  Integer arithmetic as the authors' MATLAB
  ``rmac_regions.m`` (same floors), so the grids are identical.
* :func:`sliding_regions`: the "R-MAC study" variant, regions of a max-pooling layer
  with kernel ``floor(2 min(W, H) / (l + 1))`` and stride ``stride`` x kernel.

Regions are (R, 4) int64 boxes ``x1, y1, x2, y2`` in map cells, end-exclusive,
row-major within a scale (top row first, left to right), scales in increasing ``l``.
"""

from __future__ import annotations

import numpy as np

from d2r.checks import check_positive_int

__all__ = ["rmac_regions", "sliding_regions", "RMAC_LONG_SIDE_STEPS"]

RMAC_LONG_SIDE_STEPS = (2, 3, 4, 5, 6, 7)
"""Candidate numbers of regions along the long side at the first scale (as the reference)."""


def _check_size(height: int, width: int) -> tuple[int, int]:
    h, w = int(height), int(width)
    if h != height or w != width or h < 1 or w < 1:
        raise ValueError(f"map size must be positive integers, got height={height!r}, width={width!r}")
    return h, w


def _extra_regions(height: int, width: int, overlap: float) -> int:
    """How many regions beyond one the long side gets at the first scale (0 for square maps)."""
    if height == width:
        return 0
    short = min(height, width)
    steps = np.asarray(RMAC_LONG_SIDE_STEPS, np.float64)
    spacing = (max(height, width) - short) / (steps - 1)
    achieved = (short**2 - short * spacing) / short**2
    return int(np.argmin(np.abs(achieved - overlap))) + 1


def _starts(length: int, side: int, count: int) -> np.ndarray:
    """``count`` region starts spread uniformly over ``[0, length - side]`` with the reference floors."""
    half = np.floor(side / 2 - 1)
    spacing = 0.0 if count == 1 else (length - side) / (count - 1)
    return (np.floor(half + np.arange(count) * spacing) - half).astype(np.int64)


def _grid(xs: np.ndarray, ys: np.ndarray, side_x: int, side_y: int) -> np.ndarray:
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    x1, y1 = gx.reshape(-1), gy.reshape(-1)
    return np.stack([x1, y1, x1 + side_x, y1 + side_y], axis=1)


def rmac_regions(height: int, width: int, *, levels: int = 3, overlap: float = 0.4,
                 with_levels: bool = False):
    """The R-MAC regions of an H x W activation map (or image, in pixels).

    Args:
        height, width: map size in cells.
        levels: number of scales L.
        overlap: desired overlap of neighbouring regions along the long side.
        with_levels: also return each region's scale ``l`` (R,) int32.

    Returns:
        (R, 4) int64 boxes ``x1, y1, x2, y2`` (end-exclusive).  Scale ``l`` has
        ``l + extra_x`` columns and ``l + extra_y`` rows of square regions, where only
        the long side gets extra regions, chosen from the aspect ratio.
    """
    h, w = _check_size(height, width)
    levels = check_positive_int("levels", levels)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    extra = _extra_regions(h, w, overlap)
    extra_x, extra_y = (extra, 0) if w > h else (0, extra)
    short = min(h, w)
    out, level_of = [], []
    for level in range(1, levels + 1):
        side = int(np.floor(2 * short / (level + 1)))
        if side < 1:
            continue
        xs = _starts(w, side, level + extra_x)
        ys = _starts(h, side, level + extra_y)
        out.append(_grid(xs, ys, side, side))
        level_of.append(np.full(len(out[-1]), level, np.int32))
    boxes = np.concatenate(out).astype(np.int64) if out else np.zeros((0, 4), np.int64)
    if with_levels:
        return boxes, np.concatenate(level_of) if level_of else np.zeros(0, np.int32)
    return boxes


def sliding_regions(height: int, width: int, *, levels: int = 3, stride: float = 0.4) -> np.ndarray:
    """Regions of a max-pooling layer per scale, kernel ``floor(2 min(W, H) / (l + 1))``.

    The stride is ``max(1, floor(stride * kernel))`` cells ("valid" padding: windows
    start at 0, stride, 2 stride, ... while they fit).

    Returns:
        (R, 4) int64 boxes ``x1, y1, x2, y2`` (end-exclusive).
    """
    h, w = _check_size(height, width)
    levels = check_positive_int("levels", levels)
    if not 0.0 < stride <= 1.0:
        raise ValueError(f"stride must be in (0, 1], got {stride!r}")
    short = min(h, w)
    out = []
    for level in range(1, levels + 1):
        kernel = int(np.floor(2 * short / (level + 1)))
        if kernel < 1:
            continue
        step = max(1, int(np.floor(stride * kernel)))
        xs = np.arange(0, w - kernel + 1, step, dtype=np.int64)
        ys = np.arange(0, h - kernel + 1, step, dtype=np.int64)
        out.append(_grid(xs, ys, kernel, kernel))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 4), np.int64)
