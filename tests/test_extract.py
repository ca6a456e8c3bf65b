import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from d2r.pipeline.sources import ImageSource
from d2r.config import load_config
from d2r.features.registry import make_extractor
from d2r.pipeline.extraction import extract_to_store, image_features
from d2r.io.feature_store import FeatureStore
from d2r.io.images import load_image_with_info, read_skipped


def _run(*args):
    return subprocess.run([sys.executable, "-m", "d2r.cli.extract", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_extracts_resumes_and_lists_bad_images(tiny_dataset, tmp_path):
    images = tmp_path / "imgs"
    shutil.copytree(tiny_dataset / "jpg", images)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    store = tmp_path / "feats"
    first = _run("--images", str(images), "--out", str(store), "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    names = sorted(os.listdir(images))
    with FeatureStore.open(store) as fs:
        assert len(fs) == len(names[0::2]) - ("broken.jpg" in names[0::2])
    second = _run("--images", str(images), "--out", str(store))
    assert second.returncode == 0, second.stderr
    assert "already done" in second.stdout
    with FeatureStore.open(store) as fs:
        good = [n for n in names if n != "broken.jpg"]
        assert sorted(fs.names()) == good
        feats = fs.get(good[0])
        assert len(feats) > 0 and feats.dim == 128
    assert read_skipped(store / "skipped.tsv")[0][0] == "broken.jpg"


def test_cli_refuses_store_made_with_another_config(tiny_dataset, tmp_path):
    store = tmp_path / "feats"
    assert _run("--dataset-dir", str(tiny_dataset), "--out", str(store)).returncode == 0
    other = _run("--dataset-dir", str(tiny_dataset), "--out", str(store),
                 "--set", "features.rootsift.max_features=50")
    assert other.returncode != 0
    assert "max_features" in other.stderr


def test_features_are_in_original_pixels(tiny_dataset):
    path = next((tiny_dataset / "jpg").iterdir())
    extractor = make_extractor(load_config())
    full = load_image_with_info(path)
    small = load_image_with_info(path, max_side=max(full.size) // 2)
    a = image_features(extractor, full)
    b = image_features(extractor, small)
    assert a.image_size == b.image_size == full.original_size
    w, h = full.original_size
    assert b.locations[:, 0].max() > 0.6 * w and b.locations[:, 1].max() > 0.6 * h
    box = (w * 0.25, h * 0.25, w * 0.75, h * 0.75)
    c = image_features(extractor, small, box=box)
    assert len(c) > 0
    assert np.all(c.locations >= np.float32(box[:2]) - 1) and np.all(c.locations <= np.float32(box[2:]) + 1)


def test_strict_mode_stops_on_bad_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    config = load_config(overrides=["images.on_error=raise"])
    with pytest.raises(ValueError, match="a.jpg"):
        extract_to_store(config, ImageSource.from_directory(tmp_path), tmp_path / "store",
                         show_progress=False)
