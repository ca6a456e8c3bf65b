"""Region selection: whole image, detector boxes, R-MAC grid, selective search."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2r.config import ConfigError, RegionsConfig, from_dict
from d2r.regions import selection as selection_module
from d2r.regions import selective_search as search_module
from d2r.regions.selection import (
    WHOLE_IMAGE_LABEL,
    filter_detections,
    rmac_grid,
    select_regions,
    select_regions_for,
    whole_image,
)
from d2r.regions.selective_search import (
    PROPOSAL_LABEL,
    SELECTIVE_SEARCH_MODES,
    SIMILARITIES,
    selective_search,
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
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def test_selective_search_finds_blocks():
    image, truth = _blocks_image()
    props = selective_search(image, mode="single", max_boxes=50, min_size=20, scale=100.0)
    assert 0 < len(props) <= 50
    assert np.all(props.labels == PROPOSAL_LABEL)
    assert np.all(np.diff(props.scores) < 0)
    assert np.all(props.xyxy[:, :2] >= 0) and np.all(props.xyxy[:, 2] <= 160) and np.all(props.xyxy[:, 3] <= 120)
    for box in truth:
        assert max(_iou(box, p) for p in props.xyxy) > 0.8
    again = selective_search(image, mode="single", max_boxes=50, min_size=20, scale=100.0)
    np.testing.assert_array_equal(props.xyxy, again.xyxy)


def test_selective_search_downscales_and_selects():
    image, _ = _blocks_image()
    big = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    props = selective_search(big, mode="single", max_boxes=20, max_side=160, min_size=20, scale=100.0)
    assert np.all(props.xyxy[:, 2] <= 640) and np.all(props.xyxy[:, 3] <= 480)
    assert props.xyxy[:, 2].max() > 160  # mapped back to the full-size image
    regions = select_regions((640, 480), source="selective_search", image=big, max_boxes=5)
    assert len(regions) == 6 and regions.labels[0] == WHOLE_IMAGE_LABEL
    assert not np.any(np.all(regions.xyxy[1:] == [0, 0, 640, 480], axis=1))


def test_whole_image():
    np.testing.assert_array_equal(whole_image((7, 3)).xyxy, [[0, 0, 7, 3]])


# --- diversified selective search ------------------------------------------------


def _textured_image(seed=0, shape=(96, 128)):
    """Blocky random colours with noise: a few hundred Felzenszwalb segments."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (-(-shape[0] // 8), -(-shape[1] // 8), 3))
    blocks = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[: shape[0], : shape[1]]
    image = blocks + rng.integers(-12, 13, (*shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _reference_grouping(boxes, sizes, features, pairs, image_area, use_size=True, use_fill=True):
    """The per-pair loop implementation of the hierarchical grouping (before vectorization)."""
    import heapq

    boxes = [np.asarray(b, np.float64) for b in boxes]
    sizes = [float(v) for v in sizes]
    hists = [[row for row in f] for f in features]
    neighbours = [set() for _ in sizes]
    for a, b in pairs:
        neighbours[a].add(int(b))
        neighbours[b].add(int(a))
    alive = [True] * len(sizes)

    def similarity(a, b):
        sim = 0.0
        for h in hists:
            sim = sim + np.minimum(h[a], h[b]).sum()
        if use_size:
            sim = sim + 1.0 - (sizes[a] + sizes[b]) / image_area
        if use_fill:
            lo = np.minimum(boxes[a][:2], boxes[b][:2])
            hi = np.maximum(boxes[a][2:], boxes[b][2:])
            sim = sim + 1.0 - ((hi[0] - lo[0]) * (hi[1] - lo[1]) - sizes[a] - sizes[b]) / image_area
        return float(sim)

    heap = [(-similarity(int(a), int(b)), int(a), int(b)) for a, b in pairs]
    heapq.heapify(heap)
    while heap:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        new, total = len(sizes), sizes[a] + sizes[b]
        boxes.append(np.concatenate([np.minimum(boxes[a][:2], boxes[b][:2]), np.maximum(boxes[a][2:], boxes[b][2:])]))
        for h in hists:
            h.append((h[a] * sizes[a] + h[b] * sizes[b]) / total)
        sizes.append(total)
        alive[a] = alive[b] = False
        alive.append(True)
        merged = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(merged)
        for n in merged:
            neighbours[n] -= {a, b}
            neighbours[n].add(new)
            heapq.heappush(heap, (-similarity(new, n), new, n))
    return np.array(boxes).reshape(-1, 4)


@pytest.mark.parametrize("similarity", sorted(SIMILARITIES))
@pytest.mark.parametrize("space", ["rgb", "hsv", "i"])
def test_vectorized_grouping_matches_per_pair_loop(similarity, space):
    colour_image = search_module._colour_space(_textured_image(), space)
    labels, count, boxes, sizes, pairs = search_module._segment(colour_image, scale=50, sigma=0.8, min_size=20)
    assert count > 50
    colour = search_module._colour_histograms(labels, colour_image, count)
    texture = search_module._region_histograms(
        labels, search_module._texture_bins(colour_image), search_module._TEXTURE_BINS, count
    )
    use_colour, use_texture, use_size, use_fill = SIMILARITIES[similarity]
    features = [colour] * use_colour + [texture] * use_texture
    area = float(labels.size)
    fast = search_module._hierarchical_grouping(
        boxes, sizes, features, pairs, area, use_size=use_size, use_fill=use_fill
    )
    slow = _reference_grouping(boxes, sizes, features, pairs, area, use_size=use_size, use_fill=use_fill)
    assert len(fast) == 2 * count - 1  # one connected image: everything merges into the whole image
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast[-1], [0, 0, labels.shape[1], labels.shape[0]])


def test_histograms_are_per_channel_and_normalized():
    image = _textured_image()
    for space, channels in [("rgb", 3), ("hsv", 3), ("lab", 3), ("rgi", 3), ("h", 1), ("i", 1)]:
        colour_image = search_module._colour_space(image, space)
        assert colour_image.shape == (*image.shape[:2], channels) and colour_image.dtype == np.uint8
        labels, count, *_ = search_module._segment(colour_image, scale=100, sigma=0.8, min_size=100)
        colour = search_module._colour_histograms(labels, colour_image, count)
        texture = search_module._region_histograms(
            labels, search_module._texture_bins(colour_image), search_module._TEXTURE_BINS, count
        )
        assert colour.shape == (count, 25 * channels) and texture.shape == (count, 8 * 10 * channels)
        np.testing.assert_allclose(colour.sum(axis=1), 1.0)
        np.testing.assert_allclose(texture.sum(axis=1), 1.0)


@pytest.mark.parametrize("mode", SELECTIVE_SEARCH_MODES)
def test_every_mode_finds_the_exact_rectangles(mode):
    image, truth = _blocks_image()
    props = selective_search(image, mode=mode, max_boxes=40)
    assert 0 < len(props) <= 40
    for box in truth:
        assert np.any(np.all(props.xyxy == box, axis=1)), (mode, box)


def test_modes_run_the_papers_strategies(monkeypatch):
    calls = {"spaces": [], "segments": [], "groupings": []}
    real_space, real_segment, real_grouping = (
        search_module._colour_space, search_module._segment, search_module._hierarchical_grouping
    )

    def colour_space(image, space):
        calls["spaces"].append(space)
        return real_space(image, space)

    def segment(image, *, scale, sigma, min_size):
        calls["segments"].append((calls["spaces"][-1] if calls["spaces"] else "rgb", scale, min_size))
        return real_segment(image, scale=scale, sigma=sigma, min_size=min_size)

    def grouping(boxes, sizes, features, pairs, area, *, use_size=True, use_fill=True):
        calls["groupings"].append((calls["segments"][-1], len(features), use_size, use_fill))
        return real_grouping(boxes, sizes, features, pairs, area, use_size=use_size, use_fill=use_fill)

    monkeypatch.setattr(search_module, "_colour_space", colour_space)
    monkeypatch.setattr(search_module, "_segment", segment)
    monkeypatch.setattr(search_module, "_hierarchical_grouping", grouping)
    image = _textured_image(shape=(48, 64))

    selective_search(image, mode="fast")
    assert calls["segments"] == [(s, k, int(k)) for s in ("hsv", "lab") for k in (50.0, 100.0)]
    assert [g[1:] for g in calls["groupings"]] == [(2, True, True), (1, True, True)] * 4
    assert len(calls["groupings"]) == 8

    for recorded in calls.values():
        recorded.clear()
    selective_search(image, mode="quality")
    spaces = ("hsv", "lab", "rgi", "h", "i")
    assert calls["segments"] == [(s, k, int(k)) for s in spaces for k in (50.0, 100.0, 150.0, 300.0)]
    # ctsf, tsf, fill only, size only per segmentation: 5 x 4 x 4 = 80 strategies.
    assert [g[1:] for g in calls["groupings"]] == [
        (2, True, True), (1, True, True), (0, False, True), (0, True, False)
    ] * 20

    for recorded in calls.values():
        recorded.clear()
    selective_search(image, mode="single")
    assert calls["spaces"] == [] and calls["segments"] == [("rgb", 200.0, 50)]
    assert [g[1:] for g in calls["groupings"]] == [(2, True, True)]


def _three_greys():
    """B | A | C side by side: B greenish grey, A grey, C light grey.

    In RGB, A and B share their R and B histogram bins (C shares none with A);
    in HSV, A and C share hue 0 and saturation 0 (B shares none with A).  So
    colour similarity merges A with B first in RGB, with C first in HSV.
    """
    image = np.zeros((60, 150, 3), np.uint8)
    image[:, :50] = (100, 130, 100)
    image[:, 50:100] = (100, 100, 100)
    image[:, 100:] = (160, 160, 160)
    return image


def test_colour_spaces_change_the_hierarchy():
    image = _three_greys()
    b_and_a, a_and_c = [0, 0, 100, 60], [50, 0, 150, 60]

    def boxes(space):
        props = selective_search(
            image, mode="fast", colour_spaces=space, similarities="ctsf", scale=100, max_boxes=100
        )
        return props.xyxy.tolist()

    rgb, hsv = boxes("rgb"), boxes("hsv")
    assert b_and_a in rgb and a_and_c not in rgb
    assert a_and_c in hsv and b_and_a not in hsv
    assert [0, 0, 150, 60] in rgb and [0, 0, 150, 60] in hsv
    # The "fast" mode holds both hierarchies' regions (via Lab and HSV strategies).
    fast = selective_search(image, mode="fast", max_boxes=1000).xyxy.tolist()
    assert a_and_c in fast


def test_ranking_combines_strategies_as_in_the_paper(monkeypatch):
    # Two fixed hierarchies (initial regions first, the top last) sharing boxes.
    first = np.array([[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 4, 4], [0, 0, 4, 2], [0, 0, 4, 4]], np.float64)
    second = np.array([[0, 0, 2, 2], [0, 2, 2, 4], [2, 0, 4, 4], [0, 0, 2, 4], [0, 0, 4, 4]], np.float64)
    monkeypatch.setattr(search_module, "_diversified_strategies", lambda *a, **k: [first, second])
    image = np.zeros((4, 4, 3), np.uint8)
    for seed in range(5):
        props = selective_search(image, mode="fast", max_boxes=100, seed=seed)
        rng = np.random.default_rng(seed)
        values = [np.arange(5, 0, -1) * rng.random(5) for _ in range(2)]  # the top has position 1
        candidates = sorted(
            zip(np.concatenate(values), range(10), np.concatenate([first, second]).tolist())
        )
        expected = []
        for _, _, box in candidates:
            if box not in expected:  # duplicates keep their best rank
                expected.append(box)
        assert props.xyxy.tolist() == expected
        np.testing.assert_allclose(props.scores, 1 - np.arange(len(expected)) / len(expected))


@pytest.mark.parametrize("mode", SELECTIVE_SEARCH_MODES)
def test_selective_search_output_contract(mode):
    image = _textured_image(seed=3, shape=(90, 140))
    props = selective_search(image, mode=mode, max_boxes=10_000, seed=7)
    assert len(props) > 20
    xyxy = props.xyxy
    assert xyxy.dtype == np.float32
    assert np.all(xyxy[:, :2] >= 0) and np.all(xyxy[:, 2] <= 140) and np.all(xyxy[:, 3] <= 90)
    assert np.all(xyxy[:, 2] > xyxy[:, 0]) and np.all(xyxy[:, 3] > xyxy[:, 1])
    assert len(np.unique(xyxy, axis=0)) == len(xyxy)  # deduplicated
    assert np.all(np.diff(props.scores) < 0) and props.scores[0] == 1  # ranked
    assert np.all(props.labels == PROPOSAL_LABEL)
    again = selective_search(image, mode=mode, max_boxes=10_000, seed=7)
    np.testing.assert_array_equal(xyxy, again.xyxy)  # deterministic for a seed
    other = selective_search(image, mode=mode, max_boxes=10_000, seed=8)
    assert not np.array_equal(xyxy, other.xyxy)  # the seed only reorders
    np.testing.assert_array_equal(np.unique(xyxy, axis=0), np.unique(other.xyxy, axis=0))
    for k in (1, 5, len(props) // 2):  # max_boxes cuts the same ranking
        top = selective_search(image, mode=mode, max_boxes=k, seed=7)
        assert len(top) == k
        np.testing.assert_array_equal(top.xyxy, xyxy[:k])


def test_diversified_modes_propose_more_than_single():
    image = _textured_image(seed=1)
    counts = [len(selective_search(image, mode=m, max_boxes=100_000)) for m in SELECTIVE_SEARCH_MODES]
    assert counts[0] < counts[1] < counts[2]


def test_selective_search_errors_name_the_input():
    image, _ = _blocks_image()
    bad_images = [image[..., 0], np.dstack([image, image[..., :1]]), image.astype(np.float32), image[:0]]
    for bad in bad_images:
        with pytest.raises(ValueError, match=r"image must be \(H, W, 3\) uint8 RGB"):
            selective_search(bad)
    with pytest.raises(ValueError, match="max_boxes must be an integer >= 1, got 0"):
        selective_search(image, max_boxes=0)
    with pytest.raises(ValueError, match="mode must be one of .*'bogus'"):
        selective_search(image, mode="bogus")
    with pytest.raises(ValueError, match="colour_spaces.*'xyz'"):
        selective_search(image, colour_spaces=("hsv", "xyz"))
    with pytest.raises(ValueError, match="similarities"):
        selective_search(image, similarities=())
    with pytest.raises(ValueError, match="single"):
        selective_search(image, mode="single", colour_spaces="hsv")
    with pytest.raises(ValueError, match="scale"):
        selective_search(image, scale=-1)
    with pytest.raises(ValueError, match="mode must be one of"):
        select_regions((160, 120), source="selective_search", image=image, selective_search_mode="bogus")
    with pytest.raises(ValueError, match="max_boxes"):
        select_regions((160, 120), source="selective_search", image=image, max_boxes=-1)
    with pytest.raises(ConfigError, match="regions.selective_search_mode"):
        from_dict({"regions": {"selective_search_mode": "bogus"}})


def test_select_regions_for_passes_the_selective_search_settings(monkeypatch):
    seen = {}
    real = selection_module.selective_search

    def spy(image, **kwargs):
        seen.update(kwargs)
        return real(image, **kwargs)

    monkeypatch.setattr(selection_module, "selective_search", spy)
    image, _ = _blocks_image()
    assert RegionsConfig().selective_search_mode == "fast"
    cfg = RegionsConfig(
        source="selective_search", max_boxes=7, selective_search_mode="quality", selective_search_max_side=64
    )
    out = select_regions_for(cfg, (160, 120), image=image)
    assert seen == {"mode": "quality", "max_boxes": 8, "max_side": 64}
    assert len(out) == 8 and out.labels[0] == WHOLE_IMAGE_LABEL
    assert len(select_regions((160, 120), source="selective_search", image=image, max_boxes=0)) == 1
