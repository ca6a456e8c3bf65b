"""Change a built index without rebuilding it: add images, remove images, compact.

``add`` extracts the new images with the index's recorded extractor, encodes them with
its codebook and writes them as a new *segment* (a standalone search structure of the
index's kind) in a new generation directory ``gen-<id>/`` that also holds their
``features/``, ``boxes/`` and ``maps/``.  ``remove`` records the names as deleted
(tombstones in ``index.json``).  ``compact`` re-encodes every live image from its
stored features into one segment, in name order, and drops the old segments' search
structures and the tombstones; the stored features stay (a rebuild reclaims them).

Search over the segments (:class:`~d2r.index.segmented.SegmentedIndex`) returns what a
rebuild with the same codebook returns: the same names in the same order and the
same scores, since no kernel of d2r uses collection statistics.

Every update is one atomic generation: it writes only new files, then replaces
``index.json`` (one fsync'd rename, the commit point), then removes what the new
manifest no longer uses.  A kill before the rename leaves the index as it was (the
next writer removes the unused directory), after it the updated index.  A reader
that opened the index keeps its view: nothing it reads is modified, and the search
arrays it mapped stay readable after they are unlinked.  One writer at a time
(:func:`~d2r.index.layout.writer_lock`).  A failed ``add`` or ``compact`` removes the
generation it started, and both check first that the device has room for it.

Featureless images (blank, uniform, tiny) are never added.  One image alone
(``d2r add`` of a single file, the HTTP API's upload) is refused like a featureless
query (:class:`FeaturelessImageError`, nothing committed); in a batch they are left
out and listed, as unreadable files are (``gen-*/features/skipped.tsv``,
``summary.featureless``), so one blank frame does not cost the other photos.  A
build indexes them instead (listed in its ``skipped.tsv``): it has no earlier entry
to lose and keeps every image of a benchmark's database in the ranking, whereas an
added featureless image could never be found and, with ``replace``, would silently
take its original out of search.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from d2r.errors import DiskFullError, InputError
from d2r.index.layout import (
    BOXES,
    FEATURES,
    MANIFEST,
    MAPS,
    SEARCH,
    inside,
    is_segmented,
    new_generation,
    read_manifest,
    retire_generations,
    segments,
    writer_lock,
)
from d2r.io.atomic import atomic_write_json
from d2r.io.crash import crash_point
from d2r.io.feature_store import FeatureStore
from d2r.pipeline.build import BATCH, encode_batches
from d2r.pipeline.extraction import extract_to_store, image_regions
from d2r.pipeline.searcher import Searcher
from d2r.progress import progress
from d2r.pipeline.sources import ImageSource

__all__ = ["UpdateSummary", "UnknownImagesError", "FeaturelessImageError", "add_images",
           "remove_images", "compact_index", "live_names"]

logger = logging.getLogger(__name__)

_NOT_IN_SEGMENTS = ("segments", "deleted", "data", "seconds", "items_per_image", "shards",
                    "updated", "images_roots")
"""``index.json`` keys a new segment's own record leaves out."""

SPACE_MARGIN = 1 << 20
"""Bytes an update needs besides its arrays (manifests, HDF5 headers)."""


@dataclass
class UpdateSummary:
    """What an update did: names added (replacing ``replaced``), removed, left out
    (``skipped``: unreadable; ``featureless``: no features)."""

    index: Path
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    featureless: list[str] = field(default_factory=list)
    num_images: int = 0
    seconds: float = 0.0


def live_names(searcher: Searcher) -> dict[str, str]:
    """The searchable images of an opened index: name -> the search path of its segment."""
    return {name: searcher.segment_record(i)["search"]
            for name, i in searcher.live_ids().items()}


class UnknownImagesError(InputError):
    """Names to remove that the index does not hold (searchable)."""


class FeaturelessImageError(InputError):
    """An image to add in which the extractor found no features: no query could find it."""


def _bytes_under(path: Path) -> int:
    """The size of the files below ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _check_space(out: Path, need: float, what: str) -> None:
    """Refuse (:class:`~d2r.errors.DiskFullError`) when the device of ``out`` has less than
    ``need`` bytes free for ``what``."""
    free = shutil.disk_usage(out).free
    if free < need:
        raise DiskFullError(out, f"{what} needs about {need / 2**20:.1f} MiB, "
                                 f"{free / 2**20:.1f} MiB free; the index is unchanged")


def _search_bytes(out: Path, manifest: dict) -> int:
    """The size of the search structures of every segment of an index."""
    return sum(_bytes_under(inside(out, segment["search"], "search"))
               for segment in segments(manifest))


def _bytes_per_image(out: Path, manifest: dict, count: int) -> float:
    """What one indexed image takes on disk: its stored features and maps and its share
    of the search structures, averaged over the ``count`` images the index stores."""
    data = {relative for segment in segments(manifest) for relative in segment["data"]}
    stored = sum(_bytes_under(inside(out, relative, "a data directory") / part)
                 for relative in data for part in (FEATURES, MAPS))
    return (stored + _search_bytes(out, manifest)) / max(1, count)


@contextlib.contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    """Remove ``path`` (a new generation) when the block fails: it is never committed."""
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _check_unsharded(out: Path) -> None:
    """Refuse an index built with shards (its search runs on Ray actors)."""
    manifest = read_manifest(out)
    if manifest.get("shards") and not inside(out, manifest.get("search", SEARCH),
                                             "search").is_dir():
        raise InputError(f"index {out} is sharded (built with --ray-shards); a sharded index "
                         f"cannot be updated: rebuild it with the new images")


def _commit(out: Path, manifest: dict) -> None:
    """Make ``manifest`` current (the commit point), then remove what it no longer uses."""
    manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    atomic_write_json(out / MANIFEST, manifest, durable=True)
    crash_point("committed")
    retire_generations(out, manifest)


def add_images(index_dir: str | os.PathLike, source: ImageSource, *, replace: bool = False,
               show_progress: Optional[bool] = None) -> UpdateSummary:
    """Add the images of ``source`` to the index at ``index_dir`` as a new segment.

    Names already searchable are refused (:class:`~d2r.errors.InputError` naming them),
    or with ``replace`` the old entries are deleted in the same generation.  Unreadable
    and featureless images are left out (``summary.skipped``, ``summary.featureless``);
    a single featureless image is refused (:class:`FeaturelessImageError`), and so is a
    source with nothing to add.  Refused up front (:class:`~d2r.errors.DiskFullError`)
    when the device has clearly too little room: one and a half times what the index's
    images take on average, per image added.
    """
    out = Path(index_dir)
    start = time.perf_counter()
    _check_unsharded(out)
    with writer_lock(out):
        with Searcher(out) as searcher:
            live = live_names(searcher)
            clash = [name for name in source.names if name in live]
            if clash and not replace:
                raise InputError(f"{len(clash)} of the {len(source)} images are already in index "
                                 f"{out} (e.g. {clash[0]!r}); pass --replace to replace them")
            manifest = dict(searcher.manifest)
            per_image = _bytes_per_image(out, manifest, len(searcher.names))
            _check_space(out, 1.5 * per_image * len(source) + SPACE_MARGIN,
                         f"adding {len(source)} images")
            generation = new_generation(out)
            data = out / generation
            with _removed_on_failure(data):
                index, names, summary = _encode_new(searcher, source, data, live, show_progress)
                search = f"{generation}/{SEARCH}"
                segment = {"search": search, "data": [generation], "num_images": len(names)}
                if source.root is not None:
                    segment["images_root"] = str(source.root)
                record = {k: v for k, v in manifest.items() if k not in _NOT_IN_SEGMENTS}
                index.save(out / search, config={**record, **segment,
                                                 "num_skipped": len(summary.skipped)})
        crash_point("search-saved")
        replaced = [name for name in names if name in live]
        deleted = {path: list(gone) for path, gone in manifest.get("deleted", {}).items()}
        for name in replaced:
            deleted.setdefault(live[name], []).append(name)
        manifest["segments"] = [*manifest.get("segments", []), segment]
        manifest["deleted"] = {path: sorted(gone) for path, gone in deleted.items() if gone}
        manifest["num_images"] = len(live) - len(replaced) + len(names)
        _commit(out, manifest)
    logger.info("added %d images to %s (%d replaced, %d skipped, %d without features)",
                len(names), out, len(replaced), len(summary.skipped), len(summary.featureless))
    return UpdateSummary(out, added=names, replaced=replaced,
                         skipped=[name for name, _ in summary.skipped],
                         featureless=list(summary.featureless),
                         num_images=manifest["num_images"],
                         seconds=time.perf_counter() - start)


def _encode_new(searcher: Searcher, source: ImageSource, data: Path, live: dict[str, str],
                show_progress: Optional[bool]):
    """Extract ``source`` into the new generation ``data`` (featureless images left out)
    and encode it: the new segment's index, the names it holds and the extraction summary."""
    config, method, codebook = searcher.config, searcher.method, searcher.codebook
    extractor = searcher.extractor
    summary = extract_to_store(config, source, data / FEATURES, boxes_dir=data / BOXES,
                               extractor=extractor, show_progress=show_progress,
                               maps_path=data / MAPS if method.keeps_maps else None,
                               keep_featureless=False)
    crash_point("extracted")
    if len(source) == 1 and summary.featureless:
        name = summary.featureless[0]
        kept = "; the indexed image of that name is kept" if name in live else ""
        raise FeaturelessImageError(f"{name}: no local features in the image (a blank or "
                                    f"uniform image); no query could find it, not added{kept}")
    with FeatureStore.open(data / FEATURES, value_type=extractor.output_type) as store:
        names = [name for name in source.names if name in store]
        if not names:
            name, reason = [*summary.skipped, *((name, summary.featureless_reason)
                                                for name in summary.featureless)][0]
            raise InputError(f"none of the {len(source)} images could be added (e.g. {name}: "
                             f"{reason}); nothing was added")
        index = method.new_index(codebook, store.dim)
        for batch, entries in encode_batches(method, config, codebook, store, names,
                                             data / BOXES, featureless=[],
                                             show_progress=show_progress):
            method.add(index, entries, batch)
    return index, names, summary


def remove_images(index_dir: str | os.PathLike, names: Iterable[str]) -> UpdateSummary:
    """Delete ``names`` from the index at ``index_dir``: they are never returned again.

    A name that is not searchable in the index is refused (:class:`UnknownImagesError` naming it)
    and nothing is removed.
    """
    out = Path(index_dir)
    start = time.perf_counter()
    names = list(dict.fromkeys(str(name) for name in names))
    if not names:
        raise InputError("no image names to remove")
    _check_unsharded(out)
    with writer_lock(out):
        with Searcher(out) as searcher:
            live = live_names(searcher)
            manifest = dict(searcher.manifest)
        unknown = [name for name in names if name not in live]
        if unknown:
            raise UnknownImagesError(f"{len(unknown)} of the {len(names)} names are not in index "
                                     f"{out} (e.g. {unknown[0]!r}); nothing was removed")
        deleted = {path: list(gone) for path, gone in manifest.get("deleted", {}).items()}
        for name in names:
            deleted.setdefault(live[name], []).append(name)
        manifest["deleted"] = {path: sorted(gone) for path, gone in deleted.items()}
        manifest["num_images"] = len(live) - len(names)
        _commit(out, manifest)
    logger.info("removed %d images from %s", len(names), out)
    return UpdateSummary(out, removed=names, num_images=manifest["num_images"],
                         seconds=time.perf_counter() - start)


def compact_index(index_dir: str | os.PathLike, *,
                  show_progress: Optional[bool] = None) -> UpdateSummary:
    """Merge the segments of the index at ``index_dir`` into one, without deleted images.

    The live images are re-encoded from their stored features, in name order (the order
    a rebuild from a folder gives); an index without segments or deletions is left as it is.
    Refused up front (:class:`~d2r.errors.DiskFullError`) when the device has less room
    than the current search structures take (the compacted one is no larger).
    """
    out = Path(index_dir)
    start = time.perf_counter()
    _check_unsharded(out)
    with writer_lock(out):
        with Searcher(out) as searcher:
            manifest = dict(searcher.manifest)
            if not is_segmented(manifest):
                return UpdateSummary(out, num_images=manifest["num_images"])
            live = live_names(searcher)
            data_of = {segment["search"]: segment["data"] for segment in segments(manifest)}
            _check_space(out, _search_bytes(out, manifest) + SPACE_MARGIN, "compacting")
            generation = new_generation(out)
            search = f"{generation}/{SEARCH}"
            with _removed_on_failure(out / generation):
                index = _encode_live(searcher, sorted(live), show_progress)
                record = {k: v for k, v in manifest.items() if k not in _NOT_IN_SEGMENTS}
                record.update(search=search, num_images=len(live))
                index.save(out / search, config=record)
        crash_point("search-saved")
        old_searches = list(data_of)
        roots = [segment.get("images_root") for segment in reversed(segments(manifest))]
        new = {k: v for k, v in manifest.items() if k not in ("segments", "deleted")}
        new.update(search=search, num_images=len(live),
                   data=list(dict.fromkeys(d for path in reversed(old_searches)
                                           for d in data_of[path])))
        if any(roots):
            new["images_roots"] = list(dict.fromkeys(root for root in roots if root))
        _commit(out, new)
        for path in old_searches:  # search structures inside data directories still kept
            location = inside(out, path, "search")
            if location.is_dir() and location.parent.name in new["data"]:
                shutil.rmtree(location)
    logger.info("compacted %s: %d images in one segment", out, len(live))
    return UpdateSummary(out, num_images=len(live), seconds=time.perf_counter() - start)


def _encode_live(searcher: Searcher, names: list[str], show_progress: Optional[bool]):
    """A new index of the live images ``names``, encoded in this order from their stored
    features (:meth:`~d2r.pipeline.searcher.Searcher.stored_at`)."""
    method, config, codebook = searcher.method, searcher.config, searcher.codebook
    ids = searcher.live_ids()
    index = None
    with progress("re-encode", len(names), show=show_progress) as bar:
        for lo in range(0, len(names), BATCH):
            batch, entries = names[lo:lo + BATCH], []
            for name in batch:
                store, data = searcher.stored_at(FEATURES, method.input_type, ids[name])
                entries.append(method.encode_database(
                    image_regions(config, store, data / BOXES, name, store.get(name)), codebook))
                bar.update()
            if index is None:
                index = method.new_index(codebook, store.dim)
            method.add(index, entries, batch)
    if index is None:  # every image removed: an empty index of the same dimension
        store, _ = searcher.stored_at(FEATURES, method.input_type, 0)
        index = method.new_index(codebook, store.dim)
    return index
