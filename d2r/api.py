"""The public Python API: build or open an index directory, search it, change it, check it.

:func:`build_index` and :func:`open_index` return an :class:`Index`; its
:meth:`~Index.search` answers one image with :class:`Hit` values, best first.  Every
call goes through the same library functions as the commands (``d2r build-index``,
``query``, ``add``, ``remove``, ``compact``, ``check``), so what ``d2r query --image X``
prints equals ``index.search(X)``; errors are the one-line :mod:`d2r.errors` types the
commands print.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from d2r.config import Config, load_config
from d2r.datasets.benchmarks import load_benchmark
from d2r.errors import InputError
from d2r.io.image_inputs import ImageInput, image_file, image_source, label
from d2r.io.images import DEFAULT_EXTENSIONS
from d2r.evaluation.tables import MetricTable, load_ranks
from d2r.pipeline.build import build_index as _build
from d2r.pipeline.run import run_dataset, run_images, search_depth
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.update import UpdateSummary, add_images, compact_index, remove_images
from d2r.pipeline.check import check_index
from d2r.pipeline.sources import ImageSource

__all__ = ["DEFAULT_TOP", "ClosedIndexError", "Hit", "Index", "MetricTable", "Settings",
           "build_index", "evaluate", "open_index"]

DEFAULT_TOP = 20
"""Hits :meth:`Index.search` (and ``d2r query --image``) returns unless told otherwise."""

Box = Sequence[float]
"""``(x1, y1, x2, y2)`` pixels of the query image (negative values allowed)."""

Settings = Union[Mapping[str, Any], Sequence[str]]
"""Config overrides: ``{"codebook.num_words": 64}``, or ``"key=value"`` strings as
``--set`` takes them."""


class ClosedIndexError(InputError):
    """An :class:`Index` used after :meth:`Index.close` (or its ``with`` block)."""


@dataclass(frozen=True)
class Hit:
    """One database image found for a query, best first.

    Attributes:
        name: the database image's name in the index (as ``d2r query`` prints it).
        score: its search score (float32 precision; after re-ranking not monotone).
        rank: 1-based position in the result list.
        inliers: RANSAC inliers when the image was spatially verified (the re-ranked head,
            ``verification.rerank`` > 0), else None.
        verified: whether re-ranking's decision (``verification.decision``) verified it
            as the same place or object (False when not re-ranked).
        verification_score: the pair's ``-log10 NFA`` (:mod:`d2r.spatial.score`) when
            re-ranked, else None.
        matches: (K, 4) float32 ``[xq, yq, xd, yd]`` inlier pairs in pixels of the original
            query and database images (rounded to 0.1 px) when re-ranked, else None.
        image_size: ``(W, H)`` of the database image the matches are in, when re-ranked.
    """

    name: str
    score: float
    rank: int
    inliers: Optional[int] = None
    verified: bool = False
    matches: Optional[np.ndarray] = None
    verification_score: Optional[float] = None
    image_size: Optional[tuple[int, int]] = None

    def row(self, *, matches: int = 0) -> dict[str, Any]:
        """``{"rank", "name", "score", "verified", "inliers"?, "verification_score"?}``: the
        row ``d2r query --format json`` prints (the last two for the re-ranked head).
        ``matches`` > 0 adds, for the re-ranked head, ``"matches"`` (at most that many inlier
        pairs, evenly picked) and ``"image_size"``: the row of the server's ``/search``."""
        row = {"rank": self.rank, "name": self.name, "score": self.score,
               "verified": self.verified}
        if self.inliers is None:
            return row
        row.update(inliers=self.inliers, verification_score=self.verification_score)
        if matches and self.matches is not None:
            pairs = self.matches
            if len(pairs) > matches:
                pairs = pairs[np.linspace(0, len(pairs) - 1, matches).astype(int)]
            row.update(matches=pairs.tolist(), image_size=list(self.image_size))
        return row


class Index:
    """An opened index directory (from :func:`open_index` or :func:`build_index`).

    ``search`` and ``search_many`` may run from several threads at once on one object;
    ``add``, ``remove`` and ``compact`` may run while searches do (one update at a time:
    another holding the index's writer lock raises
    :class:`~d2r.index.layout.WriterBusyError`); a search finishes on the generation it
    started with.  The object searches the generation it opened and the ones its own
    updates commit; :meth:`refresh` opens one another process committed.  ``close`` must
    not overlap a search.  Closed by ``close()`` or at the end of a ``with`` block.
    """

    def __init__(self, path: str | os.PathLike, *, settings: Settings = (),
                 config_files: Sequence[str | os.PathLike] = (),
                 shards: Optional[str | os.PathLike] = None,
                 shard_options: Optional[Mapping[str, Any]] = None) -> None:
        self.path = Path(path)
        self._open_args = {"files": tuple(config_files), "overrides": _overrides(settings),
                           "shards": shards, "shard_options": dict(shard_options or {})}
        self._lock = threading.Lock()
        self._searcher: Optional[Searcher] = Searcher(self.path, **self._open_args)
        self._extractor_ready = False

    # ------------------------------------------------------------------ reading

    @property
    def names(self) -> tuple[str, ...]:
        """The searchable images' names (removed ones left out), in index order."""
        return tuple(self._open().live_ids())

    def __len__(self) -> int:
        """How many images are searchable."""
        return self._open().num_images

    @property
    def settings(self) -> Config:
        """The resolved query-time config (a copy: the index's record and the overrides)."""
        return copy.deepcopy(self._open().config)

    def image_file(self, name: str) -> Optional[Path]:
        """The file searchable image ``name`` was indexed from (None: unknown, or a
        benchmark's image); it may have moved since."""
        return self._open().image_file(name)

    @property
    def kind(self) -> str:
        """The kind of the search structure (``inverted``, ``regional``, ``global`` ...)."""
        return self._open().manifest["kind"]

    def features(self, name: str) -> Any:
        """The stored whole-image features of searchable image ``name`` (a
        :class:`~d2r.types.LocalFeatures` or :class:`~d2r.types.GlobalDescriptors`)."""
        searcher = self._open()
        image_id = searcher.live_ids().get(name)
        if image_id is None:
            raise InputError(f"no image named {name!r} in index {self.path}")
        return searcher.database_features(image_id)

    def warm_up(self) -> None:
        """Build the extractor (loading its model, if any) now rather than at the first
        search."""
        self._ready()

    def refresh(self) -> None:
        """Open the generation committed since this object opened its own (another
        process's ``d2r add``, ``remove``, ``compact`` or rebuild).  Searches running
        meanwhile finish on the generation they started with; the extractor is kept when
        the new generation records the same one.  On failure the object keeps answering
        from the generation it had."""
        self._open()  # a closed index is refused before anything is opened
        searcher = Searcher(self.path, **self._open_args)
        with self._lock:
            old = self._open()
            same = searcher.manifest["features"]["extractor"] == \
                old.manifest["features"]["extractor"]
            if same and self._extractor_ready:
                searcher.share_extractor(old)
            self._searcher = searcher
            self._extractor_ready = same and self._extractor_ready

    def check(self) -> list[str]:
        """Check every file of the index (what ``d2r check`` does): one line per problem,
        empty when the index is sound."""
        self._open()
        return check_index(self.path)

    # ------------------------------------------------------------------ searching

    def search(self, image: ImageInput, *, box: Optional[Box] = None, top: int = DEFAULT_TOP,
               settings: Settings = (), label: Optional[str] = None,
               timing: Optional[dict] = None, workers: Optional[int] = None) -> list[Hit]:
        """The best ``top`` database images for ``image`` (0: every image), best first.

        ``image``: a path, a PIL image, an (H, W) / (H, W, 3) / (H, W, 4) uint8 or [0, 1]
        float array, bytes or a binary file object (decoded from memory).  ``box``:
        ``(x1, y1, x2, y2)`` pixels of the query image to search with.  ``settings``:
        query-time overrides for this call only (``{"verification.rerank": 0}``).
        ``label``: how error messages name the image (default: its path or kind).
        ``timing``: a dict that receives the seconds of each stage (``extract``,
        ``search``, ``rerank``).  ``workers``: threads verifying the re-ranked head
        (default: every core).  Raises :class:`~d2r.io.images.ImageError` (not an image)
        and :class:`~d2r.pipeline.run.FeaturelessQueryError` (no features).
        """
        return self.search_many([image], boxes=[box], top=top, settings=settings,
                                labels=None if label is None else [label], timing=timing,
                                workers=workers)[0]

    def search_many(self, images: Sequence[ImageInput], *,
                    boxes: Optional[Sequence[Optional[Box]]] = None, top: int = DEFAULT_TOP,
                    settings: Settings = (), labels: Optional[Sequence[str]] = None,
                    timing: Optional[dict] = None,
                    workers: Optional[int] = None) -> list[list[Hit]]:
        """:meth:`search` of each of ``images`` (with its entry of ``boxes`` and
        ``labels``): every image extracted, then one search and one re-ranking call for
        all."""
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0:
            raise InputError(f"top must be an integer >= 0, got {top!r}")
        images = list(images)
        boxes = [None] * len(images) if boxes is None else list(boxes)
        if len(boxes) != len(images):
            raise InputError(f"{len(boxes)} boxes for {len(images)} images")
        if not images:
            return []
        labels = [label(i) for i in images] if labels is None else list(labels)
        if len(labels) != len(images):
            raise InputError(f"{len(labels)} labels for {len(images)} images")
        searcher = self._ready()
        overrides = _overrides(settings)
        if overrides:
            searcher = searcher.configured(overrides)
        sources = [image_source(image, name) for image, name in zip(images, labels)]
        rows = run_images(searcher, sources, boxes,
                          k=search_depth(searcher, top), matches=True, labels=labels,
                          timing=timing, workers=workers)
        return [[self._hit(row) for row in ranked[:top or None]] for ranked in rows]

    @staticmethod
    def _hit(row: dict) -> Hit:
        matches = np.asarray(row["matches"], np.float32).reshape(-1, 4) \
            if "matches" in row else None
        size = tuple(row["image_size"]) if "image_size" in row else None
        return Hit(name=row["name"], score=row["score"], rank=row["rank"],
                   inliers=row.get("inliers"), verified=row["verified"], matches=matches,
                   verification_score=row.get("verification_score"), image_size=size)

    # ------------------------------------------------------------------ changing

    def add(self, images: str | os.PathLike | Sequence[ImageInput], *,
            names: Optional[Sequence[Optional[str]]] = None, replace: bool = False,
            kept_in: Optional[str | os.PathLike] = None,
            progress: Optional[bool] = None) -> UpdateSummary:
        """Add ``images`` as a new segment, what ``d2r add`` does.

        ``images``: a folder (every image below it, named by relative path, as
        :func:`build_index`), a text file listing one image path per line (``d2r add
        --image-list``), or a list of inputs :meth:`search` takes, where ``names[i]``
        (default: a path's file name; required for other inputs) names image ``i``.
        ``replace``: replace images of the same names.  ``kept_in``: the folder that
        will hold each added file as ``kept_in/NAME`` (:meth:`image_file` looks there;
        the server's ``uploads/``).  Unreadable images and, in a batch, images without
        features are left out and listed in the summary; one alone is refused.
        """
        self._open()
        if isinstance(images, (str, os.PathLike)):
            if names is not None or kept_in is not None:
                raise InputError("names and kept_in go with a list of images, not a folder "
                                 "or list file")
            return self._add(_source(images), replace, progress)
        images = list(images)
        names = [None] * len(images) if names is None else list(names)
        if len(names) != len(images):
            raise InputError(f"{len(names)} names for {len(images)} images")
        names = [_name(image, name, i, len(images)) for i, (image, name)
                 in enumerate(zip(images, names))]
        repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if repeated is not None:
            raise InputError(f"two of the images to add are named {repeated!r}")
        with _files(images) as paths:
            source = ImageSource(tuple(names), tuple(map(Path, paths)),
                                 root=None if kept_in is None else Path(kept_in).resolve())
            return self._add(source, replace, progress)

    def _add(self, source: ImageSource, replace: bool, progress: Optional[bool]) -> UpdateSummary:
        summary = add_images(self.path, source, replace=replace, show_progress=progress)
        self.refresh()
        return summary

    def remove(self, names: Sequence[str]) -> UpdateSummary:
        """Remove the images ``names`` (``d2r remove``): never returned again; a name the
        index does not hold is refused and nothing is removed."""
        self._open()
        summary = remove_images(self.path, [names] if isinstance(names, str) else names)
        self.refresh()
        return summary

    def compact(self, *, progress: Optional[bool] = None) -> UpdateSummary:
        """Merge the added segments and drop removed images (``d2r compact``); searches
        return the same hits before and after."""
        self._open()
        summary = compact_index(self.path, show_progress=progress)
        self.refresh()
        return summary

    # ------------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Close the index's files; later calls raise :class:`ClosedIndexError`."""
        with self._lock:
            searcher, self._searcher = self._searcher, None
        if searcher is not None:
            searcher.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._searcher is None else f"{len(self)} images"
        return f"<d2r.Index {self.path} ({state})>"

    def _open(self) -> Searcher:
        searcher = self._searcher
        if searcher is None:
            raise ClosedIndexError(f"index {self.path} is closed; open it again with "
                                   f"d2r.open_index")
        return searcher

    def _ready(self) -> Searcher:
        """The searcher, its extractor built once (by one thread) before the first query."""
        searcher = self._open()
        if not self._extractor_ready:
            with self._lock:
                searcher.extractor  # noqa: B018 (builds it, loading a model if any)
                self._extractor_ready = True
        return searcher


def open_index(path: str | os.PathLike, *, rerank: Optional[int] = None,
               settings: Settings = (), config_files: Sequence[str | os.PathLike] = (),
               shards: Optional[str | os.PathLike] = None,
               shard_options: Optional[Mapping[str, Any]] = None) -> Index:
    """Open the index directory ``path`` for searching.

    Query-time settings change the index's recorded config: ``rerank`` (spatially verify
    the top N; 0: off), ``settings`` (``{"search.top_k": 200}`` or ``"key=value"``
    strings; ``search.*``, ``verification.*`` and the query-side ``aggregation`` keys),
    applied after the YAML ``config_files``; other keys are refused (the index was built
    with them).  ``shards``, ``shard_options``: a sharded index's directory and
    :class:`d2r.distributed.ShardedIndex` options (``address``, ``num_cpus_per_shard``).
    """
    overrides = _overrides(settings)
    if rerank is not None:
        overrides.append(f"verification.rerank={json.dumps(rerank)}")
    return Index(path, settings=overrides, config_files=config_files, shards=shards,
                 shard_options=shard_options)


def build_index(images: str | os.PathLike | Sequence[str | os.PathLike],
                out: str | os.PathLike, *, preset: str = "rootsift-asmk-star",
                settings: Settings = (), config_files: Sequence[str | os.PathLike] = (),
                progress: Optional[bool] = None) -> Index:
    """Build an index of ``images`` into the directory ``out`` (``d2r build-index``) and
    open it.

    ``images``: a folder (every image below it, named by relative path) or a list of image
    files (named by file name).  The config is the ``preset`` with the YAML
    ``config_files`` and ``settings`` (``{"codebook.num_words": 64}`` or ``"key=value"``
    strings) on top.  ``progress``: show progress bars (default: on a terminal).  A
    killed build resumes when called again.
    """
    config = load_config(preset, files=config_files, overrides=_overrides(settings))
    _build(config, _source(images), out, show_progress=progress)
    return open_index(out)


def evaluate(dataset_dir: str | os.PathLike, ranks: Union[np.ndarray, str, os.PathLike, None] = None,
             *, index: Union[Index, str, os.PathLike, None] = None, benchmark: str = "auto",
             rotations: Optional[str | os.PathLike] = None, out: Optional[str | os.PathLike] = None,
             report: bool = False, distractors: Optional[str | os.PathLike] = None,
             distractor_dir: Optional[str | os.PathLike] = None,
             progress: Optional[bool] = None) -> MetricTable:
    """The metrics of a benchmark: of ``ranks``, or of a run of every query on ``index``.

    ``ranks``: (Q, N) int database indices of the dataset, best first (-1 pads), or a file
    ``d2r evaluate --ranks`` reads.  ``index``: an :class:`Index` or its directory; its
    run is what ``d2r query --dataset-dir`` does (queries cropped to their boxes,
    re-ranked as the index's settings say) and writes its files to ``out`` when given
    (with ``report``, also the visual report ``out/report/index.html``; with the R1M
    ``distractors`` list and ``distractor_dir``, the database is the dataset + R1M).
    ``benchmark`` and ``rotations`` select and read the dataset as
    :func:`d2r.datasets.benchmarks.load_benchmark` does.
    """
    if (ranks is None) == (index is None):
        raise InputError("evaluate needs either ranks or index, not both")
    if ranks is not None:
        dataset = load_benchmark(dataset_dir, kind=benchmark, rotations=rotations)
        table = load_ranks(ranks) if isinstance(ranks, (str, os.PathLike)) else np.asarray(ranks)
        if table.ndim != 2 or table.shape[0] != dataset.num_queries:
            raise InputError(f"ranks of shape {table.shape}: need one row per query of "
                             f"{dataset.name} ({dataset.num_queries})")
        return MetricTable.from_dict(dataset.evaluate(table))
    opened = index if isinstance(index, Index) else open_index(index)
    try:
        with contextlib.ExitStack() as stack:
            folder = out if out is not None else stack.enter_context(tempfile.TemporaryDirectory(
                prefix="d2r-evaluate-"))
            return MetricTable.from_dict(run_dataset(
                opened._open(), dataset_dir, folder, benchmark=benchmark, rotations=rotations,
                report=report, distractor_list=distractors, distractor_root=distractor_dir,
                show_progress=progress))
    finally:
        if opened is not index:
            opened.close()


def _source(images: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageSource:
    """The images a folder, a list file or a list of image files names."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_file() and path.suffix.lower() in DEFAULT_EXTENSIONS:
            raise InputError(f"{path} is one image: give a list ([{str(path)!r}]), a folder "
                             f"or a text file listing images")
        return ImageSource.from_list(path) if path.is_file() else ImageSource.from_directory(path)
    paths = [Path(path) for path in images]
    if not paths:
        raise InputError("no images to index")
    names = [path.name for path in paths]
    repeated = next((p for i, p in enumerate(paths) if p.name in names[:i]), None)
    if repeated is not None:
        raise InputError(f"{repeated}: another listed image has the file name "
                         f"{repeated.name!r}; index a folder to name images by relative path")
    return ImageSource(tuple(names), tuple(paths))


def _name(image: ImageInput, name: Optional[str], i: int, count: int) -> str:
    """The index name of image ``i`` of ``count`` to add."""
    if name is not None:
        return str(name)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    raise InputError(f"image {i + 1} of {count} ({label(image)}) has no name: pass "
                     f"names=[...] for images that are not files")


@contextlib.contextmanager
def _files(images: Sequence[ImageInput]) -> Iterator[list[str | os.PathLike]]:
    """A file for each image input while the block runs (see :func:`image_file`)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(image_file(image)) for image in images]


def _overrides(settings: Settings) -> list[str]:
    """``"key=value"`` strings of ``settings`` (a mapping's values written as YAML)."""
    if isinstance(settings, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    if isinstance(settings, str):
        return [settings]
    return [str(text) for text in settings]
