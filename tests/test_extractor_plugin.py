"""A feature extractor is one file plus a preset: tests/plugins/patches_extractor.py
defines a patch extractor with its config section ``features.patches`` beside it; these
tests run ``build_index`` and ``query`` on it through the command lines, loaded with
``D2R_PLUGINS=patches_extractor``, without any other d2r file knowing about it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent / "plugins"


def _run(module: str, *args, plugin: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    env.pop("D2R_PLUGINS", None)
    if plugin:
        env["D2R_PLUGINS"] = "patches_extractor"
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def patches_index(tiny_dataset, tmp_path_factory):
    """An index of the tiny benchmark built with a user preset selecting ``patches``."""
    work = tmp_path_factory.mktemp("patches")
    preset = work / "patches-asmk-star.yaml"
    preset.write_text("extends: rootsift-asmk-star\nfeatures:\n  backend: patches\n"
                      "  patches:\n    max_features: 200\ncodebook:\n  num_words: 32\n")
    proc = _run("d2r.cli.build_index", "--dataset-dir", tiny_dataset, "--out", work / "index",
                "--config-file", preset)
    assert proc.returncode == 0, proc.stderr
    return work / "index"


def test_plugin_extractor_builds_and_answers_through_the_clis(patches_index, tiny_dataset,
                                                             tmp_path):
    manifest = json.loads((patches_index / "index.json").read_text())
    assert manifest["config"]["features"]["patches"] == {"max_features": 200, "radius": 8}
    assert manifest["features"]["extractor"]["type"] == "patches"
    names = json.loads((patches_index / "search" / "names.json").read_text())
    image = tiny_dataset / "jpg" / f"{names[2]}.jpg"
    proc = _run("d2r.cli.query", "--index", patches_index, "--image", image, "--rerank", "5",
                "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["name"] == names[2] and rows[0]["verified"] is True


def test_plugin_section_has_its_ranges_checked(tiny_dataset, tmp_path):
    proc = _run("d2r.cli.build_index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "x",
                "--config", "rootsift-asmk-star", "--set", "features.backend=patches",
                "--set", "features.patches.radius=2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "features.patches.radius=2 is out of range: it must be in [4, 64]")
    assert not (tmp_path / "x").exists()


def test_an_index_of_a_plugin_extractor_without_the_plugin_names_the_section(patches_index,
                                                                            tiny_dataset):
    image = next((tiny_dataset / "jpg").glob("*.jpg"))
    proc = _run("d2r.cli.query", "--index", patches_index, "--image", image, plugin=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("d2r query: error: unknown config key 'features.patches' (no extractor"), line
    assert "D2R_PLUGINS" in line


def test_an_index_built_beside_a_plugin_opens_without_it(tiny_dataset, tmp_path):
    """The plugin's section is recorded by every build while it is loaded; an index of
    another extractor does not need it to open."""
    proc = _run("d2r.cli.build_index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "idx",
                "--config", "rootsift-asmk-star", "--set", "codebook.num_words=16")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert "patches" in manifest["config"]["features"]
    image = next((tiny_dataset / "jpg").glob("*.jpg"))
    proc = _run("d2r.cli.query", "--index", tmp_path / "idx", "--image", image, plugin=False)
    assert proc.returncode == 0, proc.stderr
