"""RootSIFT: Hellinger maths, geometry on a real image, boxes, blank images, PCA."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from d2r.features.pca import learn_pca
from d2r.features.rootsift import RootSiftExtractor, root_sift


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()  # (512, 512, 3) uint8, ships with scikit-image


def test_root_sift_hand_checked():
    d = np.zeros((2, 128), np.float32)
    d[0, :2] = [1, 3]
    out = root_sift(d)
    np.testing.assert_allclose(out[0, :2], [0.5, np.sqrt(0.75)], rtol=1e-6)
    assert np.all(out[0, 2:] == 0) and np.all(out[1] == 0)  # zero descriptor stays zero
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, rtol=1e-6)
    with pytest.raises(ValueError):
        root_sift(-d - 1)


def _mutual_nn(a, b):
    sim = a @ b.T
    ab, ba = sim.argmax(axis=1), sim.argmax(axis=0)
    i = np.nonzero(ba[ab] == np.arange(len(a)))[0]
    return i, ab[i]


def test_matches_follow_a_known_similarity_transform(astronaut):
    angle, scale = 25.0, 0.8
    matrix = cv2.getRotationMatrix2D((256.0, 256.0), angle, scale)  # (2, 3), maps x, y
    warped = cv2.warpAffine(astronaut, matrix, (512, 512), flags=cv2.INTER_LINEAR)
    ex = RootSiftExtractor(max_features=800)
    fa, fb = ex.extract(astronaut), ex.extract(warped)
    assert len(fa) == 800 and len(fb) > 400
    i, j = _mutual_nn(fa.descriptors, fb.descriptors)
    expected = fa.locations[i] @ matrix[:, :2].T + matrix[:, 2]
    err = np.linalg.norm(fb.locations[j] - expected, axis=1)
    assert len(i) >= 200
    assert np.mean(err < 3.0) >= 0.7, f"only {np.mean(err < 3.0):.2f} of {len(i)} matches within 3 px"
    # scales follow the zoom for correct matches
    good = err < 3.0
    ratio = np.median(fb.scales[j[good]] / fa.scales[i[good]])
    assert abs(ratio - scale) < 0.1


def test_output_format(astronaut):
    feats = RootSiftExtractor(max_features=300).extract(astronaut)
    assert len(feats) == 300 and feats.dim == 128 and feats.image_size == (512, 512)
    assert feats.descriptors.dtype == np.float32 and np.all(feats.descriptors >= 0)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
    assert np.all(np.diff(feats.scores) <= 0) and np.all(feats.scores > 0)
    assert np.all(feats.scales > 0)
    assert np.all((feats.locations >= 0) & (feats.locations <= 511))


def test_box_equals_extracting_the_crop(astronaut):
    ex = RootSiftExtractor(max_features=200)
    boxed = ex.extract(astronaut, box=(100.5, 50, 300, 260.2))
    crop = ex.extract(np.ascontiguousarray(astronaut[50:261, 100:300]))
    assert boxed.image_size == (512, 512) and len(boxed) == len(crop) > 0
    np.testing.assert_allclose(boxed.locations, crop.locations + [100, 50])
    np.testing.assert_array_equal(boxed.descriptors, crop.descriptors)


def test_blank_image_gives_zero_features():
    for value in (0, 128):
        feats = RootSiftExtractor().extract(np.full((64, 96, 3), value, np.uint8))
        assert len(feats) == 0 and feats.dim == 128 and feats.image_size == (96, 64)


def test_max_image_side_keeps_input_coordinates(astronaut):
    small = RootSiftExtractor(max_features=100, max_image_side=256).extract(astronaut)
    full = RootSiftExtractor(max_features=400).extract(astronaut)
    assert small.image_size == (512, 512)
    # every downscaled keypoint lies near a full-resolution keypoint
    dist = np.linalg.norm(small.locations[:, None] - full.locations[None], axis=2).min(axis=1)
    assert np.median(dist) < 3.0


def test_pca_reduces_dimension(astronaut):
    train = RootSiftExtractor(max_features=1000).extract(astronaut).descriptors
    pca = learn_pca(train, dim=64)
    ex = RootSiftExtractor(max_features=100, pca=pca, pca_dim=32, whiten=True)
    feats = ex.extract(astronaut)
    assert ex.dim == feats.dim == 32
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
    assert RootSiftExtractor(pca=pca).dim == 64
    cfg = ex.config()
    assert cfg["pca"] == {"dim": 32, "whiten": True, "sha256": pca.fingerprint()}
    with pytest.raises(ValueError):
        RootSiftExtractor(pca=learn_pca(np.random.default_rng(0).random((50, 10))))
    with pytest.raises(ValueError):
        RootSiftExtractor(pca_dim=32)


def test_config_is_json(astronaut):
    cfg = RootSiftExtractor(max_features=10).config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["type"] == "rootsift" and cfg["dim"] == 128 and cfg["max_features"] == 10
    with pytest.raises(ValueError):
        RootSiftExtractor(max_features=0)


def test_importing_features_does_not_import_tensorflow():
    code = (
        "import sys, d2r.features, d2r.features.base, d2r.features.rootsift, d2r.features.pca, "
        "d2r.features.receptive_field, d2r.features.delf, d2r.features.delf_model; "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
