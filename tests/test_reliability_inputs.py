"""Trustworthy inputs: out-of-range settings refused before any work, nothing written
outside --out, duplicates and unusable file names skipped and listed, featureless images
reported and featureless queries refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2r.config import ConfigError, available_presets, load_config, setting_ranges
from d2r.io.images import read_skipped
from d2r.methods import validate

SMALL = ("--config", "rootsift-asmk-star", "--set", "features.rootsift.max_features=80",
         "--set", "codebook.num_words=16")


def _run(module: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_is_within_the_declared_ranges(preset):
    validate(load_config(preset))


def test_every_declared_range_names_a_numeric_setting():
    config = load_config(None)
    for key in setting_ranges():
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        values = node if isinstance(node, tuple) else (node,)
        assert all(v is None or isinstance(v, (int, float)) for v in values), key


@pytest.mark.parametrize("override, message", [
    ("aggregation.alpha=-1", r"aggregation.alpha=-1.0 is out of range: it must be in \(0, inf\)"),
    ("aggregation.tau=2", r"aggregation.tau=2.0 is out of range: it must be in \[-1, 1\)"),
    ("codebook.num_words=-1", r"codebook.num_words=-1 is out of range"),
    ("verification.rerank=-1", r"verification.rerank=-1 is out of range"),
    ("features.delf.scales=[1.0,-2.0]", r"features.delf.scales=\(1.0, -2.0\) is out of range"),
    ("verification.ratio_test=1.5", r"verification.ratio_test=1.5 is out of range"),
])
def test_out_of_range_settings_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config("rootsift-asmk-star", overrides=[override]))


def test_a_bad_setting_is_refused_before_any_work(tiny_dataset, tmp_path):
    out = tmp_path / "index"
    proc = _run("d2r.cli.build_index", "--dataset-dir", tiny_dataset, "--out", out, *SMALL,
                "--set", "codebook.num_words=-1", check=False)
    assert proc.returncode != 0 and "codebook.num_words=-1 is out of range" in proc.stderr
    assert not out.exists()  # refused before extraction started


@pytest.fixture(scope="module")
def photos(tiny_dataset, tmp_path_factory) -> Path:
    """A folder of a user's photos: three benchmark images and a blank one."""
    import cv2

    folder = tmp_path_factory.mktemp("user") / "photos"
    folder.mkdir()
    for jpg in sorted((tiny_dataset / "jpg").glob("*.jpg"))[:3]:
        shutil.copy(jpg, folder / jpg.name)
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 160, 3), 255, np.uint8))
    return folder


def test_list_paths_outside_the_list_folder_stay_inside_the_index(photos, tmp_path):
    """A list naming ../../photos/x.jpg (twice, and once as ./x.jpg): every image indexed
    once under a safe name, the duplicates listed, no file written next to the photos."""
    lists = tmp_path / "lists" / "deep"
    lists.mkdir(parents=True)
    first = sorted(p.name for p in photos.glob("*.jpg"))
    relative = os.path.relpath(photos, lists)
    lines = [f"{relative}/{n}" for n in first] + [f"{relative}/{first[0]}",
                                                  f"{relative}/./{first[1]}"]
    (lists / "images.txt").write_text("\n".join(lines) + "\n")
    before = sorted(p.name for p in photos.iterdir())
    out = tmp_path / "index"
    proc = _run("d2r.cli.build_index", "--image-list", lists / "images.txt", "--out", out, *SMALL,
                "--set", "regions.source=grid")
    assert "2 skipped" in proc.stdout
    assert sorted(p.name for p in photos.iterdir()) == before
    names = json.loads((out / "search" / "names.json").read_text())
    assert len(names) == 3 and all(n.startswith("_outside_/") and ".." not in n for n in names)
    boxes = [p for p in (out / "boxes").rglob("*.boxes")]
    assert len(boxes) == 3 and all(out in p.parents for p in boxes)
    skipped = read_skipped(out / "features" / "skipped.tsv")
    assert [reason.split(":")[0] for _, reason in skipped] == ["duplicate", "duplicate"]


def test_undecodable_file_names_are_skipped_and_listed(photos, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(photos, folder)
    os.rename(folder / "blank.png", os.path.join(os.fsencode(folder), b"zzz\xff.png"))
    out = tmp_path / "index"
    _run("d2r.cli.build_index", "--images", folder, "--out", out, *SMALL)
    assert len(json.loads((out / "search" / "names.json").read_text())) == 3
    assert read_skipped(out / "features" / "skipped.tsv") == [
        ("zzz\\xff.png", "file name is not valid UTF-8 text")]


def test_featureless_images_are_reported_and_featureless_queries_refused(photos, tmp_path):
    out = tmp_path / "index"
    proc = _run("d2r.cli.build_index", "--images", photos, "--out", out, *SMALL)
    assert "1 without features" in proc.stdout
    assert json.loads((out / "index.json").read_text())["num_featureless"] == 1
    skipped = read_skipped(out / "features" / "skipped.tsv")
    assert skipped == [("blank.png", "no features (blank image?): indexed, but no query can "
                                     "find it")]
    proc = _run("d2r.cli.query", "--index", out, "--image", photos / "blank.png", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no local features in the image" in proc.stderr and "Traceback" not in proc.stderr
    photo = sorted(photos.glob("*.jpg"))[0]
    proc = _run("d2r.cli.query", "--index", out, "--image", photo, "--box", "0,0,2,2", check=False)
    assert proc.returncode == 2 and "no local features in the box" in proc.stderr
    _run("d2r.cli.query", "--index", out, "--image", photo)


def test_a_negative_rerank_depth_is_refused(photos, tmp_path):
    out = tmp_path / "index"
    _run("d2r.cli.build_index", "--images", photos, "--out", out, *SMALL)
    proc = _run("d2r.cli.query", "--index", out, "--image", sorted(photos.glob("*.jpg"))[0],
                "--rerank", "-1", check=False)
    assert proc.returncode != 0 and "verification.rerank=-1 is out of range" in proc.stderr
