"""The CNN global baselines as retrieval methods (``features.cnn.method``).

=============  ==========================================  =======================
method         rows per image (:class:`GlobalDescriptors`)  index kind
=============  ==========================================  =======================
``mac``        1: MAC                                      ``global``
``rmac``       1: R-MAC                                    ``global``
``gem``        1: GeM                                      ``global``
``multires``   1: multi-resolution multi-layer R-MAC       ``global``
               2 with ``features.cnn.cam`` (global, CAM)   ``global_local``
``regional``   one per region (whole image first)          ``region_vectors``
=============  ==========================================  =======================

No codebook.  ``search.query_expansion = k`` averages each query with its top k
and searches again (region vectors: the best-matching region of each).
``mac`` / ``rmac`` / ``gem`` also re-rank by AML (``search.aml_rerank``):
localize the query in the stored activation maps of the top N and re-rank them
by the localized region's descriptor; query expansion then uses those regions.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import numpy as np

from d2r.config import ConfigError
from d2r.cnn.aml import aml_rerank
from d2r.cnn.qe import expand_queries, rescore_head
from d2r.index.global_index import GlobalIndex
from d2r.index.global_local import GlobalLocalIndex
from d2r.index.region_vectors import RegionVectorIndex
from d2r.methods import register_method
from d2r.methods.base import Database, Query, RetrievalMethod
from d2r.types import GlobalDescriptors, SearchResult

__all__ = ["Mac", "Rmac", "Gem", "MultiResolution", "RegionalSecondOrder"]


class _CnnMethod(RetrievalMethod):
    """A CNN baseline: stored descriptor rows go straight into a vector index."""

    input_type = GlobalDescriptors
    uses_codebook = False
    localizes: ClassVar[bool] = False
    """Whether AML re-ranking applies (single-scale maps: MAC, R-MAC, GeM)."""

    def validate(self) -> None:
        config = self.config
        cnn, search = config.features.cnn, config.search
        if config.regions.source != "none" or config.aggregation.regional_search:
            raise ConfigError("features.backend=cnn describes whole images; regions need "
                              "local features (regions.source=none)")
        if config.verification.rerank > 0:
            raise ConfigError("spatial verification needs local features, not "
                              "features.backend=cnn; CNN descriptors re-rank by AML "
                              "(search.aml_rerank)")
        if cnn.cam and not self._cam_allowed():
            raise ConfigError("features.cnn.cam masks multi-resolution R-MAC (method=multires) "
                              "and needs a ResNet with its ImageNet classifier (backbone "
                              "resnet50/resnet101)")
        if search.aml_rerank < 0 or search.query_expansion < 0:
            raise ConfigError("search.aml_rerank and search.query_expansion must be >= 0")
        if search.aml_rerank and not self.localizes:
            raise ConfigError(f"search.aml_rerank localizes single-scale maps (method mac, rmac "
                              f"or gem), not features.cnn.method={self.name!r}")
        if search.aml_levels is not None and search.aml_levels < 2:
            raise ConfigError(f"search.aml_levels must be >= 2 or null, got {search.aml_levels}")
        if not 0 < cnn.regional_clusters <= 8 or not 0 < cnn.salient_min <= cnn.salient_max:
            raise ConfigError("features.cnn.regional_clusters must be in 1..8 and "
                              "0 < salient_min <= salient_max")

    def _cam_allowed(self) -> bool:
        return False

    @property
    def keeps_maps(self) -> bool:
        return bool(self.config.features.cnn.store_maps)

    @property
    def uses_maps(self) -> bool:
        return self.localizes and self.config.search.aml_rerank > 0

    def new_index(self, codebook, dim: int):
        return GlobalIndex(dim)

    def encode_database(self, regions: Sequence[GlobalDescriptors], codebook) -> np.ndarray:
        """The (R, D) rows of the image."""
        return regions[0].vectors

    def add(self, index, entries: Sequence[np.ndarray], names: Sequence[str]) -> None:
        index.add(np.concatenate(entries), names=list(names))

    def search(self, index, queries: Sequence[GlobalDescriptors], codebook, *,
               k: int) -> SearchResult:
        """Inner-product search of the query rows, then average query expansion (unless AML
        re-ranking is on: it expands with the localized regions instead)."""
        slots = self._slots()
        for i, q in enumerate(queries):
            if len(q) != slots:
                raise ValueError(f"query {i} has {len(q)} descriptor rows; the index holds "
                                 f"{slots} per image")
        rows = np.stack([q.vectors for q in queries]) if queries else \
            np.zeros((0, slots, index.dim), np.float32)
        row_shape = index.vectors.shape[1:]
        result = index.search(rows.reshape(-1, *row_shape), k=k)
        top = self._expansion()
        if top > 0:
            ids = result.ids[:, :top]
            neighbours = index.vectors[np.maximum(ids, 0)].reshape(*ids.shape, slots, index.dim)
            expanded = np.stack([expand_queries(rows[:, s], neighbours[:, :, s], ids >= 0)
                                 for s in range(slots)], axis=1)
            result = index.search(expanded.reshape(-1, *row_shape), k=k)
        return result

    def _slots(self) -> int:
        """Descriptor rows per image."""
        return 1

    def _expansion(self) -> int:
        """Query expansion depth at search time (0 when AML re-ranking expands instead)."""
        return 0 if self.uses_maps else self.config.search.query_expansion

    def rerank(self, database: Database, queries: Sequence[Query], result: SearchResult, *,
               workers: int = 1) -> tuple[SearchResult, Optional[list]]:
        """AML: localize each query in the maps of its top ``search.aml_rerank`` and re-rank them.

        Each localized window is described like a whole image (MAC / R-MAC / GeM of that
        part of the map); with ``search.query_expansion = k`` the query is then averaged
        with the k best localized regions and re-scores them.  The rest keeps its order.
        Each database map is read once for all queries; ``workers`` threads localize
        that many database images at once (the result does not depend on it).
        """
        if not self.uses_maps:
            return result, None
        search = self.config.search
        if any(q.activation_map is None for q in queries):
            raise ValueError("AML re-ranking needs the queries' activation maps (Searcher.query)")
        describer = database.extractor.describer
        maps = [q.activation_map.values for q in queries]
        vectors = np.stack([q.features.vectors[0] for q in queries])
        reranked, windows, regions = aml_rerank(
            result, np.stack([m.max(axis=(0, 1)) for m in maps]), database.database_maps(),
            query_vectors=vectors, query_aspect_ratios=[m.shape[1] / m.shape[0] for m in maps],
            describe_region=lambda crop: describer.describe_maps({"map": [crop]}),
            top_n=search.aml_rerank, levels=search.aml_levels, workers=workers)
        if search.query_expansion > 0:
            top = search.query_expansion
            expanded = expand_queries(vectors, regions[:, :top], windows[:, :top, 0] >= 0)
            reranked = rescore_head(reranked, expanded, regions, windows[:, :, 0] >= 0)
        return reranked, None


@register_method
class Mac(_CnnMethod):
    name, localizes = "mac", True


@register_method
class Rmac(_CnnMethod):
    name, localizes = "rmac", True


@register_method
class Gem(_CnnMethod):
    name, localizes = "gem", True


@register_method
class MultiResolution(_CnnMethod):
    """Multi-resolution multi-layer R-MAC (PFA); with CAM, a global and a CAM-local row
    compared by the smaller Manhattan distance (``global_local`` index)."""

    name = "multires"

    def _cam_allowed(self) -> bool:
        return self.config.features.cnn.backbone != "vgg16"

    def _slots(self) -> int:
        return 2 if self.config.features.cnn.cam else 1

    def new_index(self, codebook, dim: int):
        return GlobalLocalIndex(dim) if self.config.features.cnn.cam else GlobalIndex(dim)

    def add(self, index, entries: Sequence[np.ndarray], names: Sequence[str]) -> None:
        if self.config.features.cnn.cam:
            index.add(np.stack(entries), names=list(names))
        else:
            super().add(index, entries, names)


@register_method
class RegionalSecondOrder(_CnnMethod):
    """Regional (second-order) pooling: an image is as similar as its best region pair."""

    name = "regional"

    def new_index(self, codebook, dim: int):
        return RegionVectorIndex(dim)

    def add(self, index, entries: Sequence[np.ndarray], names: Sequence[str]) -> None:
        index.add(list(entries), names=list(names))

    def search(self, index, queries: Sequence[GlobalDescriptors], codebook, *,
               k: int) -> SearchResult:
        rows = [q.vectors for q in queries]
        result = index.search(rows, k=k)
        top = self._expansion()
        if top > 0:
            expanded = [index.expand(r, ids, top_k=top) for r, ids in zip(rows, result.ids)]
            result = index.search(expanded, k=k)
        return result
