"""Stored features → aggregated images: what the index holds and what a query sends.

The aggregation config decides the shape of a database entry:

* ``vlad`` / ``asmk`` / ``asmk_star``: one aggregated image from the
  whole-image features;
* ``r_vlad`` / ``naive_r_asmk`` / ``r_asmk`` / ``r_asmk_star``: one aggregated
  image from all regions (whole image included) by regional aggregation;
* ``regional_search``: one aggregated item per region (whole image first),
  each with the (non-regional) ``method``.

A query is always one region (the query crop), aggregated with the database
method; with one region the regional kernels equal their plain forms.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from d2r.aggregation import REGIONAL_METHODS, aggregate, aggregate_regions
from d2r.codebook import Codebook, quantize
from d2r.config import Config
from d2r.types import AggregatedImage, LocalFeatures

__all__ = [
    "PLAIN_METHOD",
    "validate",
    "encode_regions",
    "encode_query",
    "encode_database_image",
    "sample_descriptors",
]

logger = logging.getLogger(__name__)

PLAIN_METHOD = {
    "vlad": "vlad", "asmk": "asmk", "asmk_star": "asmk_star",
    "r_vlad": "vlad", "naive_r_asmk": "asmk", "r_asmk": "asmk", "r_asmk_star": "asmk_star",
}
"""The single-region kernel each method reduces to (used for regional-search items)."""


def validate(config: Config) -> None:
    """Refuse combinations of options that have no meaning."""
    agg = config.aggregation
    if config.features.backend == "cnn":
        if config.regions.source != "none" or agg.regional_search:
            raise ValueError("features.backend=cnn describes whole images; regions need "
                             "local features (regions.source=none)")
        if config.verification.rerank > 0:
            raise ValueError("spatial verification needs local features, not features.backend=cnn; "
                             "CNN descriptors re-rank by AML (search.aml_rerank)")
        _validate_cnn(config)
        return
    if config.search.query_expansion or config.search.aml_rerank:
        raise ValueError("search.query_expansion and search.aml_rerank apply to CNN global "
                         "descriptors (features.backend=cnn)")
    if agg.regional_search and agg.method in REGIONAL_METHODS:
        raise ValueError(
            f"aggregation.regional_search indexes regions one by one; use a plain method "
            f"(asmk_star, asmk, vlad), not {agg.method!r}")
    if agg.regional_search and agg.method == "vlad":
        raise ValueError("aggregation.regional_search needs an ASMK method (the inverted index)")
    if (agg.regional_search or agg.method in REGIONAL_METHODS) and config.regions.source == "none":
        logger.warning("%s with regions.source=none: every image has only the whole-image region",
                       "regional search" if agg.regional_search else agg.method)


def _assign(descriptors: Sequence[np.ndarray], codebook: Codebook, *, num_assignments: int,
            mode: str) -> list[np.ndarray]:
    """Word assignments of several descriptor sets with one quantizer call."""
    sizes = [len(d) for d in descriptors]
    if sum(sizes) == 0:
        return [np.zeros((0, num_assignments), np.int64) for _ in sizes]
    words, _ = quantize(np.concatenate(descriptors), codebook, num_assignments=num_assignments,
                        mode=mode)
    return np.split(words, np.cumsum(sizes)[:-1])


def _validate_cnn(config: Config) -> None:
    """Refuse CNN baseline options that do not go together."""
    cnn, search = config.features.cnn, config.search
    if cnn.cam and (cnn.method != "multires" or cnn.backbone == "vgg16"):
        raise ValueError("features.cnn.cam masks multi-resolution R-MAC (method=multires) and "
                         "needs a ResNet with its ImageNet classifier (backbone resnet50/resnet101)")
    if search.aml_rerank < 0 or search.query_expansion < 0:
        raise ValueError("search.aml_rerank and search.query_expansion must be >= 0")
    if search.aml_rerank and cnn.method not in ("mac", "rmac", "gem"):
        raise ValueError(f"search.aml_rerank localizes single-scale maps (method mac, rmac or gem), "
                         f"not features.cnn.method={cnn.method!r}")
    if search.aml_levels is not None and search.aml_levels < 2:
        raise ValueError(f"search.aml_levels must be >= 2 or null, got {search.aml_levels}")
    if not 0 < cnn.regional_clusters <= 8 or not 0 < cnn.salient_min <= cnn.salient_max:
        raise ValueError("features.cnn.regional_clusters must be in 1..8 and "
                         "0 < salient_min <= salient_max")


def encode_regions(
    regions: Sequence[LocalFeatures], codebook: Codebook, config: Config, *, num_assignments: int
) -> AggregatedImage | list[AggregatedImage]:
    """Aggregate one image given its regions' features (whole image first).

    Returns one :class:`AggregatedImage`, or one per region with regional search.
    """
    agg = config.aggregation
    method = agg.method
    descriptors = [r.descriptors for r in regions]
    assignments = _assign(descriptors, codebook, num_assignments=num_assignments,
                          mode=config.codebook.quantization)
    if agg.regional_search:
        return [aggregate(d, codebook, method, assignments=a)
                for d, a in zip(descriptors, assignments)]
    if method in REGIONAL_METHODS:
        return aggregate_regions(descriptors, codebook, method, assignments=assignments)
    return aggregate(descriptors[0], codebook, method, assignments=assignments[0])


def encode_database_image(
    regions: Sequence[LocalFeatures], codebook: Codebook, config: Config
) -> AggregatedImage | list[AggregatedImage]:
    """Database entry of one image (see the module docstring)."""
    return encode_regions(regions, codebook, config,
                          num_assignments=config.aggregation.num_assignments_db)


def encode_query(features: LocalFeatures, codebook: Codebook, config: Config) -> AggregatedImage:
    """The aggregated query: its features as a single region."""
    agg = config.aggregation
    method = PLAIN_METHOD[agg.method]
    words = _assign([features.descriptors], codebook, num_assignments=agg.num_assignments_query,
                    mode=config.codebook.quantization)[0]
    return aggregate(features.descriptors, codebook, method, assignments=words)


def sample_descriptors(
    features: Sequence[LocalFeatures], *, max_count: int, seed: int
) -> np.ndarray:
    """Up to ``max_count`` descriptors drawn uniformly without replacement, (N, D) float32."""
    if not features:
        raise ValueError("no features to sample descriptors from")
    stacked = np.concatenate([f.descriptors for f in features])
    if len(stacked) <= max_count:
        return stacked
    rng = np.random.default_rng(seed)
    return stacked[np.sort(rng.choice(len(stacked), size=max_count, replace=False))]
