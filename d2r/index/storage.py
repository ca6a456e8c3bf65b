"""On-disk index format: a directory with ``manifest.json``, ``names.json`` and flat ``.npy`` arrays.

Layout of an index directory::

    manifest.json   format name and version, kind ("inverted", "regional", "global",
                    "global_local", "global_regions"),
                    kind-specific metadata (K, D, binary, counts, dtypes), the caller's
                    free-form ``config`` (resolved config, codebook hash, feature config),
                    and for every array its file, dtype, shape, byte size and sha256
    names.json      database image names, indexed by id
    <array>.npy     one flat NumPy array per entry of the manifest

Directories are written atomically: everything goes to a hidden temporary directory
beside the target, is flushed to disk, and is renamed into place only when complete.
Arrays are read back with ``np.load(mmap_mode="r")`` so an index larger than memory can be
searched.  Nothing is pickled.

Integrity on open (:func:`read_index`): the manifest's format, kind and sections are
checked; ``names.json`` and every array of at most :data:`SMALL_ARRAY_BYTES` are
sha256-verified at every open; every array's size, dtype and shape are checked against
the manifest; a larger array is sha256-verified on the first open after its size,
mtime or inode changed (or within 2 s of its last verification), and its verified
state is then recorded in ``.verified.json`` (:data:`STAMP_FILE`, written at commit
too), so a warm open reads no large array.
``verify=True`` hashes everything.  A failed check raises :class:`IndexFormatError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from d2r.errors import InputError
from d2r.io.atomic import atomic_write_json, fsync_path
from d2r.io.hashing import file_sha256

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "NAMES_FILE",
    "IndexFormatError",
    "IndexWriter",
    "StoredIndex",
    "read_index",
    "verify_files",
    "SMALL_ARRAY_BYTES",
    "STAMP_FILE",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "d2r-index"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
NAMES_FILE = "names.json"
STAMP_FILE = ".verified.json"
SMALL_ARRAY_BYTES = 8 << 20
"""Arrays up to this size are hashed at every open (about 5 ms at 1.5 GB/s)."""
_RACY_NS = 2_000_000_000


class IndexFormatError(InputError):
    """An index directory is missing, corrupt, of another format version, or of the wrong kind."""


def _jsonable(value: Any, where: str) -> Any:
    """Round-trip ``value`` through JSON so that unsupported objects fail early and clearly."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} must be JSON-serialisable: {exc}") from exc


class IndexWriter:
    """Stage an index directory in a temporary directory and rename it into place on commit.

    Use as a context manager; leaving the block without :meth:`commit` (or with an exception)
    removes the temporary directory and leaves any existing index at ``path`` untouched::

        with IndexWriter(path, kind="inverted") as w:
            w.put("counts", counts)
            ids = w.create("image_ids", (n,), np.int32)   # writable np.memmap
            ...
            w.commit(meta={...}, names=names, config=config)
    """

    def __init__(self, path: str | os.PathLike, *, kind: str, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.kind = str(kind)
        self.overwrite = bool(overwrite)
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"index directory {self.path} already exists (pass overwrite=True)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmpdir = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
        self.tmpdir.mkdir()
        self._arrays: dict[str, np.ndarray | None] = {}
        self._committed = False

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()

    def _file(self, name: str) -> Path:
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ValueError(f"array name {name!r} must be non-empty letters, digits, '_' or '-'")
        if name in self._arrays:
            raise ValueError(f"array {name!r} was already written to {self.tmpdir}")
        return self.tmpdir / f"{name}.npy"

    def put(self, name: str, array: np.ndarray) -> None:
        """Write ``array`` as ``<name>.npy``."""
        array = np.ascontiguousarray(array)
        np.save(self._file(name), array, allow_pickle=False)
        self._arrays[name] = None

    def create(self, name: str, shape: tuple[int, ...], dtype) -> np.memmap:
        """Create ``<name>.npy`` of ``shape``/``dtype`` and return it as a writable memmap."""
        file = self._file(name)
        arr = np.lib.format.open_memmap(file, mode="w+", dtype=np.dtype(dtype),
                                        shape=tuple(int(s) for s in shape))
        if hasattr(os, "posix_fallocate"):  # blocks reserved now: a full disk raises ENOSPC
            with open(file, "r+b") as f:     # here, not SIGBUS when the map is written
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        self._arrays[name] = arr
        return arr

    def commit(self, *, meta: Mapping[str, Any], names: Sequence[str] = (),
               config: Mapping[str, Any] | None = None) -> Path:
        """Flush and hash the arrays, write names and manifest, and rename into ``path``."""
        if self._committed:
            raise RuntimeError(f"index {self.path} was already committed")
        names = [str(n) for n in names]
        arrays: dict[str, dict[str, Any]] = {}
        for name, mm in self._arrays.items():
            if mm is not None:
                mm.flush()
            self._arrays[name] = None
            file = self.tmpdir / f"{name}.npy"
            header = np.load(file, mmap_mode="r")
            arrays[name] = {
                "file": file.name,
                "dtype": header.dtype.str,
                "shape": list(header.shape),
                "bytes": file.stat().st_size,
                "sha256": file_sha256(file),
            }
            del header
            fsync_path(file)
        names_file = self.tmpdir / NAMES_FILE
        names_file.write_text(json.dumps(names), encoding="utf-8")
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "meta": _jsonable(dict(meta), "meta"),
            "config": _jsonable(dict(config or {}), "config"),
            "names": {"file": NAMES_FILE, "count": len(names), "sha256": file_sha256(names_file)},
            "arrays": arrays,
        }
        manifest_file = self.tmpdir / MANIFEST_FILE
        manifest_file.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        verified = {entry["file"]: _stamp(self.tmpdir / entry["file"], entry["sha256"])
                    for entry in arrays.values() if entry["bytes"] > SMALL_ARRAY_BYTES}
        if verified:
            _write_stamp(self.tmpdir, verified)
        for file in (names_file, manifest_file, self.tmpdir):
            fsync_path(file)
        self._swap_into_place()
        self._committed = True
        logger.info("wrote %s index to %s (%d arrays)", self.kind, self.path, len(arrays))
        return self.path

    def _swap_into_place(self) -> None:
        old = None
        if self.path.exists():
            if not self.overwrite:
                raise FileExistsError(f"index directory {self.path} appeared while writing")
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(self.path, old)
        os.rename(self.tmpdir, self.path)
        fsync_path(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Discard the temporary directory."""
        self._arrays.clear()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@dataclass(frozen=True)
class StoredIndex:
    """An index directory opened by :func:`read_index`.

    Attributes:
        path: the directory.
        kind: index kind recorded in the manifest.
        meta: kind-specific metadata.
        config: the caller's free-form config recorded at save time.
        names: database names, indexed by id.
        arrays: name -> array (read-only ``np.memmap`` when opened with ``mmap=True``).
    """

    path: Path
    kind: str
    meta: dict[str, Any]
    config: dict[str, Any]
    names: tuple[str, ...]
    arrays: dict[str, np.ndarray]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise IndexFormatError(f"missing file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path} is not valid JSON: {exc}") from exc


def _stamp(file: Path, sha256: str) -> list:
    """What ``.verified.json`` records of a verified file: size, mtime, inode, hash and
    when it was verified."""
    st = file.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, sha256, time.time_ns()]


def _vouches(stamp: Any, file: Path, sha256: str) -> bool:
    """Whether a recorded stamp proves ``file`` unchanged since it was hashed: same size,
    mtime, inode and expected hash, and its mtime older than the verification by more than
    the file-system clock's granularity (a write in the same tick leaves mtime unchanged:
    such "racy" files are hashed again)."""
    if not isinstance(stamp, list) or len(stamp) != 5:
        return False
    st = file.stat()
    size, mtime, inode, digest, verified_at = stamp
    return ([size, mtime, inode, digest] == [st.st_size, st.st_mtime_ns, st.st_ino, sha256]
            and isinstance(verified_at, int) and mtime + _RACY_NS < verified_at)


def _read_stamp(path: Path) -> dict[str, list]:
    try:
        stamp = json.loads((path / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _write_stamp(path: Path, stamp: Mapping[str, list]) -> None:
    """Record verified files (best effort: a read-only index is then hashed at every open)."""
    try:
        atomic_write_json(path / STAMP_FILE, dict(stamp))
    except OSError as exc:
        logger.debug("cannot record verified arrays in %s: %s", path, exc)


def _hash_mismatch(file: Path, manifest_file: Path) -> str:
    return (f"{file} does not match the sha256 recorded in {manifest_file}: the file was "
            "modified or damaged; rebuild the index")


def _check_hash(file: Path, expected: Any, manifest_file: Path) -> str:
    digest = file_sha256(file)
    if digest != expected:
        raise IndexFormatError(_hash_mismatch(file, manifest_file))
    return digest


def _open_array(path: Path, entry: Mapping[str, Any], *, mmap: bool, verify: bool,
                stamp: dict[str, list]) -> np.ndarray:
    """Check one array file against its manifest entry (size, hash as due, dtype, shape)
    and open it; ``stamp`` is updated when a large array was hashed."""
    file = path / str(entry["file"])
    if not file.is_file():
        raise IndexFormatError(f"missing array file {file}")
    size = file.stat().st_size
    if size != int(entry["bytes"]):
        raise IndexFormatError(
            f"{file} has {size} bytes, manifest says {entry['bytes']} (truncated or replaced)")
    large = size > SMALL_ARRAY_BYTES
    if verify or not large or not _vouches(stamp.get(file.name), file, str(entry["sha256"])):
        digest = _check_hash(file, entry["sha256"], path / MANIFEST_FILE)
        if large:
            stamp[file.name] = _stamp(file, digest)
    try:
        arr = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # a damaged header raises ValueError, SyntaxError, TokenError...
        raise IndexFormatError(f"{file} is not a readable .npy array: {exc}") from exc
    if arr.dtype.str != entry["dtype"] or list(arr.shape) != list(entry["shape"]):
        raise IndexFormatError(
            f"{file} holds {arr.dtype.str} {list(arr.shape)}, manifest says "
            f"{entry['dtype']} {list(entry['shape'])}")
    if not mmap:
        arr.flags.writeable = False
    return arr


def read_index(path: str | os.PathLike, *, kind: str, mmap: bool = True,
               verify: bool = False) -> StoredIndex:
    """Open the index directory ``path`` written by :class:`IndexWriter`.

    Args:
        path: index directory.
        kind: expected kind; another kind is an error.
        mmap: map arrays read-only (``np.load(mmap_mode="r")``) instead of reading them.
        verify: check every file's sha256 against the manifest (reads every byte), not only
            the small ones and the large ones changed since their last verification.

    Raises:
        IndexFormatError: missing/invalid manifest, wrong format or version, wrong kind,
            missing or truncated array file, dtype/shape or hash mismatch.
    """
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"index directory {path} does not exist")
    manifest_file = path / MANIFEST_FILE
    manifest = _read_json(manifest_file)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{manifest_file} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{manifest_file} has format version {version!r}; this d2r reads version {FORMAT_VERSION}")
    if manifest.get("kind") != kind:
        raise IndexFormatError(f"{manifest_file} describes a {manifest.get('kind')!r} index, "
                               f"expected {kind!r}")
    try:
        entries = dict(manifest["arrays"])
        names_entry = dict(manifest["names"])
        meta = dict(manifest["meta"])
        config = dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{manifest_file} lacks a required section: {exc}") from exc
    stamp = _read_stamp(path)
    verified = dict(stamp)
    try:
        arrays = {name: _open_array(path, entry, mmap=mmap, verify=verify, stamp=verified)
                  for name, entry in entries.items()}
    except (KeyError, TypeError) as exc:
        raise IndexFormatError(f"{manifest_file} has a malformed array entry: {exc}") from exc
    if verified != stamp:
        _write_stamp(path, verified)
    names_file = path / str(names_entry.get("file", NAMES_FILE))
    if not names_file.is_file():
        raise IndexFormatError(f"missing file {names_file}")
    data = names_file.read_bytes()  # read once: hashed, then parsed
    if hashlib.sha256(data).hexdigest() != names_entry.get("sha256"):
        raise IndexFormatError(_hash_mismatch(names_file, manifest_file))
    try:
        names = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{names_file} is not valid JSON: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise IndexFormatError(f"{names_file} must hold a JSON list of strings")
    if len(names) != names_entry.get("count"):
        raise IndexFormatError(
            f"{names_file} holds {len(names)} names, manifest says {names_entry.get('count')}")
    return StoredIndex(path=path, kind=kind, meta=meta, config=config, names=tuple(names),
                       arrays=arrays)


def verify_files(path: str | os.PathLike) -> list[str]:
    """Hash every file an index directory's manifest lists; one line per bad file (empty:
    all good).  Verified large arrays are recorded in ``.verified.json``."""
    path = Path(path)
    manifest_file = path / MANIFEST_FILE
    try:
        manifest = _read_json(manifest_file)
        entries = [dict(e) for e in manifest["arrays"].values()] + [dict(manifest["names"])]
    except (IndexFormatError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"{manifest_file}: unreadable index manifest ({exc})"]
    problems, stamp = [], _read_stamp(path)
    for entry in entries:
        file = path / str(entry.get("file", ""))
        if not file.is_file():
            problems.append(f"{file}: missing")
            continue
        try:
            digest = _check_hash(file, entry.get("sha256"), manifest_file)
        except IndexFormatError as exc:
            problems.append(str(exc))
            continue
        if file.name != NAMES_FILE and file.stat().st_size > SMALL_ARRAY_BYTES:
            stamp[file.name] = _stamp(file, digest)
    if not problems:
        _write_stamp(path, stamp)
    return problems
