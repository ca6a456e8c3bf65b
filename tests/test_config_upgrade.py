"""Indexes and feature stores written before a config key existed keep working."""

import json

import numpy as np
import pytest

from d2r.pipeline.build import build_index
from d2r.pipeline.sources import ImageSource
from d2r.config import legacy_values, load_config, to_dict, upgrade_record
from d2r.pipeline.extraction import comparable_store_config, extract_to_store
from d2r.io.feature_store import StoreConfigError
from d2r.pipeline.searcher import Searcher


OLD_FEATURE_SECTIONS = ("rootsift", "delf", "cnn")
"""The extractor sections d2r 0.1.0 had."""


def _drop_new_keys(record: dict, prefix: str = "") -> dict:
    """``record`` as d2r 0.1.0 wrote it: without the keys of ``legacy_values()`` and the
    extractor sections added since."""
    out = {}
    for key, value in record.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if dotted in legacy_values() or (prefix == "features" and isinstance(value, dict)
                                         and key not in OLD_FEATURE_SECTIONS):
            continue
        out[key] = _drop_new_keys(value, dotted) if isinstance(value, dict) else value
    return out


def test_upgrade_record_fills_only_missing_keys_and_sections_present():
    record = {"regions": {"source": "grid"}, "features": {"cnn": {"cam": True}}}
    upgraded = upgrade_record(record)
    assert upgraded["regions"]["selective_search_mode"] == "single"
    assert upgraded["features"]["cnn"]["cam"] is True
    assert upgraded["features"]["cnn"]["store_maps"] is False
    assert "search" not in upgraded and record == {"regions": {"source": "grid"},
                                                  "features": {"cnn": {"cam": True}}}
    assert upgrade_record({"salient_max": 9}, "features.cnn")["salient_min"] == 20


def test_upgrade_record_gives_a_missing_extractor_section_its_defaults():
    """A section written before its extractor existed cannot have mattered to the record."""
    upgraded = upgrade_record({"features": {"backend": "rootsift", "rootsift": {}}})
    assert upgraded["features"]["xfeat"] == to_dict(load_config(None).features.xfeat)
    assert upgraded["features"]["rootsift"] == {}
    assert "disk" in upgrade_record({"backend": "rootsift"}, "features")


def test_legacy_values_reproduce_the_defaults_except_the_changed_one():
    """Every key added since 0.1.0 defaults to its legacy value, except selective search,
    whose default became the paper's 'fast' mode (old records keep 'single'), the HNSW
    search breadth, 128 when approximate quantization had no setting for it, now 24, and
    the verification decision, now the a-contrario test at score 3 (old records keep the
    inlier count)."""
    config = to_dict(load_config(None))
    changed = []
    for dotted, value in legacy_values().items():
        node = config
        for part in dotted.split("."):
            node = node[part]
        if node != value:
            changed.append(dotted)
    assert changed == ["codebook.ef_search", "regions.selective_search_mode",
                       "verification.decision", "verification.min_score"]


@pytest.fixture()
def old_index(tiny_dataset, tmp_path):
    """A RootSIFT index whose index.json and feature store lack the keys added since 0.1.0."""
    config = load_config("rootsift-asmk-star", overrides=["codebook.num_words=16",
                                                           "regions.source=grid"])
    source = ImageSource.from_dataset(tiny_dataset)
    out = build_index(config, source, tmp_path / "index", show_progress=False)
    manifest = json.loads((out / "index.json").read_text())
    manifest["config"] = _drop_new_keys(manifest["config"])
    manifest["features"] = _drop_new_keys(manifest["features"])
    (out / "index.json").write_text(json.dumps(manifest))
    search_manifest_file = out / manifest["search"] / "manifest.json"
    search_manifest = json.loads(search_manifest_file.read_text())
    for key in ("config", "features"):  # the search structure records the same build
        search_manifest["config"][key] = manifest[key]
    search_manifest_file.write_text(json.dumps(search_manifest))
    store_manifest = json.loads((out / "features" / "manifest.json").read_text())
    store_manifest["config"] = _drop_new_keys(store_manifest["config"])
    (out / "features" / "manifest.json").write_text(json.dumps(store_manifest))
    return out, config, source


def test_an_old_index_is_searched_and_its_store_continued(old_index, tiny_dataset):
    out, config, source = old_index
    with Searcher(out) as searcher:
        assert searcher.config.regions.selective_search_mode == "single"
        result = searcher.search([searcher.database_features(0)], k=3)
        assert result.ids[0, 0] == 0 and np.isfinite(result.scores[0, 0])
    summary = extract_to_store(config, source, out / "features", boxes_dir=out / "boxes",
                               show_progress=False)
    assert summary.extracted == 0 and summary.already_done == len(source)


def test_an_old_store_still_refuses_another_extractor(old_index):
    out, config, source = old_index
    other = load_config("rootsift-asmk-star", overrides=[
        "codebook.num_words=16", "regions.source=grid", "features.rootsift.max_features=500"])
    with pytest.raises(StoreConfigError, match="max_features"):
        extract_to_store(other, source, out / "features", boxes_dir=out / "boxes")


def test_selective_search_settings_count_only_for_selective_search():
    old = {"extractor": {"type": "rootsift"}, "regions": {"source": "selective_search"}}
    single = {"extractor": {"type": "rootsift"}, "regions": {
        "source": "selective_search", "selective_search_mode": "single",
        "selective_search_max_side": 256}}
    fast = {**single, "regions": {**single["regions"], "selective_search_mode": "fast"}}
    assert comparable_store_config(old) == comparable_store_config(single)
    assert comparable_store_config(old) != comparable_store_config(fast)
    grid = {"extractor": {"type": "rootsift"}, "regions": {"source": "grid"}}
    grid_fast = {**grid, "regions": {"source": "grid", "selective_search_mode": "fast"}}
    assert comparable_store_config(grid) == comparable_store_config(grid_fast)
