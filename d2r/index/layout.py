"""The index directory a build writes: its parts' names and its manifest ``index.json``.

::

    INDEX/features/     feature store (resumable)
    INDEX/maps/         activation maps for AML re-ranking (when the method keeps them)
    INDEX/boxes/        regions per image as .boxes files (when regions are used)
    INDEX/codebooks/    codebooks (trained, or a copy of the one loaded), one folder per
                        codebook config, and the quantizer's HNSW graph (:mod:`d2r.index.quantizer`)
    INDEX/gen-<id>/search/  the search structure (an :class:`~d2r.index.registry.Index`)
                        of one generation
    INDEX/search        a symbolic link to the current generation's search structure
                        (for people and scripts; d2r itself follows ``index.json``)
    INDEX/index.json    manifest: resolved config, codebook hash, feature config, counts,
                        and ``"search"``: where the current generation's structure is

**Generations.**  A build writes its search structure into a new ``gen-<id>``
directory, then replaces ``index.json`` (one atomic, fsync'd rename): that rename is
the moment the new index becomes current.  A kill before it leaves the old index
(``index.json`` still names the old generation), a kill after it the new one.
Generations no ``index.json`` names, and the temporary files an interrupted write
left, are removed by the next build (:func:`retire_generations`).  A reader reads
``index.json`` once and opens the generation it names; when a writer removed that
generation underneath, it reads the new ``index.json`` and opens its generation
(:func:`open_current`).  Indexes of earlier releases keep their structure in a real
``search/`` directory and no ``"search"`` key; they open as before and a rebuild turns
them into generations.

**Confinement.**  Every path ``index.json`` records (``search``, segments, data
directories, ``codebook.path``, ``codebook.quantizer.file``) is relative and must stay
inside the index directory once symbolic links are followed (:func:`inside`); another
is refused, naming the key, before anything at it is read.

**Ownership.**  A build writes only into an empty (or new) directory or into a d2r
index (:func:`check_output_dir`), and inside it removes only what its own names
match: ``gen-*``, ``.gen-*``, ``.search*.tmp-*`` / ``.old-*`` and a ``search``
directory of an earlier release.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from d2r import __version__
from d2r.checks import shown
from d2r.encoding.codebook import METADATA_FILE as CODEBOOK_METADATA, Codebook, save_codebook
from d2r.config import HNSW_KEYS, Config, to_dict
from d2r.errors import InputError
from d2r.io.feature_store import FeatureStore

__all__ = [
    "MANIFEST", "FEATURES", "MAPS", "BOXES", "SEARCH", "FORMAT", "VERSION", "OPEN_ATTEMPTS",
    "IndexMismatchError", "IndexManifestError", "codebook_dir", "keep_codebook",
    "index_record", "read_manifest", "read_versioned_json", "open_current", "new_generation",
    "search_dir", "retire_generations", "check_output_dir", "segments", "is_segmented",
    "inside", "UPDATE_LOCK", "writer_lock", "WriterBusyError",
]

logger = logging.getLogger(__name__)

MANIFEST = "index.json"
FEATURES = "features"
MAPS = "maps"
BOXES = "boxes"
SEARCH = "search"
FORMAT = "d2r-index"
VERSION = 1


class IndexMismatchError(InputError):
    """An index directory whose parts do not fit together, or a config it was not built with."""


class IndexManifestError(IndexMismatchError):
    """An ``index.json`` that is unreadable or of another format."""


class WriterBusyError(InputError):
    """Another process holds the index's writer lock (a build or an update is running)."""


def codebook_dir(out: Path, config: Config) -> Path:
    """Where the codebook trained for ``config.codebook`` lives inside index directory ``out``
    (named by its settings, with ``quantization`` resolved and without the HNSW ones)."""
    spec = {k: v for k, v in to_dict(config.codebook).items() if k not in HNSW_KEYS}
    spec["quantization"] = config.codebook.quantizer_mode()
    spec = json.dumps(spec, sort_keys=True).encode()
    return out / "codebooks" / hashlib.sha256(spec).hexdigest()[:16]


def keep_codebook(codebook: Codebook, config: Config, out: Path) -> Path:
    """The folder of index directory ``out`` holding ``codebook`` (:func:`codebook_dir`).

    A codebook loaded from elsewhere (``codebook.path``) is copied there (once; again when
    the file at that path changed), so that every path ``index.json`` records lies inside
    the index and an index keeps working when the original codebook moves.
    """
    folder = codebook_dir(out, config)
    try:
        kept = json.loads((folder / CODEBOOK_METADATA).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        kept = None
    if kept != codebook.sha256:
        save_codebook(codebook, folder)
    return folder


def index_record(config: Config, codebook, out: Path, *, kind: str, features: dict,
                 num_images: int, num_skipped: int, images_root: Optional[Path] = None,
                 quantizer: Optional[dict] = None) -> dict[str, Any]:
    """The ``index.json`` content (without timing) of an index built into ``out``.

    ``codebook`` is the :class:`~d2r.encoding.codebook.Codebook` used (kept in ``out``:
    :func:`keep_codebook`), or None, and ``quantizer`` the record of its stored HNSW graph
    (:func:`d2r.index.quantizer.save_graph`); ``images_root`` the folder the image names are
    relative to (:attr:`d2r.pipeline.sources.ImageSource.root`), kept so that result pages can show
    the images.
    """
    record = {
        "format": FORMAT,
        "version": VERSION,
        "d2r_version": __version__,
        "kind": kind,
        "config": to_dict(config),
        "codebook": None if codebook is None else {
            "sha256": codebook.sha256, "num_words": codebook.num_words, "dim": codebook.dim,
            "path": os.path.relpath(keep_codebook(codebook, config, out), out)},
        "features": features,
        "num_images": num_images,
        "num_skipped": num_skipped,
    }
    if quantizer is not None:
        record["codebook"]["quantizer"] = quantizer
    if images_root is not None:
        record["images_root"] = str(images_root)
    return record


def read_versioned_json(path: Path, *, format: str, version: int, missing: str,
                        error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path`` whose ``format`` and ``version`` are the given ones.

    A missing file raises FileNotFoundError(``missing``); unreadable JSON or another
    format / version raises ``error`` naming the file.
    """
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(content, dict) or content.get("format") != format:
        raise error(f"{path}: not a {format} manifest")
    if content.get("version") != version:
        writer = content.get("d2r_version")
        written = f"d2r {writer}" if writer else "another d2r"
        raise error(f"{path}: {format} v{content.get('version')} (written by {written}); "
                    f"this d2r {__version__} reads v{version}: rebuild it with this version")
    return content


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of index directory ``index_dir``, checked for format and version."""
    if not Path(index_dir).exists():
        raise FileNotFoundError(f"no index at {index_dir}: no such directory")
    if not Path(index_dir).is_dir():
        raise NotADirectoryError(f"{index_dir} is a file, not an index directory")
    return read_versioned_json(
        Path(index_dir) / MANIFEST, format=FORMAT, version=VERSION, error=IndexManifestError,
        missing=f"{Path(index_dir)} is not a d2r index (no {MANIFEST}); if a build into it "
                "was interrupted, run it again")


OPEN_ATTEMPTS = 5
"""How many generations a reader tries to open when writers keep committing meanwhile."""

T = TypeVar("T")


def open_current(index_dir: str | os.PathLike, open_generation: Callable[[dict], T]) -> T:
    """``open_generation(manifest)`` with ``index.json`` of ``index_dir`` read once: exactly the
    generation it names is opened (never the ``search`` link, never a second read).

    When that fails and ``index.json`` has changed since it was read (a writer committed
    a new generation and removed the old one underneath), the new ``index.json`` is read
    and its generation opened, up to :data:`OPEN_ATTEMPTS` times.  A failure while
    ``index.json`` is unchanged is the index's own and is raised as it is.
    """
    manifest = read_manifest(index_dir)
    for _ in range(OPEN_ATTEMPTS - 1):
        try:
            return open_generation(manifest)
        except Exception:
            current = _reread_manifest(index_dir)
            if current is None or current == manifest:
                raise
        logger.info("index %s was updated while it was being opened; opening its new "
                    "generation", index_dir)
        manifest = current
    return open_generation(manifest)


def _reread_manifest(index_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The manifest of ``index_dir`` now, or None when it cannot be read."""
    try:
        return read_manifest(index_dir)
    except (OSError, ValueError):
        return None


GENERATION_PREFIX = "gen-"
UPDATE_LOCK = ".d2r-writer.lock"


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold the one-writer lock of index directory ``out`` (builds and updates); another
    process holding it is refused at once with a :class:`WriterBusyError`."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / UPDATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WriterBusyError(f"index {out} is being built or updated by another d2r process; "
                             f"run this again when it has finished") from None
        yield
    finally:
        os.close(fd)


def new_generation(out: Path) -> str:
    """A fresh generation name inside index directory ``out`` (``gen-<12 hex>``)."""
    while True:
        name = f"{GENERATION_PREFIX}{uuid.uuid4().hex[:12]}"
        if not (out / name).exists():
            return name


def search_dir(index_dir: Path, manifest: dict[str, Any]) -> Path:
    """The current search structure of an index: ``manifest["search"]`` (a generation) or
    ``search/`` (indexes of earlier releases).  Refuses a path leaving the index."""
    relative = manifest.get("search", SEARCH)
    if not Path(str(relative)).parts:
        raise IndexManifestError(f"{index_dir / MANIFEST}: search must be a path inside the "
                                 f"index, got {shown(relative)}")
    return inside(index_dir, relative, "search")


def segments(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The search segments of an index, oldest first: ``{"search", "data", "num_images"?,
    "images_root"?}`` with ``search`` the structure's path and ``data`` the directories
    holding the segment's ``features/``, ``boxes/`` and ``maps/``, newest first (``"."``:
    the index directory itself).  The first is the build's (``manifest["search"]``), the
    others were appended by :mod:`d2r.pipeline.update`."""
    base = {"search": manifest.get("search", SEARCH), "data": manifest.get("data", ["."])}
    if "images_root" in manifest:
        base["images_root"] = manifest["images_root"]
    return [base, *manifest.get("segments", [])]


def is_segmented(manifest: dict[str, Any]) -> bool:
    """Whether the index has appended segments or deleted images (an updated index)."""
    return bool(manifest.get("segments")) or any(manifest.get("deleted", {}).values())


def inside(index_dir: Path, relative: object, what: str) -> Path:
    """``index_dir / relative`` for a path that ``index.json`` records as ``what`` (a key
    such as ``codebook.path``), refused with an :class:`IndexManifestError` naming ``what``
    and ``index.json`` unless it stays inside the index: a relative path without ``..``
    whose resolved location (every symbolic link followed) lies in the resolved index
    directory.  Nothing at the path is opened."""
    path = Path(str(relative))
    if not isinstance(relative, str) or path.is_absolute() or ".." in path.parts:
        raise IndexManifestError(f"{index_dir / MANIFEST}: {what} must be a path inside the "
                                 f"index, got {shown(relative)}")
    full = index_dir / path
    if not full.resolve().is_relative_to(index_dir.resolve()):
        raise IndexManifestError(f"{index_dir / MANIFEST}: {what} {shown(relative)} leads "
                                 f"outside the index through a symbolic link")
    return full


def _referenced(manifest: dict[str, Any]) -> set[str]:
    """The top-level entries of an index directory its manifest uses (generations)."""
    used = set()
    for segment in segments(manifest):
        for relative in (segment["search"], *segment["data"]):
            parts = Path(str(relative)).parts
            if parts and parts[0] != ".":
                used.add(parts[0])
    return used


def _owned_leftover(entry: Path, keep: set[str]) -> bool:
    """Whether ``entry`` (a child of an index directory) is a d2r search structure or a
    temporary file of one that the current manifest does not use."""
    name = entry.name
    if name in keep:
        return False
    if name.startswith(GENERATION_PREFIX) or name.startswith("." + GENERATION_PREFIX):
        return True
    return name.startswith(".search") and (".tmp-" in name or ".old-" in name)


def retire_generations(out: Path, manifest: dict[str, Any]) -> None:
    """Remove what the current manifest does not use: other generations, leftovers of
    interrupted writes, a ``search/`` directory of an earlier release; point the
    ``search`` link at the current structure."""
    link = out / SEARCH
    if "search" not in manifest and manifest.get("shards"):
        current = None  # a sharded index: no single search structure
        keep: set[str] = set()
    else:
        current = search_dir(out, manifest)
        keep = _referenced(manifest)
    for entry in out.iterdir():
        if _owned_leftover(entry, keep):
            logger.info("removing %s (not part of the current index)", entry)
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if current == link:
        return
    if link.is_symlink():
        link.unlink()
    if current is None:
        if link.is_dir():
            logger.warning("removing %s left by an unsharded build", link)
            shutil.rmtree(link)
        return
    if link.is_dir():
        shutil.rmtree(link)
    temporary = out / f".search.tmp-link-{uuid.uuid4().hex[:8]}"
    os.symlink(current.relative_to(out), temporary)
    os.replace(temporary, link)


def check_output_dir(out: Path) -> None:
    """Refuse to build into ``out`` unless it is new, empty, or a d2r index (complete or
    interrupted): d2r never overwrites or deletes files it did not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise IndexManifestError(f"--out {out} is a file, not a directory")
    if not any(entry.name != UPDATE_LOCK for entry in out.iterdir()):
        return
    if (out / MANIFEST).exists():
        try:
            read_manifest(out)
            return
        except IndexManifestError as exc:
            raise IndexManifestError(f"--out {out} holds an {MANIFEST} that d2r did not write "
                                     f"({exc}); build into a new or empty directory") from None
    if FeatureStore.exists(out / FEATURES):
        return  # an interrupted build: its feature store is continued (and checked)
    raise IndexManifestError(f"--out {out} is not empty and is not a d2r index; build into a "
                             f"new or empty directory (d2r does not overwrite other files)")
