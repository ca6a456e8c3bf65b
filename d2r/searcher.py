"""An opened index directory that answers queries (used by ``python -m d2r.query``).

A :class:`Searcher` reads ``index.json``, refuses an index whose codebook or
format does not match its record, extracts query features with the
extractor the index was built with (refusing a different one), searches, and
re-ranks the top of a ranking: local features by spatial verification with the
database features held in memory after their first use; CNN global descriptors
by AML localization in the stored database activation maps.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from d2r.build_index import FORMAT, MANIFEST, MAPS, VERSION
from d2r.codebook import load_codebook, load_tf_checkpoint
from d2r.config import (
    Config,
    ConfigError,
    diff_configs,
    from_dict,
    merge_values,
    parse_override,
    to_dict,
    upgrade_record,
)
from d2r.encode import encode_query, validate
from d2r.extract import (
    comparable_extractor_config,
    image_features,
    image_features_and_map,
    make_extractor,
)
from d2r.global_.activation_maps import features_to_map
from d2r.global_.aml import aml_rerank
from d2r.global_.qe import expand_queries, rescore_head
from d2r.index.global_index import GlobalIndex
from d2r.index.global_local import GlobalLocalIndex
from d2r.index.inverted import InvertedIndex
from d2r.index.region_vectors import RegionVectorIndex
from d2r.index.regional import RegionalIndex
from d2r.io.feature_store import FeatureStore
from d2r.io.images import load_image_with_info
from d2r.types import LocalFeatures, SearchResult
from d2r.verification import RerankResult, rerank_batch, rerank_options

__all__ = ["IndexMismatchError", "QUERY_TIME_KEYS", "Query", "Searcher"]

logger = logging.getLogger(__name__)

_INDEX_CLASSES = {cls.kind: cls for cls in (InvertedIndex, RegionalIndex, GlobalIndex,
                                            GlobalLocalIndex, RegionVectorIndex)}

QUERY_TIME_KEYS = (
    "search.", "verification.", "aggregation.alpha", "aggregation.tau",
    "aggregation.num_assignments_query", "aggregation.pooling",
    "aggregation.database_normalization",
)
"""Config keys that may differ from the index's at query time; everything else is fixed."""


class IndexMismatchError(ValueError):
    """An index directory whose parts do not fit together, or a config it was not built with."""


@dataclass(frozen=True)
class Query:
    """One query: its features and, for AML re-ranking, the activation map they came from.

    Attributes:
        features: what :meth:`Searcher.search` takes (local features, or CNN descriptor rows).
        activation_map: (H', W', C) float32 map of the query (crop); None unless AML is on.
    """

    features: LocalFeatures
    activation_map: Optional[np.ndarray] = None


class _StoredMaps:
    """Database activation maps by image id, read from the maps store on access."""

    def __init__(self, store: FeatureStore, names: Sequence[str]) -> None:
        self.store, self.names = store, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, image_id: int) -> np.ndarray:
        return features_to_map(self.store.get(self.names[image_id]))


class Searcher:
    """Query an index built by :func:`d2r.build_index.build_index`.

    Args:
        path: the index directory.
        overrides: ``"a.b=c"`` strings changing query-time settings
            (:data:`QUERY_TIME_KEYS`); other keys are refused.
        mmap: memory-map the index arrays.
        shards: search this sharded directory (``shards.json``, one Ray actor per shard)
            instead of ``INDEX/search``; by default an index built with shards and no
            ``search/`` is searched through its ``INDEX/shards``.
        shard_options: keyword arguments of :class:`d2r.distributed.ShardedIndex`
            (``address``, ``num_cpus_per_shard``, ...).
    """

    def __init__(self, path: str | os.PathLike, *, overrides: Sequence[str] = (),
                 mmap: bool = True, shards: Optional[str | os.PathLike] = None,
                 shard_options: Optional[dict] = None) -> None:
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
        built = upgrade_record(self.manifest["config"])
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
        self.index = self._open_index(shards, mmap, shard_options or {})
        self.names: tuple[str, ...] = tuple(self.index.names)
        self._extractor = None
        self._store: Optional[FeatureStore] = None
        self._maps: Optional[FeatureStore] = None
        self._db_features: dict[int, LocalFeatures] = {}
        if self.uses_aml and not (self.path / MAPS).is_dir():
            raise ConfigError(f"search.aml_rerank needs the database activation maps, but index "
                              f"{self.path} was built without them (features.cnn.store_maps=false)")

    @property
    def uses_aml(self) -> bool:
        """Whether rankings are re-ranked by AML localization (CNN descriptors, search.aml_rerank > 0)."""
        return self.config.features.backend == "cnn" and self.config.search.aml_rerank > 0

    def _open_index(self, shards: Optional[str | os.PathLike], mmap: bool, shard_options: dict):
        """``INDEX/search``, or the sharded index (Ray actors) at ``shards`` / ``INDEX/shards``."""
        kind = self.manifest["kind"]
        record = self.manifest.get("shards")
        if shards is None and record and not (self.path / "search").is_dir():
            shards = self.path / record["path"]
        if shards is None:
            return _INDEX_CLASSES[kind].load(self.path / "search", mmap=mmap)
        if self.codebook is None:
            raise IndexMismatchError(f"sharded search serves codebook indexes (local features); "
                                     f"index {self.path} holds CNN descriptors")
        from d2r.distributed.shards import ShardedIndex

        index = ShardedIndex(shards, mmap=mmap, **shard_options)
        if index.kind != kind:
            index.close()
            raise IndexMismatchError(f"{shards} holds a {index.kind} index, {self.path} was "
                                     f"built as {kind}")
        return index

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
            mismatch = diff_configs(comparable_extractor_config(self.manifest["features"]["extractor"]),
                                    comparable_extractor_config(extractor.config()))
            if mismatch:
                raise IndexMismatchError(f"the configured extractor differs from the one that "
                                         f"built {self.path}: {'; '.join(mismatch)}")
            self._extractor = extractor
        return self._extractor

    def image_features(self, image_path: str | os.PathLike,
                       box: Optional[Sequence[float]] = None, *,
                       rotation: int = 0) -> LocalFeatures:
        """Features of an image file, turned ``rotation`` degrees clockwise (a multiple of
        90), then cropped to ``box`` (x1, y1, x2, y2 pixels of the turned image)."""
        return self.query(image_path, box, rotation=rotation).features

    def query(self, image_path: str | os.PathLike, box: Optional[Sequence[float]] = None, *,
              rotation: int = 0) -> Query:
        """A :class:`Query` of an image file (turned and cropped as in :meth:`image_features`),
        with the activation map when AML re-ranking is on."""
        images = self.config.images
        loaded = load_image_with_info(image_path, max_side=images.max_side,
                                      max_pixels=images.max_pixels).rotated(rotation)
        if not self.uses_aml:
            return Query(image_features(self.extractor, loaded, box=box))
        return Query(*image_features_and_map(self.extractor, loaded, box=box))

    def search(self, queries: Sequence[LocalFeatures], *, k: Optional[int] = None) -> SearchResult:
        """Top-``k`` (default ``search.top_k``) database images per query, best first."""
        k = self.config.search.top_k if k is None else k
        if self.codebook is None:
            return self._search_global(queries, k)
        encoded = [encode_query(q, self.codebook, self.config) for q in queries]
        if self.index.kind == GlobalIndex.kind:
            return self.index.search(encoded, k=k)
        agg = self.config.aggregation
        options = dict(alpha=agg.alpha, tau=agg.tau,
                       normalize="both" if agg.database_normalization else "query")
        if self.index.kind == RegionalIndex.kind:
            options["pooling"] = agg.pooling
        return self.index.search(encoded, k=k, **options)

    def _search_global(self, queries: Sequence[LocalFeatures], k: int) -> SearchResult:
        """CNN descriptors: search the global index, then optional query expansion.

        With AML on, query expansion uses the localized regions instead
        (:meth:`localize_rerank`).
        """
        top = 0 if self.uses_aml else self.config.search.query_expansion
        index = self.index
        if isinstance(index, RegionVectorIndex):
            rows = [q.descriptors for q in queries]
            result = index.search(rows, k=k)
            if top > 0:
                expanded = [index.expand(r, ids, top_k=top) for r, ids in zip(rows, result.ids)]
                result = index.search(expanded, k=k)
            return result
        slots = 2 if isinstance(index, GlobalLocalIndex) else 1
        for i, q in enumerate(queries):
            if len(q) != slots:
                raise ValueError(f"query {i} has {len(q)} descriptor rows; index {self.path} "
                                 f"holds {slots} per image")
        rows = np.stack([q.descriptors for q in queries]) if queries else \
            np.zeros((0, slots, index.dim), np.float32)
        row_shape = index.vectors.shape[1:]
        result = index.search(rows.reshape(-1, *row_shape), k=k)
        if top > 0:
            ids = result.ids[:, :top]
            neighbours = index.vectors[np.maximum(ids, 0)].reshape(*ids.shape, slots, index.dim)
            expanded = np.stack([expand_queries(rows[:, s], neighbours[:, :, s], ids >= 0)
                                 for s in range(slots)], axis=1)
            result = index.search(expanded.reshape(-1, *row_shape), k=k)
        return result

    def localize_rerank(self, queries: Sequence[Query], result: SearchResult, *,
                        workers: int = 1) -> SearchResult:
        """AML: localize each query in the maps of its top ``search.aml_rerank`` and re-rank them.

        Each localized window is described like a whole image (MAC / R-MAC / GeM of that
        part of the map); with ``search.query_expansion = k`` the query is then averaged
        with the k best localized regions and re-scores them.  The rest keeps its order.
        Each database map is read once for all ``queries``; ``workers`` threads localize
        that many database images at once (the result does not depend on it).
        """
        search = self.config.search
        if not self.uses_aml:
            return result
        if any(q.activation_map is None for q in queries):
            raise ValueError("AML re-ranking needs the queries' activation maps (Searcher.query)")
        if self._maps is None:
            self._maps = FeatureStore.open(self.path / MAPS)
        describer = self.extractor.describer
        maps = [q.activation_map for q in queries]
        vectors = np.stack([q.features.descriptors[0] for q in queries])
        reranked, windows, regions = aml_rerank(
            result, np.stack([m.max(axis=(0, 1)) for m in maps]), _StoredMaps(self._maps, self.names),
            query_vectors=vectors, query_aspect_ratios=[m.shape[1] / m.shape[0] for m in maps],
            describe_region=lambda crop: describer.describe_maps({"map": [crop]}),
            top_n=search.aml_rerank, levels=search.aml_levels, workers=workers)
        if search.query_expansion > 0:
            top = search.query_expansion
            expanded = expand_queries(vectors, regions[:, :top], windows[:, :top, 0] >= 0)
            reranked = rescore_head(reranked, expanded, regions, windows[:, :, 0] >= 0)
        return reranked

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
        for store in (self._store, self._maps):
            if store is not None:
                store.close()
        self._store = self._maps = None
        if hasattr(self.index, "close"):
            self.index.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
