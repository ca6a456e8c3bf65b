"""An opened index directory that answers queries (used by ``python -m d2r.query``).

A :class:`Searcher` reads ``index.json``, refuses an index whose codebook or
format does not match its record, extracts query features with the
extractor the index was built with (refusing a different one), searches, and
re-ranks the top of a ranking by spatial verification with the database
features held in memory after their first use.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from d2r.build_index import FORMAT, MANIFEST, VERSION
from d2r.codebook import load_codebook, load_tf_checkpoint
from d2r.config import (Config, ConfigError, diff_configs, from_dict, merge_values,
                        parse_override, to_dict)
from d2r.encode import encode_query, validate
from d2r.global_.qe import average_query_expansion
from d2r.extract import image_features, make_extractor
from d2r.index.global_index import GlobalIndex
from d2r.index.inverted import InvertedIndex
from d2r.index.regional import RegionalIndex
from d2r.io.feature_store import FeatureStore
from d2r.io.images import load_image_with_info
from d2r.types import LocalFeatures, SearchResult
from d2r.verification import RerankResult, rerank_batch, rerank_options

__all__ = ["IndexMismatchError", "QUERY_TIME_KEYS", "Searcher"]

logger = logging.getLogger(__name__)

_INDEX_CLASSES = {"inverted": InvertedIndex, "regional": RegionalIndex, "global": GlobalIndex}

QUERY_TIME_KEYS = (
    "search.", "verification.", "aggregation.alpha", "aggregation.tau",
    "aggregation.num_assignments_query", "aggregation.pooling",
    "aggregation.database_normalization",
)
"""Config keys that may differ from the index's at query time; everything else is fixed."""


class IndexMismatchError(ValueError):
    """An index directory whose parts do not fit together, or a config it was not built with."""


class Searcher:
    """Query an index built by :func:`d2r.build_index.build_index`.

    Args:
        path: the index directory.
        overrides: ``"a.b=c"`` strings changing query-time settings
            (:data:`QUERY_TIME_KEYS`); other keys are refused.
        mmap: memory-map the index arrays.
    """

    def __init__(self, path: str | os.PathLike, *, overrides: Sequence[str] = (),
                 mmap: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} is not a d2r index (no {MANIFEST}); "
                                    "was the build interrupted? Run build_index again") from None
        except ValueError as exc:
            raise IndexMismatchError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise IndexMismatchError(f"{manifest_path}: not a {FORMAT} v{VERSION} manifest")
        built = self.manifest["config"]
        values = built
        for text in overrides:
            values = merge_values(values, parse_override(text))
        self.config: Config = from_dict(values)
        fixed = [d for d in diff_configs(built, to_dict(self.config))
                 if not d.startswith(QUERY_TIME_KEYS)]
        if fixed:
            raise ConfigError(f"index {self.path} was built with other values; these cannot "
                              f"change at query time: {'; '.join(fixed)}")
        validate(self.config)
        self.codebook = self._load_codebook(self.manifest["codebook"])
        kind = self.manifest["kind"]
        self.index = _INDEX_CLASSES[kind].load(self.path / "search", mmap=mmap)
        self.names: tuple[str, ...] = tuple(self.index.names)
        self._extractor = None
        self._store: Optional[FeatureStore] = None
        self._db_features: dict[int, LocalFeatures] = {}

    def _load_codebook(self, record: Optional[dict]):
        """The index's codebook, checked against its recorded hash (None for global descriptors)."""
        if record is None:
            return None
        location = self.path / record["path"]
        codebook = load_codebook(location) if (location / "codebook.json").exists() \
            else load_tf_checkpoint(location)
        if codebook.sha256 != record["sha256"]:
            raise IndexMismatchError(f"codebook {location} is not the one index {self.path} was "
                                     f"built with (sha256 {codebook.sha256[:12]} != "
                                     f"{record['sha256'][:12]})")
        return codebook

    @property
    def extractor(self):
        """The feature extractor of the index (refuses one configured differently)."""
        if self._extractor is None:
            extractor = make_extractor(self.config)
            built = self.manifest["features"]["extractor"]
            mismatch = diff_configs(built, extractor.config())
            if mismatch:
                raise IndexMismatchError(f"the configured extractor differs from the one that "
                                         f"built {self.path}: {'; '.join(mismatch)}")
            self._extractor = extractor
        return self._extractor

    def image_features(self, image_path: str | os.PathLike,
                       box: Optional[Sequence[float]] = None) -> LocalFeatures:
        """Features of an image file (cropped to ``box`` x1, y1, x2, y2 pixels first)."""
        images = self.config.images
        loaded = load_image_with_info(image_path, max_side=images.max_side,
                                      max_pixels=images.max_pixels)
        return image_features(self.extractor, loaded, box=box)

    def search(self, queries: Sequence[LocalFeatures], *, k: Optional[int] = None) -> SearchResult:
        """Top-``k`` (default ``search.top_k``) database images per query, best first."""
        k = self.config.search.top_k if k is None else k
        if self.codebook is None:
            return self._search_global(queries, k)
        encoded = [encode_query(q, self.codebook, self.config) for q in queries]
        if isinstance(self.index, GlobalIndex):
            return self.index.search(encoded, k=k)
        agg = self.config.aggregation
        options = dict(alpha=agg.alpha, tau=agg.tau,
                       normalize="both" if agg.database_normalization else "query")
        if isinstance(self.index, RegionalIndex):
            options["pooling"] = agg.pooling
        return self.index.search(encoded, k=k, **options)

    def _search_global(self, queries: Sequence[LocalFeatures], k: int) -> SearchResult:
        """CNN global descriptors: inner product, then optional average query expansion."""
        vectors = np.concatenate([q.descriptors for q in queries]) if queries else \
            np.zeros((0, self.index.dim), np.float32)
        result = self.index.search(vectors, k=k)
        top = self.config.search.query_expansion
        if top > 0:
            expanded = average_query_expansion(vectors, self.index.vectors, result, top_k=top)
            result = self.index.search(expanded, k=k)
        return result

    def database_features(self, image_id: int) -> LocalFeatures:
        """Whole-image features of database image ``image_id``, cached in memory."""
        feats = self._db_features.get(image_id)
        if feats is None:
            if self._store is None:
                self._store = FeatureStore.open(self.path / "features")
            feats = self._db_features[image_id] = self._store.get(self.names[image_id])
        return feats

    def rerank(self, queries: Sequence[LocalFeatures], result: SearchResult,
               *, top_n: Optional[int] = None, workers: int = 1) -> list[RerankResult]:
        """Spatially verify the top ``top_n`` (default ``verification.rerank``) of each row."""
        options = rerank_options(self.config.verification)
        if top_n is not None:
            options["top_n"] = top_n
        return rerank_batch(list(queries), result, self.database_features, workers=workers,
                            **options)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
