"""The three registries: retrieval methods, feature extractors, index kinds."""

from __future__ import annotations

import pytest

from d2r.config import ConfigError, load_config
from d2r.features.registry import extractor_class, extractor_names, make_extractor
from d2r.index.registry import UnknownIndexKind, index_class, index_kinds, open_index
from d2r.methods import method_class, method_names, register_method, validate
from d2r.methods.base import RetrievalMethod
from d2r.types import GlobalDescriptors, LocalFeatures

BUILTIN_METHODS = {"vlad", "asmk", "asmk_star", "r_vlad", "naive_r_asmk", "r_asmk",
                   "r_asmk_star", "mac", "rmac", "gem", "multires", "regional"}


def test_every_builtin_is_registered_under_its_config_name():
    assert BUILTIN_METHODS <= set(method_names())
    for name in BUILTIN_METHODS:
        assert method_class(name).name == name
    assert {"rootsift", "delf", "cnn"} <= set(extractor_names())
    assert set(index_kinds()) >= {"inverted", "regional", "global", "global_local",
                                  "global_regions"}
    for kind in index_kinds():
        assert index_class(kind).kind == kind


@pytest.mark.parametrize("override, message", [
    ("aggregation.method=asmk_plus", "unknown retrieval method 'asmk_plus'; known: asmk, "),
    ("features.backend=sift", "features.backend: unknown extractor 'sift'; known: cnn, delf"),
])
def test_unknown_names_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config("rootsift-asmk-star", overrides=[override]))


def test_unknown_index_kind_is_refused_by_name(tmp_path):
    with pytest.raises(UnknownIndexKind, match="unknown index kind 'hnsw'; known: "):
        index_class("hnsw")
    (tmp_path / "manifest.json").write_text('{"kind": "hnsw"}')
    with pytest.raises(UnknownIndexKind, match="'hnsw'"):
        open_index(tmp_path)


def test_a_method_must_take_what_the_extractor_produces():
    config = load_config("rmac-vgg16", overrides=["features.cnn.method=asmk_star"])
    with pytest.raises(ConfigError, match="'asmk_star' takes LocalFeatures, but "
                                          "features.backend='cnn' produces GlobalDescriptors"):
        validate(config)
    assert extractor_class("cnn").output_type is GlobalDescriptors
    assert extractor_class("delf").output_type is LocalFeatures


def test_a_name_cannot_be_registered_twice():
    class Again(RetrievalMethod):
        name, input_type = "asmk_star", LocalFeatures

    with pytest.raises(ValueError, match="'asmk_star' is already registered"):
        register_method(Again)

    class Nameless(RetrievalMethod):
        input_type = LocalFeatures

    with pytest.raises(TypeError, match="non-empty class attribute 'name'"):
        register_method(Nameless)


def test_method_hooks_pick_the_index_kind():
    """The index kind follows from the method (and its regional-search setting)."""
    from d2r.encoding.codebook import Codebook
    import numpy as np

    codebook = Codebook(np.eye(4, 8, dtype=np.float32))
    cases = {("rootsift-asmk-star", ()): "inverted",
             ("rootsift-asmk-star", ("aggregation.regional_search=true",)): "regional",
             ("rootsift-vlad", ()): "global",
             ("rootsift-asmk-star", ("aggregation.method=r_asmk",)): "inverted"}
    for (preset, sets), kind in cases.items():
        method = validate(load_config(preset, overrides=list(sets)))
        assert method.new_index(codebook, 8).kind == kind, (preset, sets)
    assert validate(load_config("rootsift-asmk-star")).new_index(codebook, 8).binary
    assert not validate(load_config("rootsift-asmk-star", overrides=["aggregation.method=asmk"])
                        ).new_index(codebook, 8).binary


def test_make_extractor_reads_its_own_section():
    extractor = make_extractor(load_config("rootsift-asmk-star",
                                           overrides=["features.rootsift.max_features=7"]))
    assert extractor.max_features == 7
