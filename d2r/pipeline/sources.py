"""Images to process: names (the ids used in stores and indexes) and the files they live in.

An :class:`ImageSource` comes from a directory, a list file or a benchmark's
database; extraction, indexing and the Ray drivers all take one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from d2r.datasets.benchmarks import load_benchmark
from d2r.errors import InputError
from d2r.index.layout import FORMAT, MANIFEST, UPDATE_LOCK
from d2r.io.images import DEFAULT_EXTENSIONS, list_images

__all__ = ["ImageSource", "OUTSIDE", "locate", "written_by_d2r"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSource:
    """Images to process: ``names[i]`` (the id used in stores and indexes) lives at ``paths[i]``.

    ``rotations`` is empty (no image is turned) or holds, per image, the clockwise
    degrees (a multiple of 90) that turn it upright before feature extraction.
    """

    names: tuple[str, ...]
    paths: tuple[Path, ...]
    rotations: tuple[int, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()
    """Inputs left out, as (name, reason): duplicates of a listed file, unusable names."""
    root: Optional[Path] = None
    """For a directory or a list: the absolute folder the names are relative to (see
    :func:`locate`); None for a benchmark."""

    def __post_init__(self) -> None:
        if self.rotations and len(self.rotations) != len(self.names):
            raise InputError(f"{len(self.rotations)} rotations for {len(self.names)} images")

    @classmethod
    def checked(cls, names, paths, rotations=(), root: Optional[Path] = None) -> "ImageSource":
        """The images ``names[i]`` at ``paths[i]``, each file once under a usable name.

        A name that is not valid UTF-8 (an undecodable file name) is left out, and so is
        a second occurrence of the same file (the same normalized absolute path) or of
        the same name; each is listed in :attr:`rejected` with the reason.
        """
        kept, rejected, seen_paths, seen_names = [], [], {}, set()
        for i, (name, path) in enumerate(zip(names, paths)):
            key = os.path.normpath(os.path.abspath(path))
            if not _usable_name(name):
                rejected.append((_printable(name), "file name is not valid UTF-8 text"))
            elif key in seen_paths:
                rejected.append((name, f"duplicate: the same file as {seen_paths[key]!r}"))
            elif name in seen_names:
                rejected.append((name, "duplicate name: another file has the same name"))
            else:
                seen_paths[key] = name
                seen_names.add(name)
                kept.append(i)
        if rejected:
            logger.warning("%d of %d inputs left out (duplicates or unusable names), e.g. "
                           "%s: %s", len(rejected), len(names), *rejected[0])
        return cls(tuple(names[i] for i in kept), tuple(Path(paths[i]) for i in kept),
                   tuple(rotations[i] for i in kept) if rotations else (), tuple(rejected),
                   root)

    def __len__(self) -> int:
        return len(self.names)

    def rotation(self, i: int) -> int:
        """Clockwise degrees that turn image ``i`` upright (0 without rotations)."""
        return self.rotations[i] if self.rotations else 0

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "ImageSource":
        """Every image below ``directory`` (recursive, sorted), named by relative path.

        Folders d2r wrote (:func:`written_by_d2r`: an index with its uploads, a result
        page) are left out, each with one warning line saying how many images it held;
        a ``directory`` inside one is refused."""
        root = Path(directory)
        if not root.exists():
            raise FileNotFoundError(f"image directory {root} does not exist")
        if not root.is_dir():
            raise InputError(f"{root} is a file, not a directory of images: give the folder "
                             f"that holds the images, or list image files in a text file "
                             f"(one path per line) for --image-list")
        owner = _d2r_owner(root.resolve(), {})
        if owner is not None:
            raise InputError(f"image directory {root} is inside {owner[0]}, {owner[1]}: d2r "
                             f"never takes its own files as inputs")
        left_out: dict[Path, str] = {}

        def skip(folder: Path) -> bool:
            what = written_by_d2r(folder)
            if what is not None:
                left_out[folder] = what
            return what is not None

        names = list_images(root, skip=skip)
        for folder, what in left_out.items():
            _warn_left_out(len(list_images(folder)), folder, what)
        if not names:
            raise InputError(f"image directory {root} holds no images")
        return cls.checked(names, [root / n for n in names], root=root.resolve())

    @classmethod
    def from_list(cls, list_file: str | os.PathLike) -> "ImageSource":
        """One image path per line; relative paths are relative to the list file's folder.

        An image inside that folder is named by its normalized relative path
        (``sub/a.jpg``); one outside it by its normalized absolute path under
        ``_outside_/`` (``_outside_/home/me/photos/a.jpg``), so that no name holds ``..``
        or starts with ``/`` and every file keeps one stable name.  Listed files inside
        a folder d2r wrote (:func:`written_by_d2r`) are left out, with one warning line
        per such folder.
        """
        path = Path(list_file)
        if path.is_dir():
            raise InputError(f"image list {path} is a directory: give a text file with one "
                             f"image path per line, or pass the folder with --images")
        if path.suffix.lower() in DEFAULT_EXTENSIONS:
            raise InputError(f"image list {path} is an image, not a list: give a text file "
                             f"with one image path per line")
        try:
            lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image list {path}: {exc}") from exc
        entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not entries:
            raise InputError(f"image list {path} names no images")
        files, owners, cache, folders = [], {}, {}, {}
        for entry in entries:
            file = path.parent / entry
            if file.parent not in folders:
                folders[file.parent] = _d2r_owner(Path(os.path.realpath(file.parent)), cache)
            owner = folders[file.parent]
            if owner is None:
                files.append(file)
            else:
                owners[owner] = owners.get(owner, 0) + 1
        for (folder, what), count in owners.items():
            _warn_left_out(count, folder, what)
        if not files:
            raise InputError(f"image list {path} names only files inside folders d2r wrote")
        return cls.checked([_list_name(file, path.parent) for file in files], files,
                           root=path.parent.resolve())

    @classmethod
    def from_dataset(
        cls,
        dataset_dir: str | os.PathLike,
        *,
        benchmark: str = "auto",
        rotations: str | os.PathLike | None = None,
        distractor_list: str | os.PathLike | None = None,
        distractor_root: str | os.PathLike | None = None,
    ) -> ImageSource:
        """The database of a benchmark (:func:`~d2r.datasets.benchmarks.load_benchmark`), with
        its images' rotations.

        Names are the benchmark's ``db_names`` (for revisited with R1M: base images,
        then the distractors in list order, as
        :func:`d2r.datasets.revisited.with_distractors` numbers them).
        """
        dataset = load_benchmark(dataset_dir, kind=benchmark, rotations=rotations,
                               distractor_list=distractor_list, distractor_root=distractor_root)
        turns = tuple(dataset.rotation(i) for i in range(dataset.num_db))
        return cls.checked(list(dataset.db_names),
                           [dataset.db_path(i) for i in range(dataset.num_db)],
                           turns if any(turns) else ())

    def shard(self, index: int, count: int) -> ImageSource:
        """Every ``count``-th image starting at ``index`` (``--shard index/count``)."""
        return ImageSource(self.names[index::count], self.paths[index::count],
                           self.rotations[index::count], self.rejected if index == 0 else (),
                           self.root)


OUTSIDE = "_outside_"
"""Name prefix of listed images outside the list file's folder."""


def locate(root: str | os.PathLike, name: str) -> Path:
    """The file of image ``name`` of a source whose :attr:`ImageSource.root` was ``root``:
    ``root/name``, or the absolute path a ``_outside_/...`` name holds."""
    if name.startswith(OUTSIDE + "/"):
        return Path("/" + name[len(OUTSIDE) + 1:])
    return Path(root) / name


def written_by_d2r(folder: Path) -> Optional[str]:
    """What d2r wrote ``folder`` as (``"a d2r index"``: a complete or interrupted index,
    with its ``uploads/``; ``"a d2r result page"``: a query's or evaluation's report), or
    None: d2r never takes the files of such folders as inputs, so that an index does not
    index itself, its uploads or its reports' thumbnails."""
    if (folder / UPDATE_LOCK).is_file() or _is_index_manifest(folder / MANIFEST):
        return "a d2r index"
    if (folder / "thumbs").is_dir() and _names_d2r(folder / "index.html"):
        return "a d2r result page"
    return None


def _is_index_manifest(file: Path) -> bool:
    try:
        return json.loads(file.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _names_d2r(page: Path) -> bool:
    """Whether HTML ``page`` has a title d2r gives its pages (``d2r: ...``, ``d2r report: ...``)."""
    try:
        with open(page, "rb") as f:
            return b"<title>d2r" in f.read(4096)
    except OSError:
        return False


def _d2r_owner(folder: Path, cache: dict[Path, Optional[tuple[Path, str]]]
               ) -> Optional[tuple[Path, str]]:
    """The folder d2r wrote that holds resolved ``folder`` (itself or an ancestor) and what it
    is (:func:`written_by_d2r`), or None; ``cache`` remembers the answer per folder."""
    if folder not in cache:
        what = written_by_d2r(folder)
        if what is not None:
            cache[folder] = (folder, what)
        else:
            cache[folder] = None if folder.parent == folder else _d2r_owner(folder.parent, cache)
    return cache[folder]


def _warn_left_out(count: int, folder: Path, what: str) -> None:
    if count:
        logger.warning("left out %d image%s inside %s (%s: d2r never takes its own files "
                       "as inputs)", count, "" if count == 1 else "s", folder, what)


def _list_name(file: Path, base: Path) -> str:
    """The name of a listed ``file``: its path relative to ``base`` when inside it, else
    its absolute path under :data:`OUTSIDE` (normalized, no ``..``, never absolute)."""
    full = os.path.normpath(os.path.abspath(file))
    relative = os.path.relpath(full, os.path.normpath(os.path.abspath(base)))
    if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
        return Path(relative).as_posix()
    return f"{OUTSIDE}/{Path(full).as_posix().lstrip('/')}"


def _usable_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """``name`` with undecodable bytes as ``\\xNN`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
