"""The aggregation kernels of the D2R paper as retrieval methods (``aggregation.method``).

==================  =====================================  ==========================
method              database entry                          index kind
==================  =====================================  ==========================
``vlad``            VLAD of the whole image                 ``global`` (K*D floats)
``asmk``            ASMK of the whole image                 ``inverted`` (float)
``asmk_star``       ASMK* (binarized) of the whole image    ``inverted`` (binary)
``r_vlad``          regional VLAD of all regions            ``global``
``naive_r_asmk``    naive regional ASMK                     ``inverted`` (float)
``r_asmk``          regional ASMK                           ``inverted`` (float)
``r_asmk_star``     regional ASMK*                          ``inverted`` (binary)
==================  =====================================  ==========================

With ``aggregation.regional_search`` an ASMK method indexes each region as its own
item (``regional`` index) and scores an image by pooling its regions
(``aggregation.pooling``).  A query is one region aggregated with the method's
single-region kernel; with one region the regional kernels equal their plain forms.
Scores of the inverted kernels are normalized by the query's self-similarity and,
with ``aggregation.database_normalization`` (default), the database item's too.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Sequence

import numpy as np

from d2r.encoding.aggregation import aggregate, aggregate_regions
from d2r.encoding.codebook import Codebook
from d2r.config import ConfigError
from d2r.encoding.expansion import expand_aggregated
from d2r.index.global_index import GlobalIndex
from d2r.index.inverted import InvertedIndex
from d2r.index.regional import RegionalIndex
from d2r.methods import register_method
from d2r.methods.base import Database, Query
from d2r.methods.local import LocalMethod
from d2r.types import AggregatedImage, LocalFeatures, SearchResult
from d2r.spatial.reranking import RerankResult, stack_results

__all__ = ["Vlad", "Asmk", "AsmkStar", "RegionalVlad", "NaiveRegionalAsmk", "RegionalAsmk",
           "RegionalAsmkStar"]

logger = logging.getLogger(__name__)


class _Kernel(LocalMethod):
    """An aggregation kernel: ``plain`` aggregates one region, ``regional`` all regions at once."""

    plain: ClassVar[str]
    """The single-region kernel (queries; regional-search items)."""
    regional: ClassVar[bool] = False
    """Whether the database entry aggregates all regions together (the ``r_*`` kernels)."""
    binary: ClassVar[bool] = False
    inverted: ClassVar[bool] = True
    """Scored through an inverted file (ASMK family) rather than one dense vector (VLAD)."""

    @property
    def regional_search(self) -> bool:
        return bool(self.config.aggregation.regional_search)

    def validate(self) -> None:
        super().validate()
        agg = self.config.aggregation
        if agg.regional_search and self.regional:
            raise ConfigError(f"aggregation.regional_search indexes regions one by one; use a "
                              f"plain method (asmk_star, asmk, vlad), not {self.name!r}")
        if self.config.search.query_expansion and self.config.verification.rerank <= 0:
            raise ConfigError(f"search.query_expansion={self.config.search.query_expansion} "
                              f"expands with spatially verified images: it needs "
                              f"verification.rerank > 0 (or search.query_expansion=0)")
        if agg.regional_search and not self.inverted:
            raise ConfigError("aggregation.regional_search needs an ASMK method (the inverted index)")
        if (agg.regional_search or self.regional) and self.config.regions.source == "none":
            logger.warning("%s with regions.source=none: every image has only the whole-image "
                           "region", "regional search" if agg.regional_search else self.name)

    def new_index(self, codebook: Codebook, dim: int):
        if not self.inverted:
            return GlobalIndex(codebook.num_words * codebook.dim)
        cls = RegionalIndex if self.regional_search else InvertedIndex
        return cls(num_words=codebook.num_words, dim=codebook.dim, binary=self.binary)

    def encode_database(self, regions: Sequence[LocalFeatures], codebook: Codebook
                        ) -> AggregatedImage | list[AggregatedImage]:
        """One aggregated image, or one per region with regional search."""
        words = self.assign(regions, codebook, query=False)
        descriptors = [r.descriptors for r in regions]
        if self.regional_search:
            return [aggregate(d, codebook, self.plain, assignments=a)
                    for d, a in zip(descriptors, words)]
        if self.regional:
            return aggregate_regions(descriptors, codebook, self.name, assignments=words)
        return aggregate(descriptors[0], codebook, self.plain, assignments=words[0])

    def encode_query(self, features: LocalFeatures, codebook: Codebook) -> AggregatedImage:
        """The query's features aggregated as a single region."""
        words = self.assign([features], codebook, query=True)[0]
        return aggregate(features.descriptors, codebook, self.plain, assignments=words)

    def search_options(self) -> dict:
        """Keyword options of the index's ``search`` (the selectivity and normalization)."""
        if not self.inverted:
            return {}
        agg = self.config.aggregation
        options = dict(alpha=agg.alpha, tau=agg.tau,
                       normalize="both" if agg.database_normalization else "query")
        if self.regional_search:
            options["pooling"] = agg.pooling
        return options

    def search(self, index, queries: Sequence[LocalFeatures], codebook: Codebook, *,
               k: int) -> SearchResult:
        encoded = [self.encode_query(q, codebook) for q in queries]
        return index.search(encoded, k=k, **self.search_options())

    expands = True

    def rerank(self, database: Database, queries: Sequence[Query], result: SearchResult, *,
               workers: int = 1):
        """Spatial verification, then (``search.query_expansion`` > 0) verified query
        expansion: the verified images (under ``nfa``, the whole checked head) stay on top in
        their re-ranked order, a search with the expanded query
        (:func:`d2r.encoding.expansion.expand_aggregated`) orders the rest."""
        result, reranked = super().rerank(database, queries, result, workers=workers)
        if reranked is None or self.config.search.query_expansion <= 0:
            return result, reranked
        rows = [self._expand(database, query.features, verified, ids, scores)
                for query, verified, ids, scores in zip(queries, reranked, result.ids,
                                                        result.scores)]
        return stack_results(rows, database.names), rows

    def _expand(self, database, query: LocalFeatures, verified: RerankResult,
                ids: np.ndarray, scores: np.ndarray) -> RerankResult:
        """One query's whole ranking (``ids``, ``scores``: after verification) after expansion
        with the images the decision verified; without one the same ranking."""
        k = ids.shape[0]
        head = int(np.count_nonzero(verified.verified))  # the verified lead the list
        if head > 0:
            ids, scores = self._expanded_ranking(database, query, verified, head, k)
        checked = {int(i): pos for pos, i in enumerate(verified.ids[:verified.num_verified])}
        where = [checked.get(int(i), -1) for i in ids]
        empty = np.zeros((0, 2), np.int64)
        return RerankResult(
            ids=ids, scores=scores.astype(np.float32),
            inliers=np.array([verified.inliers[p] if p >= 0 else -1 for p in where], np.int32),
            order=np.array([verified.order[p] if p >= 0 else -1 for p in where], np.int64),
            matches=tuple(verified.matches[p] if p >= 0 else empty for p in where),
            num_verified=verified.num_verified,
            verification_scores=np.array([verified.verification_scores[p] if p >= 0 else np.nan
                                          for p in where], np.float32),
            verified=np.array([p >= 0 and verified.verified[p] for p in where], bool))

    def _expanded_ranking(self, database, query: LocalFeatures, verified: RerankResult,
                          head: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``head`` verified images, then the expanded query's search without them; under
        ``verification.decision: nfa`` the whole checked head keeps its re-ranked order and
        the expanded query ranks only what verification did not check, so turning expansion
        on never reorders what was verified (docs/benchmarks.md: it lowered Hard mAP
        otherwise)."""
        search = self.config.search
        used = range(min(head, search.query_expansion))
        codebook = database.codebook
        images = []
        for pos in used:
            features = database.database_features(int(verified.ids[pos]))
            matched = np.unique(verified.matches[pos][:, 1])
            if search.qe_features == "inliers":
                features = features.select(matched)
            elif search.qe_features == "region":
                corners = features.locations[matched]
                inside = np.all((features.locations >= corners.min(axis=0))
                                & (features.locations <= corners.max(axis=0)), axis=1)
                features = features.select(inside)
            images.append(self.encode_query(features, codebook))
        inliers = verified.inliers[list(used)].astype(np.float64)
        weights = (inliers / inliers.max()) ** search.qe_alpha
        query_image = expand_aggregated(self.encode_query(query, codebook), images,
                                        method=self.plain, weights=weights)
        keep_head = self.config.verification.decision == "nfa"
        depth = k + (verified.num_verified if keep_head else head)
        again = database.index.search([query_image], k=depth, **self.search_options())
        if keep_head:
            # the checked head keeps its re-ranked order; the expanded query ranks the rest
            checked = verified.num_verified
            head_ids = verified.ids[:checked]
            rest = ~np.isin(again.ids[0], head_ids)
            ids = np.concatenate([head_ids, again.ids[0][rest]])[:k]
            scores = np.concatenate([verified.scores[:checked], again.scores[0][rest]])[:k]
            return ids, scores
        top_ids = verified.ids[:head]
        rest = ~np.isin(again.ids[0], top_ids)
        ids = np.concatenate([top_ids, again.ids[0][rest]])[:k]
        scores = np.concatenate([verified.scores[:head], again.scores[0][rest]])[:k]
        return ids, scores


@register_method
class Vlad(_Kernel):
    name, plain, inverted = "vlad", "vlad", False


@register_method
class Asmk(_Kernel):
    name = plain = "asmk"


@register_method
class AsmkStar(_Kernel):
    name = plain = "asmk_star"
    binary = True


@register_method
class RegionalVlad(_Kernel):
    name, plain, inverted, regional = "r_vlad", "vlad", False, True


@register_method
class NaiveRegionalAsmk(_Kernel):
    name, plain, regional = "naive_r_asmk", "asmk", True


@register_method
class RegionalAsmk(_Kernel):
    name, plain, regional = "r_asmk", "asmk", True


@register_method
class RegionalAsmkStar(_Kernel):
    name, plain, regional, binary = "r_asmk_star", "asmk_star", True, True
