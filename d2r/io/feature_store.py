"""Per-dataset local-feature store: a directory of immutable HDF5 shards.

Layout of a store directory::

    manifest.json        format, version, extractor config, descriptor dim and dtype
    shards/000000.h5     committed shards, never modified after their rename
    shards/*.h5.tmp      a shard being written (ignored by readers, removed by the next writer)
    catalog.h5           name -> (shard, rows) lookup table covering some shards (a cache)
    writer.lock          ``flock``-ed by the single writer while it is open

A writer buffers entries in memory and commits them as one shard: the shard is
written under a temporary name, flushed, ``fsync``-ed and atomically renamed.
A killed writer therefore loses only the entries buffered since its last
commit; every committed entry stays intact and a partial entry is never
visible.  Shards are the source of truth; the catalog only makes opening fast
and is rebuilt from the shards if it is missing, stale or unreadable.

Inside a shard the entries are concatenated: ``names`` (S,) UTF-8 strings,
``offsets`` (S+1,) int64 row ranges, ``image_sizes`` (S, 2) int64 (W, H) and the
row tables ``locations`` (T, 2) f4, ``descriptors`` (T, D) f4 or f2,
``scales`` (T,) f4, ``scores`` (T,) f4.  Names are data, not HDF5 paths, so
``/``, spaces and any Unicode are stored verbatim.  The numeric datasets carry HDF5's
Fletcher-32 checksum (shards written before this check have none), verified by
HDF5 at every read: a damaged shard raises an error naming it.

A store holds one type of value, chosen by its opener (``value_type``):
:class:`~d2r.types.LocalFeatures` (the row table itself),
:class:`~d2r.types.GlobalDescriptors` (one row per vector, its centre as location,
unit scale and score) or :class:`~d2r.types.ActivationMap` (one row per map cell in
row-major order, the cell's (column, row) as location, (W', H') as image size).

One module over 500 lines on purpose: the store's crash safety rests on one
ordering of manifest, shard and catalog writes and one writer lock, which read
best in one place.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping

import h5py
import numpy as np

from d2r.errors import InputError
from d2r.io.atomic import atomic_write_json, fsync_path
from d2r.types import ActivationMap, GlobalDescriptors, LocalFeatures

__all__ = ["FeatureStore", "StoreConfigError", "half_to_float32"]

logger = logging.getLogger(__name__)

FORMAT = "d2r-feature-store"
VERSION = 1
_MANIFEST = "manifest.json"
_CATALOG = "catalog.h5"
_LOCK = "writer.lock"
_SHARDS = "shards"
_SHARD_RE = re.compile(r"^(\d{6,})\.h5$")
_STR = h5py.string_dtype("utf-8")
_DTYPES = {"float32": np.float32, "float16": np.float16}
_MAX_OPEN_SHARDS = 32
_CATALOG_EVERY = 256  # rewrite the catalog once this many shards are not in it
StoredValue = LocalFeatures | GlobalDescriptors | ActivationMap
_OWN_FILES = {_MANIFEST, _MANIFEST + ".tmp", _CATALOG, _CATALOG + ".tmp", _LOCK, _SHARDS}


class StoreConfigError(InputError):
    """A store reopened with a config, descriptor dim or dtype other than the recorded one."""


@dataclass
class _Entry:
    shard: int  # index into FeatureStore._shard_files, -1 while only buffered
    start: int
    stop: int
    row: int  # position of the entry inside its shard (or buffer)


class _OpenShard:
    """A committed shard opened for reading (no HDF5 file locking), datasets looked up once."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.file = None
        try:
            self.file = h5py.File(path, "r", locking=False)
            self.rows = tuple(self.file[k] for k in ("locations", "descriptors", "scales", "scores"))
            self.image_sizes = self.file["image_sizes"][()]
        except (OSError, KeyError, ValueError) as exc:
            if self.file is not None:
                self.file.close()
            raise OSError(f"cannot open shard {self.path!r} ({exc}); delete it to re-extract its images") from exc

    def close(self) -> None:
        self.file.close()


class FeatureStore:
    """Local features of one dataset, readable by image name.

    Create or open with :meth:`open`; use as a context manager so buffered
    entries are committed.  Not thread-safe; any number of reader processes may
    open a store while one writer process appends to it (readers see the shards
    committed when they opened it).
    """

    def __init__(self, path: Path, mode: str, manifest: dict, *, shard_entries: int, shard_bytes: int):
        self._path = path
        self._mode = mode
        self._manifest = manifest
        self._shard_entries = shard_entries
        self._shard_bytes = shard_bytes
        self._shard_files: list[str] = []
        self._entries: dict[str, _Entry] = {}
        self._handles: OrderedDict[int, _OpenShard] = OrderedDict()
        self._buffer: list[tuple[str, LocalFeatures]] = []
        self._buffer_bytes = 0
        self._lock_fd: int | None = None
        self._uncataloged = 0
        self._closed = False
        self._value_type: type = LocalFeatures

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        mode: Literal["r", "a"] = "r",
        config: Mapping | None = None,
        dim: int | None = None,
        dtype: Literal["float32", "float16"] | None = None,
        shard_entries: int = 1024,
        shard_bytes: int = 64 << 20,
        upgrade: Callable[[Mapping], Mapping] | None = None,
        value_type: type = LocalFeatures,
    ) -> "FeatureStore":
        """Open the store directory ``path`` for reading (``"r"``) or appending (``"a"``).

        Args:
            mode: ``"a"`` creates the store when ``path`` does not hold one yet.
            config: JSON-serializable extractor config.  Recorded at creation;
                when reopening it must equal the recorded one (``None`` accepts it).
            dim: descriptor dimension; recorded at creation or by the first entry,
                checked when given.
            dtype: descriptor storage type (``"float16"`` halves the size);
                ``None`` means the recorded one, or float32 for a new store.
            shard_entries, shard_bytes: a writer commits its buffer as a shard
                once it holds this many entries or bytes of arrays.
            upgrade: applied to the recorded and the given config before they are
                compared (fills keys an older writer did not record); the recorded
                config itself is not rewritten.
            value_type: what :meth:`put` takes and :meth:`get` returns
                (``LocalFeatures``, ``GlobalDescriptors`` or ``ActivationMap``).

        Raises:
            FileNotFoundError: ``mode="r"`` and no store at ``path``.
            StoreConfigError: ``config``, ``dim`` or ``dtype`` differ from the recorded values.
        """
        path = Path(path)
        if value_type not in _CODECS:
            raise TypeError(f"a feature store holds LocalFeatures, GlobalDescriptors or "
                            f"ActivationMap values, not {value_type!r}")
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if dim is not None and (isinstance(dim, bool) or int(dim) != dim or dim < 0):
            raise ValueError(f"dim must be a non-negative integer, got {dim!r}")
        if shard_entries < 1 or shard_bytes < 1:
            raise ValueError(f"shard_entries and shard_bytes must be >= 1, got {shard_entries}, {shard_bytes}")
        canonical = None if config is None else _canonical_config(config)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"feature store {str(path)!r} exists and is not a directory")
        if mode == "r":
            manifest = _read_manifest(path)
            if manifest is None:
                raise FileNotFoundError(f"no feature store at {str(path)!r} (missing {_MANIFEST})")
            _check_manifest(path, manifest, canonical, dim, dtype, upgrade)
            store = cls(path, mode, manifest, shard_entries=shard_entries, shard_bytes=shard_bytes)
            store._value_type = value_type
            store._load_index()
            return store
        lock_fd, manifest = _prepare_for_writing(path, canonical, dim, dtype, upgrade)
        try:
            store = cls(path, mode, manifest, shard_entries=shard_entries, shard_bytes=shard_bytes)
            store._value_type = value_type
            store._lock_fd = lock_fd
            store._load_index()
            return store
        except BaseException:
            os.close(lock_fd)
            raise

    def _load_index(self) -> None:
        """Fill the name lookup from the catalog plus any shards it does not cover."""
        on_disk = _committed_shards(self._path)
        covered = self._read_catalog(set(on_disk))
        if covered is None:
            covered = []
        covered_set = set(covered)
        uncovered = [f for f in on_disk if f not in covered_set]
        for file in uncovered:
            self._add_shard(file, self._read_shard_index(file))
        self._uncataloged = len(uncovered)
        if uncovered and self._mode == "a":
            self._write_catalog()

    def _read_catalog(self, on_disk: set[str]) -> list[str] | None:
        path = self._path / _CATALOG
        if not path.exists():
            return None
        try:
            with h5py.File(path, "r", locking=False) as f:
                shards = list(f["shards"].asstr()[()])
                counts = f["counts"][()]
                names = f["names"].asstr()[()]
                starts = f["starts"][()]
                stops = f["stops"][()]
                rows = f["rows"][()]
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("ignoring unreadable catalog %s (%s); rebuilding from shards", path, exc)
            return None
        sizes = {len(names), len(starts), len(stops), len(rows)}
        if len(counts) != len(shards) or sizes != {int(counts.sum())} or not set(shards) <= on_disk:
            logger.warning("ignoring inconsistent catalog %s; rebuilding from shards", path)
            return None
        pos = 0
        for file, count in zip(shards, counts):
            count = int(count)
            part = slice(pos, pos + count)
            self._add_shard(file, (names[part], starts[part], stops[part], rows[part]))
            pos += count
        return shards

    def _read_shard_index(self, file: str) -> tuple[np.ndarray, ...]:
        path = self._path / _SHARDS / file
        try:
            with h5py.File(path, "r", locking=False) as f:
                names = f["names"].asstr()[()]
                offsets = f["offsets"][()]
        except (OSError, KeyError, ValueError) as exc:
            raise OSError(
                f"committed shard {str(path)!r} is unreadable ({exc}); delete it to re-extract its images"
            ) from exc
        if len(offsets) != len(names) + 1:
            raise OSError(f"committed shard {str(path)!r} is inconsistent; delete it to re-extract its images")
        return names, offsets[:-1], offsets[1:], np.arange(len(names))

    def _add_shard(self, file: str, index: tuple[np.ndarray, ...]) -> None:
        """Register shard ``file`` with its entries' (names, starts, stops, rows)."""
        shard = len(self._shard_files)
        self._shard_files.append(file)
        names, starts, stops, rows = (a.tolist() for a in index)
        for name, start, stop, row in zip(names, starts, stops, rows):
            if name in self._entries:
                logger.warning("image %r is in two shards; using %s", name, file)
            self._entries[name] = _Entry(shard, start, stop, row)

    def _write_catalog(self) -> None:
        groups: list[list[tuple[str, _Entry]]] = [[] for _ in self._shard_files]
        for name, entry in self._entries.items():
            if entry.shard >= 0:
                groups[entry.shard].append((name, entry))
        ordered = [item for group in groups for item in sorted(group, key=lambda it: it[1].row)]
        tmp = self._path / (_CATALOG + ".tmp")
        with h5py.File(tmp, "w", locking=False) as f:
            f.create_dataset("shards", data=np.array(self._shard_files, dtype=object), dtype=_STR)
            f.create_dataset("counts", data=np.array([len(g) for g in groups], np.int64))
            f.create_dataset("names", data=np.array([n for n, _ in ordered], dtype=object), dtype=_STR)
            f.create_dataset("starts", data=np.array([e.start for _, e in ordered], np.int64))
            f.create_dataset("stops", data=np.array([e.stop for _, e in ordered], np.int64))
            f.create_dataset("rows", data=np.array([e.row for _, e in ordered], np.int64))
        fsync_path(tmp)
        os.replace(tmp, self._path / _CATALOG)
        fsync_path(self._path)
        self._uncataloged = 0

    # --------------------------------------------------------------- properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def config(self) -> dict:
        """The extractor config recorded at creation (a copy)."""
        return json.loads(json.dumps(self._manifest["config"]))

    @property
    def dim(self) -> int | None:
        """Descriptor dimension, ``None`` until the first entry of a new store."""
        return self._manifest["dim"]

    @property
    def dtype(self) -> str:
        """Descriptor storage type, ``"float32"`` or ``"float16"``."""
        return self._manifest["dtype"]

    # ------------------------------------------------------------------ reading

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """All stored image names (buffered ones included), in insertion order."""
        return list(self._entries)

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names (in the given order) that the store does not hold yet."""
        return [n for n in names if n not in self._entries]

    def get(self, name: str) -> StoredValue:
        """The value of image ``name`` with float32 arrays.  Raises ``KeyError`` if absent."""
        self._check_open()
        entry = self._entries.get(name)
        if entry is None:
            raise KeyError(f"image {name!r} is not in feature store {str(self._path)!r}")
        if entry.shard < 0:
            return self._decode(self._buffer[entry.row][1])
        return self._decode(self._read(entry.shard, [(name, entry)])[0])

    def get_many(self, names: Iterable[str]) -> list[StoredValue]:
        """Features of several images, in the given order.

        Entries of one shard that lie close together are read with one slice per array.
        """
        self._check_open()
        names = list(names)
        absent = [n for n in names if n not in self._entries]
        if absent:
            raise KeyError(
                f"{len(absent)} image(s) not in feature store {str(self._path)!r}, first {absent[0]!r}"
            )
        by_shard: dict[int, list[int]] = {}
        for i, name in enumerate(names):
            by_shard.setdefault(self._entries[name].shard, []).append(i)
        out: list[LocalFeatures | None] = [None] * len(names)
        for shard, positions in by_shard.items():
            if shard < 0:
                for i in positions:
                    out[i] = self.get(names[i])
                continue
            rows = self._read(shard, [(names[i], self._entries[names[i]]) for i in positions])
            for i, table in zip(positions, rows):
                out[i] = self._decode(table)
        return out  # type: ignore[return-value]

    def _decode(self, table: LocalFeatures) -> StoredValue:
        return _CODECS[self._value_type][1](table)

    def _read(self, shard: int, items: list[tuple[str, _Entry]]) -> list[LocalFeatures]:
        """Read entries of one committed shard; one span read when they are dense enough."""
        handle = self._handle(shard)
        lo = min(e.start for _, e in items)
        hi = max(e.stop for _, e in items)
        wanted = sum(e.stop - e.start for _, e in items)
        try:
            if len(items) > 1 and 2 * wanted >= hi - lo:
                span = slice(lo, hi)
                arrays = [ds[span] for ds in handle.rows]
                parts = [[a[e.start - lo:e.stop - lo] for a in arrays] for _, e in items]
            else:
                parts = [[ds[e.start:e.stop] for ds in handle.rows] for _, e in items]
        except (OSError, KeyError, ValueError) as exc:
            raise OSError(f"cannot read {items[0][0]!r} from shard {handle.path!r} ({exc}): the "
                          f"shard is damaged; delete it and extract again") from exc
        return [
            LocalFeatures(
                locations=loc,
                descriptors=half_to_float32(desc) if desc.dtype == np.float16 else desc.astype(np.float32),
                scales=scales,
                scores=scores,
                image_size=tuple(handle.image_sizes[e.row]),
            )
            for (_, e), (loc, desc, scales, scores) in zip(items, parts)
        ]

    def _shard_path(self, shard: int) -> Path:
        return self._path / _SHARDS / self._shard_files[shard]

    def _handle(self, shard: int) -> "_OpenShard":
        handle = self._handles.get(shard)
        if handle is not None:
            self._handles.move_to_end(shard)
            return handle
        handle = _OpenShard(self._shard_path(shard))
        self._handles[shard] = handle
        if len(self._handles) > _MAX_OPEN_SHARDS:
            _, oldest = self._handles.popitem(last=False)
            oldest.close()
        return handle

    def check(self) -> list[str]:
        """Read every committed shard in full, one line per damaged shard (empty: all sound).

        Every dataset is read from first to last row, so HDF5 verifies the Fletcher-32
        checksum of every chunk of every image (shards written before the checksums
        existed are read all the same); damaged HDF5 metadata, row ranges that do not
        tile the row tables and descriptors of another dimension are problems too.
        """
        self._check_open()
        problems = (_shard_problem(self._shard_path(i), self.dim)
                    for i in range(len(self._shard_files)))
        return [problem for problem in problems if problem]

    # ------------------------------------------------------------------ writing

    def put(self, name: str, value: StoredValue) -> None:
        """Add the value of image ``name``; it becomes durable at the next commit.

        Raises:
            ValueError: bad name, name already stored, or a descriptor dim other
                than the store's.
        """
        self._check_open()
        if self._mode != "a":
            raise PermissionError(f"feature store {str(self._path)!r} is open read-only")
        if not isinstance(value, self._value_type):
            raise TypeError(f"{name!r}: feature store {str(self._path)!r} holds "
                            f"{self._value_type.__name__} values, got {type(value).__name__}")
        features = _CODECS[self._value_type][0](value)
        _check_name(name)
        if name in self._entries:
            raise ValueError(f"image {name!r} is already in feature store {str(self._path)!r}")
        if self.dtype == "float16":
            features = _round_to_float16(name, features)
        if self.dim is None:
            self._manifest["dim"] = features.dim
            atomic_write_json(self._path / _MANIFEST, self._manifest, durable=True, sort_keys=True)
        elif features.dim != self.dim:
            raise ValueError(
                f"image {name!r} has {features.dim}-D descriptors, feature store "
                f"{str(self._path)!r} holds {self.dim}-D"
            )
        n = len(features)
        start = self._buffered_rows()
        self._entries[name] = _Entry(-1, start, start + n, len(self._buffer))
        self._buffer.append((name, features))
        self._buffer_bytes += features.descriptors.nbytes + 16 * n
        if len(self._buffer) >= self._shard_entries or self._buffer_bytes >= self._shard_bytes:
            self.flush()

    def _buffered_rows(self) -> int:
        if not self._buffer:
            return 0
        return self._entries[self._buffer[-1][0]].stop

    def flush(self) -> None:
        """Commit the buffered entries as one new shard (durable, atomic)."""
        self._check_open()
        if not self._buffer:
            return
        file = self._next_shard_file()
        final = self._path / _SHARDS / file
        tmp = final.with_name(file + ".tmp")
        items = self._buffer
        self._write_shard(tmp, items)
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
        shard = len(self._shard_files)
        self._shard_files.append(file)
        for name, _ in items:
            self._entries[name].shard = shard
        self._buffer = []
        self._buffer_bytes = 0
        self._uncataloged += 1
        logger.debug("committed %d entries to %s", len(items), final)
        if self._uncataloged >= _CATALOG_EVERY:
            self._write_catalog()

    def _next_shard_file(self) -> str:
        numbers = [int(_SHARD_RE.match(f).group(1)) for f in self._shard_files]
        numbers += [int(_SHARD_RE.match(f).group(1)) for f in _committed_shards(self._path)]
        return f"{max(numbers, default=-1) + 1:06d}.h5"

    def _write_shard(self, tmp: Path, items: list[tuple[str, LocalFeatures]]) -> None:
        dim = int(self.dim)
        counts = np.array([len(feat) for _, feat in items], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        def rows(attr: str, width: tuple[int, ...], dtype) -> np.ndarray:
            parts = [getattr(feat, attr) for _, feat in items]
            return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, *width), dtype)

        # Built in memory, then written with one ordinary write: HDF5 crashes the process
        # when a write to a full disk fails under it; a plain write raises ENOSPC.
        buffer = io.BytesIO()
        with h5py.File(buffer, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["dim"] = dim
            f.create_dataset("names", data=np.array([n for n, _ in items], dtype=object), dtype=_STR)
            checked = {"fletcher32": True}  # HDF5 verifies a checksum at every chunk read
            f.create_dataset("offsets", data=offsets, **checked)
            f.create_dataset("image_sizes", data=np.array([feat.image_size for _, feat in items],
                                                          np.int64), **checked)
            f.create_dataset("locations", data=rows("locations", (2,), np.float32), **checked)
            f.create_dataset("descriptors", data=rows("descriptors", (dim,), _DTYPES[self.dtype]),
                             **checked)
            f.create_dataset("scales", data=rows("scales", (), np.float32), **checked)
            f.create_dataset("scores", data=rows("scores", (), np.float32), **checked)
        try:
            with open(tmp, "wb") as out:
                out.write(buffer.getbuffer())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ merging

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether directory ``path`` holds a feature store (its manifest)."""
        return (Path(path) / _MANIFEST).is_file()

    def shards(self) -> list[tuple[Path, list[str]]]:
        """Each committed shard as (its file, the names it holds), in commit order.

        Names are read from the shard files (not the catalog): a name stored in two
        shards is listed in both.  A store merges another by adopting these files
        (:meth:`adopt_shard`).
        """
        self._check_open()
        return [(self._shard_path(i), self._read_shard_index(file)[0].tolist())
                for i, file in enumerate(self._shard_files)]

    def adopt_shard(self, source: "FeatureStore", file: str | os.PathLike) -> list[str]:
        """Make committed shard ``file`` of store ``source`` the next shard of this store (writer).

        The file is hard-linked under a temporary name (copied and ``fsync``-ed across
        file systems), then renamed into place: adopting rewrites no feature, and a
        crash leaves either no shard or the whole one.  Its entries are served at once
        and enter the catalog at its next write (at the latest on :meth:`close`).

        Returns:
            The names the shard holds.

        Raises:
            StoreConfigError: ``source`` records another config, descriptor dim or dtype.
            ValueError: ``file`` is not a committed shard of ``source``, or holds a name twice
                or one this store already has (copy those entries with :meth:`put`).
        """
        self._check_open()
        source._check_open()
        if self._mode != "a":
            raise PermissionError(f"feature store {str(self._path)!r} is open read-only")
        dims_differ = None not in (source.dim, self.dim) and source.dim != self.dim
        if source.config != self.config or source.dtype != self.dtype or dims_differ:
            raise StoreConfigError(f"feature store {str(source.path)!r} was made with another "
                                   f"config, dim or dtype than {str(self._path)!r}")
        file = Path(file)
        if file.parent != source.path / _SHARDS or not _SHARD_RE.match(file.name) \
                or not file.is_file():
            raise ValueError(f"{str(file)!r} is not a committed shard of {str(source.path)!r}")
        index = source._read_shard_index(file.name)
        names = index[0].tolist()
        if len(set(names)) != len(names) or any(n in self._entries for n in names):
            raise ValueError(f"shard {str(file)!r} holds names twice or names already in "
                             f"feature store {str(self._path)!r}; copy its new entries instead")
        if self.dim is None and source.dim is not None:
            self._manifest["dim"] = source.dim
            atomic_write_json(self._path / _MANIFEST, self._manifest, durable=True, sort_keys=True)
        name = self._next_shard_file()
        final = self._path / _SHARDS / name
        tmp = final.with_name(name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(file, tmp)
        except OSError:
            shutil.copyfile(file, tmp)
            fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
        self._add_shard(name, index)
        self._uncataloged += 1
        if self._uncataloged >= _CATALOG_EVERY:
            self._write_catalog()
        return names

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Commit buffered entries (writer), refresh the catalog and release files."""
        if self._closed:
            return
        try:
            if self._mode == "a":
                self.flush()
                if self._uncataloged:
                    self._write_catalog()
        finally:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"feature store {str(self._path)!r} is closed")

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self._path)!r}, mode={self._mode!r}, entries={len(self)}, dim={self.dim})"


# ---------------------------------------------------------------------- helpers


_HALF_TABLE: np.ndarray | None = None


def _global_to_rows(value: GlobalDescriptors) -> LocalFeatures:
    ones = np.ones(len(value), np.float32)
    return LocalFeatures(value.centres, value.vectors, ones, ones, value.image_size)


def _rows_to_global(table: LocalFeatures) -> GlobalDescriptors:
    return GlobalDescriptors(table.descriptors, table.locations, table.image_size)


def _map_to_rows(value: ActivationMap) -> LocalFeatures:
    h, w, c = value.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    ones = np.ones(h * w, np.float32)
    return LocalFeatures(np.stack([cols, rows], axis=1), value.values.reshape(h * w, c), ones, ones,
                         (w, h))


def _rows_to_map(table: LocalFeatures) -> ActivationMap:
    w, h = table.image_size
    if len(table) != w * h:
        raise ValueError(f"{len(table)} rows cannot be a {w}x{h} activation map")
    return ActivationMap(table.descriptors.reshape(h, w, table.dim))


def _same(table: LocalFeatures) -> LocalFeatures:
    return table


_CODECS: dict[type, tuple[Callable, Callable]] = {
    LocalFeatures: (_same, _same),
    GlobalDescriptors: (_global_to_rows, _rows_to_global),
    ActivationMap: (_map_to_rows, _rows_to_map),
}
"""Value type -> (value to row table, row table to value)."""


def half_to_float32(values: np.ndarray) -> np.ndarray:
    """float16 -> float32 by a 65,536-entry table look-up: exact, ~4x faster than ``astype``."""
    global _HALF_TABLE
    if _HALF_TABLE is None:
        _HALF_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return np.take(_HALF_TABLE, np.ascontiguousarray(values, np.float16).view(np.uint16))


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"image name must be a non-empty string, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"image name {name!r} contains a NUL character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"image name {name!r} is not valid Unicode ({exc.reason})") from exc


def _round_to_float16(name: str, features: LocalFeatures) -> LocalFeatures:
    """``features`` with descriptors as they will read back from float16 storage."""
    with np.errstate(over="ignore"):
        half = features.descriptors.astype(np.float16)
    if not np.all(np.isfinite(half)):
        raise ValueError(f"descriptors of image {name!r} exceed the float16 range (|x| > 65504)")
    return LocalFeatures(
        locations=features.locations,
        descriptors=half.astype(np.float32),
        scales=features.scales,
        scores=features.scores,
        image_size=features.image_size,
    )


def _canonical_config(config: Mapping) -> dict:
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config must be JSON-serializable: {exc}") from exc


def _first_difference(stored, given, prefix: str = "") -> tuple[str, object, object] | None:
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in sorted(set(stored) | set(given)):
            where = f"{prefix}.{key}" if prefix else key
            if key not in stored:
                return where, "<absent>", given[key]
            if key not in given:
                return where, stored[key], "<absent>"
            diff = _first_difference(stored[key], given[key], where)
            if diff is not None:
                return diff
        return None
    if stored != given:
        return prefix or "<config>", stored, given
    return None


def _check_manifest(path: Path, manifest: dict, config: dict | None, dim: int | None, dtype: str | None,
                    upgrade: Callable[[Mapping], Mapping] | None = None) -> None:
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{str(path / _MANIFEST)!r} is not a {FORMAT} version {VERSION} manifest "
            f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})"
        )
    if config is not None:
        stored = manifest["config"]
        if upgrade is not None:
            stored, config = _canonical_config(upgrade(stored)), _canonical_config(upgrade(config))
        diff = _first_difference(stored, config)
        if diff is not None:
            key, stored, given = diff
            raise StoreConfigError(
                f"feature store {str(path)!r} was made with another extractor config: "
                f"{key} is {stored!r} in the store but {given!r} now"
            )
    if dim is not None and manifest["dim"] is not None and int(dim) != manifest["dim"]:
        raise StoreConfigError(
            f"feature store {str(path)!r} holds {manifest['dim']}-D descriptors, asked for {dim}-D"
        )
    if dtype is not None and dtype != manifest["dtype"]:
        raise StoreConfigError(
            f"feature store {str(path)!r} stores descriptors as {manifest['dtype']}, asked for {dtype}"
        )


def _read_manifest(path: Path) -> dict | None:
    file = path / _MANIFEST
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"feature store manifest {str(file)!r} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not {"config", "dim", "dtype"} <= set(manifest):
        raise ValueError(f"feature store manifest {str(file)!r} lacks config, dim or dtype")
    return manifest


_CHECK_BYTES = 32 << 20
"""Bytes of one dataset :func:`_shard_problem` reads at a time."""


def _shard_problem(path: Path, dim: int | None) -> str | None:
    """What is wrong with committed shard ``path`` read in full (None: nothing)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            names = f["names"].asstr()[()]
            offsets = f["offsets"][()]
            sizes = f["image_sizes"][()]
            lengths = {key: _read_all(f[key]) for key in
                       ("locations", "descriptors", "scales", "scores")}
            width = f["descriptors"].shape[1:]
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        return f"{path}: damaged feature shard ({reason}); delete it and extract again"
    rows = lengths["locations"]
    if (set(lengths.values()) != {rows} or len(offsets) != len(names) + 1
            or sizes.shape != (len(names), 2) or offsets[0] != 0
            or np.any(np.diff(offsets) < 0) or offsets[-1] != rows):
        return (f"{path}: inconsistent feature shard (its row ranges do not tile its rows); "
                f"delete it and extract again")
    if dim is not None and width != (dim,):
        return f"{path}: holds descriptors of shape {width}, the store's are ({dim},)"
    return None


def _read_all(dataset: h5py.Dataset) -> int:
    """Read every row of ``dataset`` (HDF5 checks each chunk as it reads it); its rows."""
    row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64)))
    step = max(1, _CHECK_BYTES // row_bytes)
    for start in range(0, len(dataset), step):
        dataset[start:start + step]
    return len(dataset)


def _committed_shards(path: Path) -> list[str]:
    shards = path / _SHARDS
    if not shards.is_dir():
        return []
    return sorted((f for f in os.listdir(shards) if _SHARD_RE.match(f)), key=lambda f: int(f[:-3]))


def _prepare_for_writing(path: Path, config: dict | None, dim: int | None, dtype: str | None,
                         upgrade: Callable[[Mapping], Mapping] | None) -> tuple[int, dict]:
    """Lock ``path`` for writing, create or check its manifest, remove uncommitted files."""
    if path.is_dir() and not (path / _MANIFEST).exists():
        foreign = sorted(set(os.listdir(path)) - _OWN_FILES)
        if foreign:
            raise ValueError(
                f"not creating a feature store in {str(path)!r}: the directory holds other "
                f"files (first {foreign[0]!r}); use a new or empty directory"
            )
    path.mkdir(parents=True, exist_ok=True)
    (path / _SHARDS).mkdir(exist_ok=True)
    lock_fd = _acquire_writer_lock(path)
    try:
        manifest = _read_manifest(path)
        if manifest is None:
            if _committed_shards(path):
                raise ValueError(f"{str(path)!r} holds shards but no {_MANIFEST}; not creating a store over them")
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "config": {} if config is None else config,
                "dim": None if dim is None else int(dim),
                "dtype": dtype or "float32",
            }
            atomic_write_json(path / _MANIFEST, manifest, durable=True, sort_keys=True)
            logger.info("created feature store %s", path)
        else:
            _check_manifest(path, manifest, config, dim, dtype, upgrade)
            if manifest["dim"] is None and dim is not None:
                manifest["dim"] = int(dim)
                atomic_write_json(path / _MANIFEST, manifest, durable=True, sort_keys=True)
        for stale in (path / _SHARDS).glob("*.tmp"):
            logger.warning("removing uncommitted shard %s left by an interrupted writer", stale)
            stale.unlink()
        (path / (_CATALOG + ".tmp")).unlink(missing_ok=True)
        return lock_fd, manifest
    except BaseException:
        os.close(lock_fd)
        raise


def _acquire_writer_lock(path: Path) -> int:
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise RuntimeError(f"feature store {str(path)!r} is already open for writing (by this or another process)") from exc
    return fd
