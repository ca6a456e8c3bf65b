"""Multi-resolution / multi-layer R-MAC, Principal Feature Analysis and CAM masks."""

import numpy as np
import pytest

from d2r.cnn.cam import cam_heatmap, cam_mask, min_manhattan_distance
from d2r.cnn.multires import fuse_resolutions, multilayer_descriptor, resize_map, study_rmac
from d2r.cnn.pfa import PFA, learn_pfa, load_pfa
from d2r.cnn.pooling import l2_normalize, region_max_pool
from d2r.regions.grids import sliding_regions


def relu_map(seed, h, w, c):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((h, w, c)), 0).astype(np.float32)


def test_resize_map_constant_identity_and_upsampling():
    x = relu_map(0, 5, 7, 3)
    np.testing.assert_allclose(resize_map(x, 5, 7), x, rtol=1e-6)
    np.testing.assert_allclose(resize_map(np.full((3, 4, 2), 2.0), 6, 9), 2.0, rtol=1e-6)
    # 1-D linear ramp doubled: half-pixel centres, edges clamped
    ramp = np.arange(4, dtype=np.float32)[None, :]
    np.testing.assert_allclose(resize_map(ramp, 1, 8)[0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


def test_fuse_resolutions_rescales_to_largest_and_sums():
    small, large = np.ones((3, 4, 2), np.float32), 2 * np.ones((6, 8, 2), np.float32)
    fused = fuse_resolutions([small, large])
    assert fused.shape == (6, 8, 2)
    np.testing.assert_allclose(fused, 3.0)
    with pytest.raises(ValueError, match="channel"):
        fuse_resolutions([small, np.ones((3, 4, 5))])


def test_study_rmac_square_sum_and_sum_pooling():
    x = relu_map(1, 9, 14, 8)
    v = l2_normalize(region_max_pool(x, sliding_regions(9, 14)))
    np.testing.assert_allclose(study_rmac(x), l2_normalize(np.sqrt((v.astype(np.float64) ** 2).sum(0))), rtol=1e-5)
    np.testing.assert_allclose(study_rmac(x, aggregation="sum"), l2_normalize(v.sum(0)), rtol=1e-5)
    mask = np.zeros((9, 14), bool)
    mask[2:6, 3:9] = True
    masked = x * mask[..., None]
    np.testing.assert_allclose(study_rmac(x, mask=mask), study_rmac(masked), rtol=1e-6)


def test_multilayer_descriptor_concatenates_layers_and_applies_pfa():
    last = [relu_map(2, 5, 7, 6), relu_map(3, 7, 10, 6)]
    prev = [relu_map(4, 10, 14, 4), relu_map(5, 14, 20, 4)]
    d = multilayer_descriptor([last, prev])
    assert d.shape == (10,)
    expected = l2_normalize(np.concatenate([study_rmac(fuse_resolutions(last)), study_rmac(fuse_resolutions(prev))]))
    np.testing.assert_allclose(d, expected, rtol=1e-6)
    pfa = PFA(np.array([0, 3, 7]), 10)
    np.testing.assert_allclose(multilayer_descriptor([last, prev], pfa=pfa), l2_normalize(expected[[0, 3, 7]]),
                               rtol=1e-6)


def constructed_groups(seed=0, n=400, groups=4, eps=0.05):
    """Per group three features s - e, s, s + e (s, e independent): the middle one represents it."""
    rng = np.random.default_rng(seed)
    cols = []
    for _ in range(groups):
        s, e = rng.standard_normal(n), rng.standard_normal(n)
        cols += [s - eps * e, s, s + eps * e]
    return np.stack(cols, axis=1)


def test_pfa_selects_the_central_feature_of_each_group():
    x = constructed_groups()
    pfa = learn_pfa(x, dim=4, num_components=4)
    np.testing.assert_array_equal(pfa.indices, [1, 4, 7, 10])
    np.testing.assert_array_equal(pfa.select(x), x[:, [1, 4, 7, 10]].astype(np.float32))
    # default q from the explained variance gives one feature per group too
    auto = learn_pfa(x, dim=4)
    assert sorted(i // 3 for i in auto.indices) == [0, 1, 2, 3]


def test_pfa_round_trip_and_validation(tmp_path):
    pfa = PFA(np.array([5, 1]), 8)
    np.testing.assert_array_equal(pfa.indices, [1, 5])
    again = load_pfa(pfa.save(tmp_path / "pfa.json"))
    np.testing.assert_array_equal(again.indices, [1, 5])
    assert again.input_dim == 8
    with pytest.raises(ValueError, match="distinct"):
        PFA(np.array([1, 1]), 8)
    with pytest.raises(ValueError, match="dim must be"):
        learn_pfa(np.ones((5, 3)), dim=4)


def test_cam_heatmap_mask_and_min_manhattan():
    x = np.zeros((3, 4, 2), np.float32)
    x[1, 2] = [2, 0]
    x[0, 0] = [0, 1]
    kernel = np.array([[1.0, 0.0], [0.0, 1.0]])
    heat = cam_heatmap(x, kernel)  # class 0 wins (mean 2/12 vs 1/12)
    np.testing.assert_array_equal(heat, x[..., 0])
    np.testing.assert_array_equal(cam_heatmap(x, kernel, class_index=1), x[..., 1])
    mask = cam_mask(heat, threshold=0.9)
    np.testing.assert_array_equal(np.argwhere(mask), [[1, 2]])
    assert cam_mask(np.zeros((2, 2))).all()
    qg, ql = np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]])
    dg, dl = np.array([[3.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.5], [5.0, 5.0]])
    np.testing.assert_allclose(min_manhattan_distance(qg, ql, dg, dl), [[0.5, 1.0]])
    with pytest.raises(ValueError, match="kernel"):
        cam_heatmap(x, np.ones((3, 2)))


class FakeBackbone:
    """Maps whose size follows the requested side, as a real backbone's (no TensorFlow)."""

    def activations(self, image, *, max_side=None):
        side = max_side or max(image.shape[:2])
        h, w = max(1, side * image.shape[0] // max(image.shape[:2]) // 16), max(1, side // 16)
        return {"last": relu_map(side, h, w, 8), "previous_block": relu_map(side + 1, 2 * h, 2 * w, 4)}


def test_global_describer_methods_with_a_fake_backbone():
    from d2r.cnn.describe import GlobalDescriber

    image = np.zeros((100, 160, 3), np.uint8)
    expected_dims = {"mac": 8, "rmac": 8, "gem": 8, "multires": 12}
    for method, dim in expected_dims.items():
        describer = GlobalDescriber(FakeBackbone(), method=method, max_side=160, resolutions=(96, 128, 160))
        v = describer.describe(image)
        assert v.shape == (dim,) and v.dtype == np.float32 and abs(np.linalg.norm(v) - 1) < 1e-5
    maps = GlobalDescriber(FakeBackbone(), method="multires", resolutions=(96, 160)).maps(image)
    assert [m.shape for m in maps["last"]] == [(3, 6, 8), (6, 10, 8)]
    with pytest.raises(ValueError, match="method"):
        GlobalDescriber(FakeBackbone(), method="vlad")
