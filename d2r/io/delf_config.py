"""Read the DELF reference's text-proto configs and convert them to d2r overrides.

``DelfConfig`` (``delf_config_example.pbtxt``, ``delf_gld_config.pbtxt``) maps to
``features.delf``; ``AggregationConfig`` (``index_aggregation_config.pbtxt``,
``query_aggregation_config.pbtxt``) maps to ``codebook`` and ``aggregation``.
The converters return plain nested dicts that :func:`d2r.config.load_config`
accepts as a user YAML, so a reference setup becomes::

    overrides = delf_config_to_overrides(read_delf_config("delf_config.pbtxt"))
    config = from_dict(overrides)

Relative paths inside a pbtxt are resolved against the pbtxt's folder.  Fields
d2r does not implement (DELG global features, square images, minimum image
size) raise :class:`~d2r.config.ConfigError` naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from d2r.config import ConfigError
from d2r.protos import aggregation_config_pb2, delf_config_pb2

__all__ = [
    "read_delf_config",
    "read_aggregation_config",
    "delf_config_to_overrides",
    "aggregation_config_to_overrides",
]

_METHODS = {
    (aggregation_config_pb2.AggregationConfig.VLAD, False): "vlad",
    (aggregation_config_pb2.AggregationConfig.ASMK, False): "asmk",
    (aggregation_config_pb2.AggregationConfig.ASMK_STAR, False): "asmk_star",
    (aggregation_config_pb2.AggregationConfig.VLAD, True): "r_vlad",
    (aggregation_config_pb2.AggregationConfig.ASMK, True): "r_asmk",
    (aggregation_config_pb2.AggregationConfig.ASMK_STAR, True): "r_asmk_star",
}


def _parse(path: str | os.PathLike, message):
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: not a valid {type(message).__name__} text proto: {exc}") from exc


def read_delf_config(path: str | os.PathLike) -> delf_config_pb2.DelfConfig:
    """Parse a reference ``DelfConfig`` ``.pbtxt``; relative paths resolved against its folder."""
    config = _parse(path, delf_config_pb2.DelfConfig())
    base = Path(path).parent
    if config.HasField("model_path"):
        config.model_path = str(base / config.model_path)
    pca = config.delf_local_config.pca_parameters
    for name in ("mean_path", "projection_matrix_path", "pca_variances_path"):
        if pca.HasField(name):
            setattr(pca, name, str(base / getattr(pca, name)))
    return config


def read_aggregation_config(path: str | os.PathLike) -> aggregation_config_pb2.AggregationConfig:
    """Parse a reference ``AggregationConfig`` ``.pbtxt``; ``codebook_path`` resolved likewise."""
    config = _parse(path, aggregation_config_pb2.AggregationConfig())
    if config.HasField("codebook_path"):
        config.codebook_path = str(Path(path).parent / config.codebook_path)
    return config


def _unsupported(field: str, why: str) -> ConfigError:
    return ConfigError(f"DelfConfig.{field} is not supported by d2r: {why}")


def delf_config_to_overrides(config: delf_config_pb2.DelfConfig) -> dict:
    """``{"features": {"backend": "delf", "delf": {...}}}`` equivalent to a reference DelfConfig."""
    if config.use_global_features:
        raise _unsupported("use_global_features", "DELG global features are not implemented")
    if not config.use_local_features:
        raise _unsupported("use_local_features=false", "d2r needs local features")
    if config.use_square_images:
        raise _unsupported("use_square_images", "images keep their aspect ratio")
    if config.min_image_size != -1:
        raise _unsupported("min_image_size", "images are never upscaled")
    local = config.delf_local_config
    if local.HasField("layer_name") and local.layer_name:
        raise _unsupported("delf_local_config.layer_name", "the model's output layer is fixed")
    if local.use_resized_coordinates:
        raise _unsupported("delf_local_config.use_resized_coordinates",
                           "locations are always original-image pixels")
    delf: dict = {
        "score_threshold": float(local.score_threshold),
        "max_features": int(local.max_feature_num),
        "use_pca": bool(local.use_pca),
    }
    if config.HasField("model_path"):
        delf["model_path"] = config.model_path
        delf["model_format"] = "tf2_savedmodel" if config.is_tf2_exported else "tf1_savedmodel"
    if config.image_scales:
        delf["scales"] = [round(float(s), 6) for s in config.image_scales]
    if local.use_pca:
        pca = local.pca_parameters
        fields = ("mean_path", "projection_matrix_path")
        folders = {str(Path(getattr(pca, f)).parent) for f in fields}
        if not all(pca.HasField(f) for f in fields) or len(folders) != 1:
            raise _unsupported("delf_local_config.pca_parameters",
                               "mean_path and projection_matrix_path must both be set, in one folder")
        delf["pca_path"] = folders.pop()
        delf["use_whitening"] = bool(pca.use_whitening)
        if pca.HasField("pca_dim"):
            delf["pca_dim"] = int(pca.pca_dim)
    overrides: dict = {"features": {"backend": "delf", "delf": delf}}
    if config.max_image_size != -1:
        overrides["images"] = {"max_side": int(config.max_image_size)}
    return overrides


def aggregation_config_to_overrides(
    config: aggregation_config_pb2.AggregationConfig, *, side: str = "db"
) -> dict:
    """``{"codebook": ..., "aggregation": ...}`` equivalent to a reference AggregationConfig.

    ``side`` (``"db"`` or ``"query"``) says which of d2r's two assignment counts
    ``num_assignments`` sets: the reference keeps one config per side.
    """
    if side not in ("db", "query"):
        raise ValueError(f"side must be 'db' or 'query', got {side!r}")
    key = (config.aggregation_type, bool(config.use_regional_aggregation))
    if key not in _METHODS:
        raise ConfigError(f"AggregationConfig.aggregation_type {config.aggregation_type} "
                          "is not a known aggregation")
    if not config.use_l2_normalization:
        raise ConfigError("AggregationConfig.use_l2_normalization=false is not supported by d2r")
    codebook: dict = {"num_words": int(config.codebook_size)}
    if config.HasField("codebook_path"):
        codebook["path"] = config.codebook_path
    return {
        "codebook": codebook,
        "aggregation": {
            "method": _METHODS[key],
            f"num_assignments_{side}": int(config.num_assignments),
            "alpha": float(config.alpha),
            "tau": float(config.tau),
        },
    }
