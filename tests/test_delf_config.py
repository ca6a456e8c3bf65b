import pytest

from d2r.config import ConfigError, from_dict, load_config
from d2r.io.delf_config import (aggregation_config_to_overrides, delf_config_to_overrides,
                                read_aggregation_config, read_delf_config)

REFERENCE_DELF = """
model_path: "parameters/delf_gld_20190411/model"
image_scales: .25
image_scales: .3536
image_scales: .5
image_scales: .7071
image_scales: 1.0
image_scales: 1.4142
image_scales: 2.0
delf_local_config {
  use_pca: true
  max_feature_num: 1000
  score_threshold: 100.0
  pca_parameters {
    mean_path: "parameters/delf_gld_20190411/pca/mean.datum"
    projection_matrix_path: "parameters/delf_gld_20190411/pca/pca_proj_mat.datum"
    pca_dim: 128
    use_whitening: false
  }
}
max_image_size: 1024
"""

REFERENCE_QUERY_AGG = """
codebook_size: 65536
feature_dimensionality: 128
aggregation_type: ASMK_STAR
use_l2_normalization: true
codebook_path: "parameters/k65536_codebook_tfckpt/codebook"
num_assignments: 1
use_regional_aggregation: true
alpha: 3.0
tau: 0.0
"""


def test_reference_delf_config_converts(tmp_path):
    path = tmp_path / "delf_config_example.pbtxt"
    path.write_text(REFERENCE_DELF)
    overrides = delf_config_to_overrides(read_delf_config(path))
    config = from_dict(overrides)
    delf = config.features.delf
    assert config.features.backend == "delf"
    assert delf.model_path == str(tmp_path / "parameters/delf_gld_20190411/model")
    assert delf.model_format == "tf1_savedmodel"
    assert delf.scales == (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
    assert delf.pca_path == str(tmp_path / "parameters/delf_gld_20190411/pca")
    assert (delf.pca_dim, delf.use_whitening, delf.max_features) == (128, False, 1000)
    assert config.images.max_side == 1024


def test_reference_aggregation_config_converts(tmp_path):
    path = tmp_path / "query_aggregation_config.pbtxt"
    path.write_text(REFERENCE_QUERY_AGG)
    overrides = aggregation_config_to_overrides(read_aggregation_config(path), side="query")
    config = from_dict(overrides)
    assert config.aggregation.method == "r_asmk_star"
    assert config.aggregation.num_assignments_query == 1
    assert config.codebook.num_words == 65536
    assert config.codebook.path == str(tmp_path / "parameters/k65536_codebook_tfckpt/codebook")


@pytest.mark.parametrize("text, match", [
    ("use_global_features: true", "use_global_features"),
    ("use_square_images: true", "use_square_images"),
    ("delf_local_config { use_pca: true pca_parameters { mean_path: 'a/m.datum' } }",
     "pca_parameters"),
])
def test_unsupported_fields_are_named(tmp_path, text, match):
    path = tmp_path / "c.pbtxt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        delf_config_to_overrides(read_delf_config(path))


def test_malformed_pbtxt_names_the_file(tmp_path):
    path = tmp_path / "bad.pbtxt"
    path.write_text("image_scales: 'x'")
    with pytest.raises(ConfigError, match="bad.pbtxt"):
        read_delf_config(path)


def test_overrides_layer_under_cli_sets(tmp_path):
    path = tmp_path / "agg.pbtxt"
    path.write_text(REFERENCE_QUERY_AGG)
    yaml_file = tmp_path / "agg.yaml"
    import yaml
    yaml_file.write_text(yaml.safe_dump(
        aggregation_config_to_overrides(read_aggregation_config(path))))
    config = load_config("rootsift-asmk-star", files=[yaml_file], overrides=["aggregation.tau=0.1"])
    assert config.aggregation.method == "r_asmk_star" and config.aggregation.tau == 0.1
