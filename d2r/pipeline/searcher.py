"""An opened index directory that answers queries (used by ``python -m d2r.query``).

A :class:`Searcher` reads ``index.json`` once and opens the generation it names
(again with the new ``index.json`` when a writer replaced that generation meanwhile:
:func:`~d2r.index.layout.open_current`), refuses an index whose codebook or
format does not match its record, extracts query features with the extractor
the index was built with (refusing a different one), and hands searching and
re-ranking to the index's retrieval method (:mod:`d2r.methods`).  It serves the
method what it needs at query time: the database features (held in memory
after their first use) and the stored activation maps.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from d2r.encoding.codebook import open_codebook
from d2r.index.quantizer import attach_graph
from d2r.config import (
    Config,
    ConfigError,
    diff_configs,
    from_dict,
    merge_values,
    parse_override,
    read_yaml,
    to_dict,
    upgrade_record,
)
from d2r.extras import require
from d2r.features.registry import comparable_extractor_config, make_extractor
from d2r.index.layout import (
    FEATURES,
    MANIFEST,
    MAPS,
    IndexMismatchError,
    inside,
    is_segmented,
    open_current,
    search_dir,
    segments,
)
from d2r.index.registry import index_class, sharded_index_class
from d2r.index.segmented import SegmentedIndex
from d2r.io.feature_store import FeatureStore
from d2r.io.images import EncodedImage, load_image_with_info
from d2r.methods import validate
from d2r.methods.base import Query
from d2r.pipeline.extraction import image_features, image_features_and_map
from d2r.pipeline.sources import locate
from d2r.types import ActivationMap, SearchResult

__all__ = ["IndexMismatchError", "QUERY_TIME_KEYS", "Query", "Searcher"]

logger = logging.getLogger(__name__)

QUERY_TIME_KEYS = (
    "search.", "verification.", "aggregation.alpha", "aggregation.tau",
    "aggregation.num_assignments_query", "aggregation.pooling",
    "aggregation.database_normalization",
)
"""Config keys that may differ from the index's at query time; everything else is fixed."""


class _StoredMaps:
    """Database activation maps by image id ((H', W', C) float32), read on access."""

    def __init__(self, searcher: "Searcher") -> None:
        self.searcher = searcher

    def __len__(self) -> int:
        return len(self.searcher.names)

    def __getitem__(self, image_id: int):
        return self.searcher._stored(MAPS, ActivationMap, image_id).values


class Searcher:
    """Query an index built by :func:`d2r.pipeline.build.build_index`.

    Args:
        path: the index directory.
        files: YAML files of query-time settings, applied before ``overrides``.
        overrides: ``"a.b=c"`` strings changing query-time settings
            (:data:`QUERY_TIME_KEYS`); other keys are refused.
        mmap: memory-map the index arrays.
        shards: search this sharded directory (``shards.json``, one Ray actor per shard)
            instead of ``INDEX/search``; by default an index built with shards and no
            ``search/`` is searched through its ``INDEX/shards``.
        shard_options: keyword arguments of :class:`d2r.distributed.shards.ShardedIndex`
            (``address``, ``num_cpus_per_shard``, ...).
    """

    def __init__(self, path: str | os.PathLike, *, files: Sequence[str | os.PathLike] = (),
                 overrides: Sequence[str] = (),
                 mmap: bool = True, shards: Optional[str | os.PathLike] = None,
                 shard_options: Optional[dict] = None) -> None:
        self.path = Path(path)
        open_current(self.path, lambda manifest: self._open(
            manifest, files, overrides, mmap, shards, shard_options or {}))
        self.names: tuple[str, ...] = tuple(self.index.names)
        self._extractor = None
        self._stores: dict[tuple[str, str], FeatureStore] = {}
        self._store_lock = threading.Lock()
        self._db_features: dict[int, Any] = {}
        self._ids: Optional[dict[str, int]] = None
        if self.method.uses_maps and not (self.path / MAPS).is_dir():
            raise ConfigError(f"search.aml_rerank needs the database activation maps, but index "
                              f"{self.path} was built without them (features.cnn.store_maps=false)")

    def _open(self, manifest: dict[str, Any], files: Sequence[str | os.PathLike],
              overrides: Sequence[str], mmap: bool, shards: Optional[str | os.PathLike],
              shard_options: dict) -> None:
        """Open the generation ``manifest`` (one reading of ``index.json``) names: its
        config, codebook and search structure."""
        self.manifest = manifest
        self._segments = segments(manifest)
        self.config: Config = self._query_config(files, overrides)
        self.method = validate(self.config)
        self.codebook = self._load_codebook(manifest["codebook"])
        self.index = self._open_index(shards, mmap, shard_options)

    def _query_config(self, files: Sequence[str | os.PathLike], overrides: Sequence[str]) -> Config:
        """The index's recorded config with query-time ``files`` and ``overrides`` on top."""
        built = upgrade_record(self.manifest["config"])
        values = built
        for file in files:
            values = merge_values(values, read_yaml(Path(file)))
        for text in overrides:
            values = merge_values(values, parse_override(text))
        config = from_dict(values)
        fixed = [d for d in diff_configs(built, to_dict(config))
                 if not d.startswith(QUERY_TIME_KEYS)]
        if fixed:
            raise ConfigError(f"index {self.path} was built with other values; these cannot "
                              f"change at query time: {'; '.join(fixed)}")
        return config

    def configured(self, overrides: Sequence[str]) -> "Searcher":
        """This searcher with other query-time settings (``"a.b=c"`` on the index's own),
        sharing its opened index, stores and caches (do not close both)."""
        view = copy.copy(self)
        view.config = self._query_config((), overrides)
        view.method = validate(view.config)
        return view

    def _open_index(self, shards: Optional[str | os.PathLike], mmap: bool, shard_options: dict):
        """``INDEX/search``, or the sharded index (Ray actors) at ``shards`` / ``INDEX/shards``."""
        kind = self.manifest["kind"]
        record = self.manifest.get("shards")
        location = search_dir(self.path, self.manifest)
        if shards is None and record and not location.is_dir():
            shards = inside(self.path, record["path"], "shards.path")
        if shards is None and is_segmented(self.manifest):
            return self._open_segments(mmap)
        if shards is None:
            index = self._load_structure(location, mmap)
            self._check_binding(index, location)
            return index
        if self.codebook is None:
            raise IndexMismatchError(f"sharded search serves codebook indexes (local features); "
                                     f"index {self.path} holds CNN descriptors")
        require("ray", "sharded search (--shards, an index built with --ray-shards)")
        index = sharded_index_class("ray")(shards, mmap=mmap, **shard_options)
        if index.kind != kind:
            index.close()
            raise IndexMismatchError(f"{shards} holds a {index.kind} index, {self.path} was "
                                     f"built as {kind}")
        return index

    def _load_structure(self, location: Path, mmap: bool):
        if not location.is_dir():
            raise IndexMismatchError(f"index {self.path}: its search structure {location} "
                                     f"is missing; rebuild the index")
        return index_class(self.manifest["kind"]).load(location, mmap=mmap)

    def _open_segments(self, mmap: bool) -> SegmentedIndex:
        """The segments of an updated index, each checked against ``index.json``."""
        deleted = self.manifest.get("deleted", {})
        parts, gone = [], []
        for segment in self._segments:
            location = inside(self.path, segment["search"], "a segment")
            index = self._load_structure(location, mmap)
            self._check_binding(index, location, segment=True)
            parts.append(index)
            gone.append(deleted.get(segment["search"], []))
        try:
            index = SegmentedIndex(parts, gone)
        except ValueError as exc:
            raise IndexMismatchError(f"{self.path / MANIFEST}: {exc}; rebuild the index") from None
        if index.num_live != self.manifest.get("num_images"):
            raise IndexMismatchError(
                f"{self.path / MANIFEST} records {self.manifest.get('num_images')} images, its "
                f"segments hold {index.num_live}; rebuild the index")
        return index

    _UNBOUND_KEYS = ("seconds", "items_per_image", "shards", "data", "images_roots", "updated")
    """``index.json`` keys written after the search structure (not in its manifest)."""

    _SEGMENT_KEYS = ("search", "segments", "deleted", "num_images", "num_skipped",
                     "num_featureless", "images_root")
    """Keys a segment's record and an updated ``index.json`` may differ in."""

    def _check_binding(self, index, location: Path, *, segment: bool = False) -> None:
        """Refuse an ``index.json`` that does not describe the structure at ``location``:
        both record the same build (config, codebook, features, counts; for a
        ``segment`` of an updated index, all but its counts and location)."""
        ignored = self._UNBOUND_KEYS + (self._SEGMENT_KEYS if segment else ())

        def comparable(record: dict) -> dict:  # keys added since an older d2r filled in
            out = {k: v for k, v in record.items() if k not in ignored}
            out["config"] = upgrade_record(out.get("config", {}))
            return out

        recorded, expected = comparable(index.config), comparable(self.manifest)
        if recorded != expected or (
                not segment and len(index) != self.manifest.get("num_images")):
            keys = sorted(k for k in set(recorded) | set(expected)
                          if recorded.get(k) != expected.get(k))
            details = diff_configs(expected.get("config", {}), recorded.get("config", {}))
            raise IndexMismatchError(
                f"{self.path / MANIFEST} and {location / 'manifest.json'} disagree "
                f"({'; '.join(details) or ', '.join(keys) or 'image count'}): the index was "
                f"edited or mixed from two builds; rebuild it")

    def _load_codebook(self, record: Optional[dict]):
        """The index's codebook, checked against its recorded hash, with its stored quantizer
        graph attached (None without a codebook)."""
        if record is None:
            return None
        location = inside(self.path, record["path"], "codebook.path")
        if not location.exists() and not location.with_name(location.name + ".index").exists():
            raise IndexMismatchError(f"codebook {location} of index {self.path} is missing; "
                                     f"rebuild the index")
        codebook = open_codebook(location)
        if codebook.sha256 != record["sha256"]:
            raise IndexMismatchError(f"codebook {location} is not the one index {self.path} was "
                                     f"built with (sha256 {codebook.sha256[:12]} != "
                                     f"{record['sha256'][:12]})")
        if record.get("quantizer"):
            attach_graph(codebook, record["quantizer"], self.path)
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

    def share_extractor(self, other: "Searcher") -> None:
        """Use ``other``'s built extractor (a model loaded once), which must be the one this
        index records (the caller compared ``manifest["features"]["extractor"]``)."""
        self._extractor = other.extractor

    def image_features(self, image_path: str | os.PathLike | EncodedImage,
                       box: Optional[Sequence[float]] = None, *, rotation: int = 0):
        """Features of an image file, turned ``rotation`` degrees clockwise (a multiple of
        90), then cropped to ``box`` (x1, y1, x2, y2 pixels of the turned image)."""
        return self.query(image_path, box, rotation=rotation).features

    def query(self, image_path: str | os.PathLike | EncodedImage,
              box: Optional[Sequence[float]] = None, *,
              rotation: int = 0) -> Query:
        """A :class:`Query` of an image file (turned and cropped as in :meth:`image_features`),
        with the activation map when the method uses maps."""
        images = self.config.images
        loaded = load_image_with_info(image_path, max_side=images.max_side,
                                      max_pixels=images.max_pixels).rotated(rotation)
        if not self.method.uses_maps:
            return Query(image_features(self.extractor, loaded, box=box))
        return Query(*image_features_and_map(self.extractor, loaded, box=box))

    def search(self, queries: Sequence[Any], *, k: Optional[int] = None) -> SearchResult:
        """Top-``k`` (default ``search.top_k``) database images per query features, best first."""
        k = self.config.search.top_k if k is None else k
        return self.method.search(self.index, queries, self.codebook, k=k)

    def rerank(self, queries: Sequence[Query], result: SearchResult, *,
               workers: int = 1) -> tuple[SearchResult, Optional[list]]:
        """The method's re-ranking of the head of ``result`` (spatial verification, AML, or
        none) and its per-query details (spatial verification: the
        :class:`~d2r.spatial.reranking.RerankResult` of each query; else None)."""
        return self.method.rerank(self, queries, result, workers=workers)

    def database_features(self, image_id: int):
        """Whole-image features of database image ``image_id``, cached in memory."""
        feats = self._db_features.get(image_id)
        if feats is None:
            feats = self._db_features[image_id] = self._stored(
                FEATURES, self.method.input_type, image_id)
        return feats

    def _stored(self, part: str, value_type: type, image_id: int):
        """The stored ``part`` (``features`` or ``maps``) of database image ``image_id``."""
        store, _ = self.stored_at(part, value_type, image_id)
        return store.get(self.names[image_id])

    def stored_at(self, part: str, value_type: type, image_id: int) -> tuple[FeatureStore, Path]:
        """The store holding ``part`` (``features`` or ``maps``) of database image
        ``image_id``, and its data directory (with ``boxes/``): the first of the image's
        segment's data directories, newest first, that holds it."""
        name = self.names[image_id]
        for relative in self.segment_record(image_id)["data"]:
            store = self._open_store(relative, part, value_type)
            if name in store:
                return store, inside(self.path, relative, "a data directory")
        raise IndexMismatchError(f"the {part} of indexed image {name!r} are missing from index "
                                 f"{self.path}: its files were removed or damaged; rebuild it")

    def _open_store(self, relative: str, part: str, value_type: type) -> FeatureStore:
        """The feature store ``part`` of data directory ``relative`` (opened once, by one
        thread); the build's own store is refused unless it holds every image of an
        unsegmented index."""
        key = (relative, part)
        with self._store_lock:
            return self._stores.get(key) or self._open_new_store(key, value_type)

    def _open_new_store(self, key: tuple[str, str], value_type: type) -> FeatureStore:
        relative, part = key
        path = inside(self.path, relative, "a data directory") / part
        store = FeatureStore.open(path, value_type=value_type)
        if part == FEATURES and not is_segmented(self.manifest) \
                and self._segments[0]["data"] == ["."]:
            missing = [name for name in self.names if name not in store]
            if missing:
                store.close()
                raise IndexMismatchError(
                    f"feature store {path} lacks {len(missing)} indexed images (e.g. "
                    f"{missing[0]!r}): its files were removed or damaged; rebuild the index")
        self._stores[key] = store
        return store

    def database_maps(self) -> _StoredMaps:
        """The stored activation maps by image id (a lazy sequence of (H', W', C) arrays)."""
        return _StoredMaps(self)

    def segment_record(self, image_id: int) -> dict[str, Any]:
        """The :func:`~d2r.index.layout.segments` record holding database image ``image_id``."""
        position = self.index.segment_of(image_id)[0] \
            if isinstance(self.index, SegmentedIndex) else 0
        return self._segments[position]

    def live_ids(self) -> dict[str, int]:
        """The searchable database images: name -> id (deleted entries left out)."""
        if self._ids is None:
            alive = getattr(self.index, "alive", None)
            self._ids = {n: i for i, n in enumerate(self.names) if alive is None or alive[i]}
        return self._ids

    def image_roots(self, image_id: int) -> list[str]:
        """The folders database image ``image_id`` may have been indexed from, most likely
        first (none for a benchmark's images)."""
        segment = self.segment_record(image_id)
        roots = [segment["images_root"]] if "images_root" in segment else []
        if not isinstance(self.index, SegmentedIndex):
            roots = self.manifest.get("images_roots", roots)
        return list(roots)

    def image_file(self, name: str) -> Optional[Path]:
        """The file searchable database image ``name`` was indexed from: the first of its
        possible locations that exists, else the most likely one (it may have moved);
        None for an unknown name or a benchmark's image."""
        image_id = self.live_ids().get(name)
        paths = [locate(root, name) for root in
                 ([] if image_id is None else self.image_roots(image_id))]
        return next((path for path in paths if path.is_file()), paths[0] if paths else None)

    @property
    def num_images(self) -> int:
        """Searchable images (deleted ones not counted)."""
        return int(self.manifest["num_images"])

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores = {}
        if hasattr(self.index, "close"):
            self.index.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
