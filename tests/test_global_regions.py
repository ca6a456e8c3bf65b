"""R-MAC region grids against hand-computed grids; sliding (max-pool) regions; pooling maths."""

import numpy as np
import pytest

from d2r.cnn.pooling import gem, generalized_mean, l2_normalize, mac, region_max_pool, spoc
from d2r.regions.grids import rmac_regions, sliding_regions


def boxes(xs, ys, side):
    """Row-major grid of square boxes with the given starts."""
    return [[x, y, x + side, y + side] for y in ys for x in xs]


# Hand computation (reference formula, 0-based starts):
# square 10x10: w=10, no extra regions.
#   l=1: wl=10 -> start 0.  l=2: wl=6, wl2=2, b=4 -> 0, 4.  l=3: wl=5, wl2=1, b=2.5 -> 0, 2, 5.
SQUARE_10 = boxes([0], [0], 10) + boxes([0, 4], [0, 4], 6) + boxes([0, 2, 5], [0, 2, 5], 5)
# wide 10x20: b = 10/(steps-1) = 10, 5, ...; overlap 1 - b/10 -> 0, .5, .67, ...: closest to .4 is
# steps=3 -> 2 extra columns.
#   l=1: wl=10, wl2=4, b=(20-10)/2=5 -> x 0, 5, 10; y 0.
#   l=2: wl=6, wl2=2, b=14/3 -> x floor(2), floor(6.67), floor(11.33), floor(16) minus 2 = 0, 4, 9, 14;
#        y: b=4 -> 0, 4.
#   l=3: wl=5, wl2=1, b=15/4 -> x floor(1, 4.75, 8.5, 12.25, 16) - 1 = 0, 3, 7, 11, 15; y 0, 2, 5.
WIDE_10x20 = (boxes([0, 5, 10], [0], 10) + boxes([0, 4, 9, 14], [0, 4], 6)
              + boxes([0, 3, 7, 11, 15], [0, 2, 5], 5))


def test_rmac_regions_square_map():
    np.testing.assert_array_equal(rmac_regions(10, 10, levels=3), SQUARE_10)


def test_rmac_regions_wide_map():
    np.testing.assert_array_equal(rmac_regions(10, 20, levels=3), WIDE_10x20)


def test_rmac_regions_tall_map_is_the_transpose():
    tall = [[y1, x1, y2, x2] for x1, y1, x2, y2 in WIDE_10x20]
    got = rmac_regions(20, 10, levels=3)
    order = lambda b: sorted(map(tuple, b))  # noqa: E731 - row-major order differs after transposing
    assert order(got) == order(tall)
    assert got.shape == (26, 4)


def test_rmac_regions_small_odd_map_and_levels():
    # 3x7: w=3, b=4/(steps-1) = 4, 2, 1.33, 1, .8, .67 -> overlap 1 - b/3: -.33, .33, .56, ... -> steps=3
    #   l=1: wl=3, wl2=0, b=(7-3)/2=2 -> 0, 2, 4.  l=2: wl=2, wl2=0, b=5/3 -> 0, 1, 3, 5; y: b=1 -> 0, 1
    expected = boxes([0, 2, 4], [0], 3) + boxes([0, 1, 3, 5], [0, 1], 2)
    np.testing.assert_array_equal(rmac_regions(3, 7, levels=2), expected)
    # l=3 would be 1 cell wide; regions stay inside the map
    r = rmac_regions(3, 7, levels=5)
    assert r[:, 2].max() <= 7 and r[:, 3].max() <= 3 and np.all(r[:, 2] > r[:, 0])


def test_sliding_regions_hand_computed():
    # 10x20: l=1 kernel 10 stride 4 -> x 0, 4, 8; l=2 kernel 6 stride 2 -> x 0..14 step 2, y 0, 2, 4
    r = sliding_regions(10, 20, levels=2)
    expected = boxes([0, 4, 8], [0], 10) + boxes(list(range(0, 15, 2)), [0, 2, 4], 6)
    np.testing.assert_array_equal(r, expected)


@pytest.mark.parametrize("bad", [dict(height=0, width=3), dict(height=3, width=3, levels=0),
                                 dict(height=3, width=3, overlap=1.5)])
def test_rmac_regions_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        rmac_regions(**bad)


def test_pooling_hand_checked():
    x = np.zeros((2, 3, 2), np.float32)
    x[0, 1] = [3, 1]
    x[1, 2] = [1, 4]
    np.testing.assert_array_equal(mac(x), [3, 4])
    np.testing.assert_array_equal(spoc(x), [4, 5])
    np.testing.assert_allclose(generalized_mean(x, alpha=2), [np.sqrt(10), np.sqrt(17)], rtol=1e-6)
    np.testing.assert_allclose(gem(x, p=1, eps=0), [4 / 6, 5 / 6], rtol=1e-6)
    np.testing.assert_array_equal(region_max_pool(x, [[0, 0, 2, 2], [2, 0, 3, 2]]), [[3, 1], [1, 4]])
    np.testing.assert_allclose(l2_normalize([3, 4]), [0.6, 0.8])
    with pytest.raises(ValueError, match="outside"):
        region_max_pool(x, [[0, 0, 4, 2]])
    with pytest.raises(ValueError, match="NaN"):
        mac(np.full((1, 1, 1), np.nan))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        mac(np.zeros((3, 3)))
