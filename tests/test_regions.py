"""Region selection: whole image, detector boxes, R-MAC grid, selective search."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2r.config import RegionsConfig
from d2r.detection.regions import (
    PROPOSAL_LABEL,
    WHOLE_IMAGE_LABEL,
    filter_detections,
    rmac_grid,
    select_regions,
    select_regions_for,
    selective_search,
    whole_image,
)
from d2r.types import Boxes


def _grid(xs, ys, side):
    return [[x, y, x + side, y + side] for y in ys for x in xs]


def test_rmac_grid_square():
    g = rmac_grid((100, 100), levels=3)
    expected = (
        _grid([0], [0], 100)
        + _grid([0, 34], [0, 34], 66)
        + _grid([0, 25, 50], [0, 25, 50], 50)
    )
    np.testing.assert_array_equal(g.xyxy, expected)
    np.testing.assert_array_equal(g.labels, [1] + [2] * 4 + [3] * 9)
    np.testing.assert_array_equal(g.scores, np.ones(14))


def test_rmac_grid_wide_and_tall():
    # 400x300: level-1 overlap 1 - 100/300 is closest to 40% with 2 regions -> one extra along W.
    expected = (
        _grid([0, 100], [0], 300)
        + _grid([0, 100, 200], [0, 100], 200)
        + _grid([0, 83, 166, 250], [0, 75, 150], 150)
    )
    wide = rmac_grid((400, 300), levels=3)
    np.testing.assert_array_equal(wide.xyxy, expected)
    np.testing.assert_array_equal(wide.labels, [1] * 2 + [2] * 6 + [3] * 12)
    tall = rmac_grid((300, 400), levels=3)
    swapped = np.array(expected)[:, [1, 0, 3, 2]]
    order = np.lexsort((swapped[:, 0], swapped[:, 1], tall.labels))  # row-major within a level
    np.testing.assert_array_equal(tall.xyxy, swapped[order])


def test_rmac_grid_very_wide_picks_seven_regions():
    # 1000x200: overlaps 1 - (800 / k) / 200 for k = 1..6; k = 6 (0.33) is closest to 0.4.
    g = rmac_grid((1000, 200), levels=1)
    np.testing.assert_array_equal(g.xyxy[:, 0], [0, 133, 266, 400, 533, 666, 800])
    assert np.all(g.xyxy[:, 1] == 0) and np.all(g.xyxy[:, 3] == 200)


def _reference_rmac(width, height, levels):
    """Loop transcription of the R-MAC region formula, for cross-checking."""
    ovr = 0.4
    w = min(width, height)
    best, extra = None, 0
    for steps in range(2, 8):
        b = (max(width, height) - w) / (steps - 1)
        err = abs((w * w - w * b) / (w * w) - ovr)
        if best is None or err < best:
            best, extra = err, steps - 1
    wd = extra if height < width else 0
    hd = extra if height > width else 0
    out = []
    for level in range(1, levels + 1):
        wl = math.floor(2 * w / (level + 1))
        wl2 = math.floor(wl / 2 - 1)
        bw = 0 if level + wd == 1 else (width - wl) / (level + wd - 1)
        bh = 0 if level + hd == 1 else (height - wl) / (level + hd - 1)
        cen_w = [math.floor(wl2 + i * bw) - wl2 for i in range(level + wd)]
        cen_h = [math.floor(wl2 + i * bh) - wl2 for i in range(level + hd)]
        out += [[x, y, x + wl, y + wl] for y in cen_h for x in cen_w if wl >= 1]
    return np.array(out, np.float32).reshape(-1, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 2000), st.integers(2, 2000), st.integers(1, 3))
def test_rmac_grid_matches_reference_formula(width, height, levels):
    g = rmac_grid((width, height), levels=levels)
    np.testing.assert_array_equal(g.xyxy, _reference_rmac(width, height, levels))
    assert np.all(g.xyxy >= 0)
    assert np.all(g.xyxy[:, 2] <= width) and np.all(g.xyxy[:, 3] <= height)


def test_rmac_grid_rejects_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        rmac_grid((10, 10), levels=0)
    with pytest.raises(ValueError, match="image_size"):
        rmac_grid((0, 10))


def _detections():
    return Boxes(
        xyxy=[[10, 10, 50, 40], [0, 0, 200, 100], [-20, 5, 300, 90], [5, 5, 6, 6], [120, 200, 150, 300]],
        scores=[0.3, 0.9, 0.1, 0.05, 0.7],
        labels=[1, 1, 1, 1, 1],
    )


def test_filter_detections_threshold_order_clip():
    out = filter_detections(_detections(), (200, 100), score_threshold=0.1, max_boxes=10)
    # score 0.05 is below the threshold; the box at y >= 200 is outside the image.
    np.testing.assert_allclose(out.scores, [0.9, 0.3, 0.1])
    np.testing.assert_allclose(out.xyxy, [[0, 0, 200, 100], [10, 10, 50, 40], [0, 5, 200, 90]])
    assert len(filter_detections(_detections(), (200, 100), score_threshold=0.1, max_boxes=1)) == 1
    assert len(filter_detections(Boxes.empty(), (200, 100))) == 0


def test_select_regions_sources():
    size = (200, 100)
    none = select_regions(size, source="none")
    np.testing.assert_array_equal(none.xyxy, [[0, 0, 200, 100]])
    assert none.labels[0] == WHOLE_IMAGE_LABEL and none.scores[0] == 1

    det = select_regions(size, _detections(), source="detector", score_threshold=0.1, max_boxes=10)
    # whole image first; the detection equal to the whole image is not repeated.
    np.testing.assert_allclose(det.xyxy, [[0, 0, 200, 100], [10, 10, 50, 40], [0, 5, 200, 90]])
    np.testing.assert_allclose(det.scores, [1.0, 0.3, 0.1])

    square = select_regions((100, 100), source="grid", grid_levels=3)
    assert len(square) == 14  # whole image + 13 (the level-1 region is the whole image)
    wide = select_regions((400, 300), source="grid", grid_levels=3)
    assert len(wide) == 21 and wide.labels[0] == WHOLE_IMAGE_LABEL


def test_select_regions_for_config():
    cfg = RegionsConfig(source="detector", score_threshold=0.5, max_boxes=5)
    out = select_regions_for(cfg, (200, 400), _detections())
    np.testing.assert_allclose(out.scores, [1.0, 0.9, 0.7])
    np.testing.assert_allclose(out.xyxy[2], [120, 200, 150, 300])


def test_select_regions_errors():
    with pytest.raises(ValueError, match="source"):
        select_regions((10, 10), source="bogus")
    with pytest.raises(ValueError, match="detector"):
        select_regions((10, 10), source="detector")
    with pytest.raises(ValueError, match="image"):
        select_regions((10, 10), source="selective_search")
    with pytest.raises(ValueError, match="match"):
        select_regions((10, 10), source="selective_search", image=np.zeros((5, 10, 3), np.uint8))


def _blocks_image():
    rng = np.random.default_rng(0)
    image = np.full((120, 160, 3), 40, np.uint8) + rng.integers(0, 8, (120, 160, 3), dtype=np.uint8)
    blocks = {(10, 15, 60, 70): (220, 30, 30), (90, 20, 150, 60): (30, 200, 40), (40, 80, 130, 115): (30, 60, 220)}
    for (x1, y1, x2, y2), colour in blocks.items():
        image[y1:y2, x1:x2] = colour
    return image, np.array(list(blocks), np.float32)


def _iou(a, b):
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_selective_search_finds_blocks():
    image, truth = _blocks_image()
    props = selective_search(image, max_boxes=50, min_size=20, scale=100.0)
    assert 0 < len(props) <= 50
    assert np.all(props.labels == PROPOSAL_LABEL)
    assert np.all(np.diff(props.scores) < 0)
    assert np.all(props.xyxy[:, :2] >= 0) and np.all(props.xyxy[:, 2] <= 160) and np.all(props.xyxy[:, 3] <= 120)
    for box in truth:
        assert max(_iou(box, p) for p in props.xyxy) > 0.8
    again = selective_search(image, max_boxes=50, min_size=20, scale=100.0)
    np.testing.assert_array_equal(props.xyxy, again.xyxy)


def test_selective_search_downscales_and_selects():
    image, _ = _blocks_image()
    big = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    props = selective_search(big, max_boxes=20, max_side=160, min_size=20, scale=100.0)
    assert np.all(props.xyxy[:, 2] <= 640) and np.all(props.xyxy[:, 3] <= 480)
    assert props.xyxy[:, 2].max() > 160  # mapped back to the full-size image
    regions = select_regions((640, 480), source="selective_search", image=big, max_boxes=5)
    assert len(regions) == 6 and regions.labels[0] == WHOLE_IMAGE_LABEL
    assert not np.any(np.all(regions.xyxy[1:] == [0, 0, 640, 480], axis=1))


def test_whole_image():
    np.testing.assert_array_equal(whole_image((7, 3)).xyxy, [[0, 0, 7, 3]])
