import pytest

from d2r import config as cfg
from d2r.config import ConfigError, load_config


def test_defaults_round_trip_through_dict():
    c = load_config()
    assert c.aggregation.method == "asmk_star"
    assert c.features.delf.scales == (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
    d = cfg.to_dict(c)
    assert d["features"]["delf"]["scales"] == [0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0]
    assert cfg.from_dict(d) == c


@pytest.mark.parametrize("name", cfg.available_presets())
def test_every_shipped_preset_resolves(name):
    load_config(name)


def test_preset_chain_and_precedence(tmp_path):
    c = load_config("delf-d2r-r-asmk-star")
    assert c.features.backend == "delf"          # from delf-asmk-star
    assert c.codebook.num_words == 65536         # from delf-asmk-star
    assert c.aggregation.method == "r_asmk_star"  # own value wins over parent
    assert c.regions.source == "detector"
    user = tmp_path / "user.yaml"
    user.write_text("codebook:\n  num_words: 4096\nsearch:\n  top_k: 7\n")
    c = load_config("delf-d2r-r-asmk-star", files=[user],
                    overrides=["search.top_k=9", "features.delf.scales=[1.0, 2]"])
    assert c.codebook.num_words == 4096
    assert c.search.top_k == 9
    assert c.features.delf.scales == (1.0, 2.0)
    assert c.aggregation.method == "r_asmk_star"


def test_user_file_may_extend_a_preset(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("extends: rootsift-vlad\naggregation:\n  alpha: 2\n")
    c = load_config(files=[user])
    assert c.aggregation.method == "vlad"
    assert c.aggregation.alpha == 2.0


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="aggregation.alpah"):
        load_config(overrides=["aggregation.alpah=3"])
    with pytest.raises(ConfigError, match="'nonsense'"):
        cfg.from_dict({"nonsense": {}})


@pytest.mark.parametrize("override, match", [
    ("codebook.num_words=many", "codebook.num_words: expected an integer"),
    ("codebook.num_words=1.5", "codebook.num_words: expected an integer"),
    ("aggregation.regional_search=3", "expected true/false"),
    ("features.delf.scales=1.0", "expected a list"),
    ("images.max_side=big", "images.max_side"),
    ("no_equals_sign", "section.key=value"),
    ("a..b=1", "section.key=value"),
])
def test_bad_values_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_optional_fields_accept_null():
    c = load_config(overrides=["images.max_side=null", "features.delf.model_path=/m"])
    assert c.images.max_side is None
    assert c.features.delf.model_path == "/m"


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml must hold a mapping"):
        load_config(files=[bad])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(files=[tmp_path / "missing.yaml"])


def test_diff_configs_names_keys():
    a = cfg.to_dict(load_config())
    b = cfg.to_dict(load_config(overrides=["codebook.num_words=8"]))
    assert cfg.diff_configs(a, b) == ["codebook.num_words: 1024 != 8"]
