"""Common ground of the local-feature methods: quantization, regions, spatial verification.

A local-feature method aggregates each image's descriptors over a visual
codebook; its database entry is built from the image's regions (whole image
first), its query is one region (the query crop), and it re-ranks the head of a
ranking by RANSAC spatial verification (``verification.rerank``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from d2r.encoding.codebook import Codebook, quantize
from d2r.config import ConfigError
from d2r.methods.base import Database, Query, RetrievalMethod
from d2r.index.quantizer import options
from d2r.types import LocalFeatures, SearchResult
from d2r.spatial.ransac import check_model
from d2r.spatial.reranking import rerank_batch, rerank_options, stack_results

__all__ = ["LocalMethod", "assign_words"]

logger = logging.getLogger(__name__)


def assign_words(descriptors: Sequence[np.ndarray], codebook: Codebook, *, num_assignments: int,
                 **quantizer) -> list[np.ndarray]:
    """(N_i, num_assignments) word ids of several (N_i, D) descriptor sets, one quantizer call
    (``quantizer``: :func:`d2r.encoding.codebook.quantize`'s mode and HNSW options)."""
    sizes = [len(d) for d in descriptors]
    if sum(sizes) == 0:
        return [np.zeros((0, num_assignments), np.int64) for _ in sizes]
    words, _ = quantize(np.concatenate(descriptors), codebook, num_assignments=num_assignments,
                        **quantizer)
    return np.split(words, np.cumsum(sizes)[:-1])


class LocalMethod(RetrievalMethod):
    """A method over :class:`~d2r.types.LocalFeatures` with a codebook."""

    input_type = LocalFeatures
    uses_codebook = True

    expands = False
    """Whether the method implements verified query expansion (``search.query_expansion``)."""

    def validate(self) -> None:
        search = self.config.search
        if search.aml_rerank:
            raise ConfigError("search.aml_rerank applies to CNN global descriptors "
                              "(features.backend=cnn)")
        verification = self.config.verification
        try:
            check_model(verification.method, verification.model)
        except ValueError as exc:
            raise ConfigError(f"verification.method={verification.method} with "
                              f"verification.model={verification.model}: {exc}") from None
        if search.query_expansion and not self.expands:
            raise ConfigError(f"search.query_expansion is not implemented for {self.name!r} "
                              f"(local features: vlad, asmk, asmk_star and their regional forms)")
        if not self.config.codebook.path:
            self._check_assignments(self.config.codebook.num_words)

    def _check_assignments(self, num_words: int) -> None:
        """Refuse more word assignments per descriptor than the codebook has words."""
        agg = self.config.aggregation
        for key in ("num_assignments_query", "num_assignments_db"):
            if getattr(agg, key) > num_words:
                raise ConfigError(f"aggregation.{key}={getattr(agg, key)} is more than the "
                                  f"codebook size ({num_words} words)")

    def assign(self, regions: Sequence[LocalFeatures], codebook: Codebook, *,
               query: bool) -> list[np.ndarray]:
        """Word assignments of each region's descriptors (database or query multiplicity)."""
        agg = self.config.aggregation
        self._check_assignments(codebook.num_words)
        return assign_words([r.descriptors for r in regions], codebook,
                            num_assignments=agg.num_assignments_query if query
                            else agg.num_assignments_db,
                            **options(self.config.codebook, codebook.num_words))

    def rerank(self, database: Database, queries: Sequence[Query], result: SearchResult, *,
               workers: int = 1):
        """Spatially verify the top ``verification.rerank`` of each ranking.

        Only the verified head goes to verification; the tail is appended unchanged,
        so a full ranking of a million images costs no per-entry bookkeeping.  The
        details are the :class:`~d2r.spatial.reranking.RerankResult` of each query.
        """
        options = rerank_options(self.config.verification)
        top_n = options["top_n"]
        if top_n <= 0:
            return result, None
        head = SearchResult(result.scores[:, :top_n], result.ids[:, :top_n], result.names)
        reranked = rerank_batch([q.features for q in queries], head, database.database_features,
                                workers=workers, **options)
        top = stack_results(reranked, database.names)
        return SearchResult(np.concatenate([top.scores, result.scores[:, top_n:]], axis=1),
                            np.concatenate([top.ids, result.ids[:, top_n:]], axis=1),
                            database.names), reranked
