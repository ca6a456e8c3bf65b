"""Rankings and metrics as files and tables: what ``query`` and ``evaluate`` read and print.

* :func:`load_ranks`: rankings from ``.npy`` / ``.npz`` / ``.json`` files or a results directory;
* :func:`format_table`: metrics as a plain-text table;
* :func:`write_metrics`: ``metrics.json`` (NaN as null);
* :class:`MetricTable`: a benchmark's metrics as one typed table (what ``metrics.json``
  holds, by row and column; what :func:`d2r.evaluate` returns).
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d2r.errors import InputError
from d2r.evaluation.metrics import scores_to_ranks

__all__ = ["MetricTable", "load_ranks", "write_metrics", "format_table"]


def load_ranks(path: str | Path) -> np.ndarray:
    """Read rankings in any of the formats listed in the module docstring.

    Returns:
        (Q, N) int64 database indices best first (queries first).
    """
    path = Path(path)
    try:
        return _read_ranks(path)
    except (InputError, FileNotFoundError):
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable rankings file ({' '.join(str(exc).split())})"
                         ) from exc


def _read_ranks(path: Path) -> np.ndarray:
    if path.is_dir():
        if (path / "ranks.npy").is_file():
            return _int_ranks(np.load(path / "ranks.npy", allow_pickle=False), path / "ranks.npy")
        if (path / "scores.npy").is_file():
            return scores_to_ranks(np.load(path / "scores.npy", allow_pickle=False))
        raise FileNotFoundError(f"{path} holds neither ranks.npy nor scores.npy")
    if not path.is_file():
        raise FileNotFoundError(f"ranks file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _int_ranks(np.load(path, allow_pickle=False), path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            for key in ("ranks", "ids"):
                if key in archive:
                    return _int_ranks(archive[key], path)
            if "scores" in archive:
                return scores_to_ranks(archive["scores"])
            raise InputError(
                f"{path} has none of the arrays 'ranks', 'ids', 'scores': {archive.files}"
            )
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            if "ranks" not in data:
                raise InputError(f"{path}: JSON object has no 'ranks' key")
            data = data["ranks"]
        try:
            arr = np.array(data, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{path}: 'ranks' must be a list of equal-length integer lists"
            ) from exc
        return _int_ranks(arr, path)
    raise InputError(
        f"{path}: unsupported ranks format {suffix!r} (use .npy, .npz, .json or a directory)"
    )


def _int_ranks(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 2:
        raise InputError(f"{path}: ranks must be a (Q, N) array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InputError(
            f"{path}: ranks hold {arr.dtype} values, expected integer database indices "
            "(store similarities as scores.npy or as 'scores' in an .npz)"
        )
    return arr.astype(np.int64, copy=False)


def _per_protocol(metrics: Mapping[str, Any]) -> bool:
    return all(isinstance(v, Mapping) for v in metrics.values())


def format_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text table, one column per metric.

    ``{protocol: {metric: value}}`` (Revisited) gives one row per protocol;
    ``{metric: value}`` (the classic benchmarks) a single row.
    """
    if not _per_protocol(metrics):
        return "\n".join(["".join(f"{c:>8}" for c in metrics),
                          "".join(f"{v:8.2f}" for v in metrics.values())])
    columns = list(next(iter(metrics.values())).keys())
    lines = ["protocol " + "".join(f"{c:>8}" for c in columns)]
    for protocol, values in metrics.items():
        lines.append(f"{protocol:<9}" + "".join(f"{values[c]:8.2f}" for c in columns))
    return "\n".join(lines)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def write_metrics(metrics: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``metrics.json`` into ``out_dir`` (created); NaN becomes null.

    ``metrics`` has either shape :func:`format_table` accepts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if _per_protocol(metrics):
        clean = {p: {k: _json_number(v) for k, v in m.items()} for p, m in metrics.items()}
    else:
        clean = {k: _json_number(v) for k, v in metrics.items()}
    target = out / "metrics.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n")
    tmp.replace(target)
    return target


ALL = "all"
"""The row name of a benchmark without protocols."""


@dataclass(frozen=True)
class MetricTable:
    """Metrics of one ranking of a benchmark.

    Attributes:
        protocols: (P,) row names: ``("easy", "medium", "hard")`` or ``("all",)``.
        metrics: (M,) column names, e.g. ``("mAP", "mP@1", "mP@5", "mP@10")``.
        values: (P, M) floats, ``values[p][m]``; NaN where no query has positives.

    ``table["hard", "mAP"]`` reads one value; ``table["mAP"]`` the one of a single-row
    table; ``str(table)`` is what ``d2r evaluate`` prints.
    """

    protocols: tuple[str, ...]
    metrics: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]

    @classmethod
    def from_dict(cls, metrics: Mapping[str, Any]) -> "MetricTable":
        """The table of ``{protocol: {metric: value}}`` or ``{metric: value}``."""
        rows = metrics if all(isinstance(v, Mapping) for v in metrics.values()) \
            else {ALL: metrics}
        columns = tuple(next(iter(rows.values())))
        return cls(tuple(rows), columns,
                   tuple(tuple(float(row[c]) for c in columns) for row in rows.values()))

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` shape: ``{protocol: {metric: value}}``, or ``{metric: value}``
        for a single ``all`` row."""
        rows = {p: dict(zip(self.metrics, values)) for p, values in zip(self.protocols,
                                                                        self.values)}
        return rows[ALL] if self.protocols == (ALL,) else rows

    def __getitem__(self, key: str | tuple[str, str]) -> float:
        protocol, metric = key if isinstance(key, tuple) else (ALL, key)
        if protocol not in self.protocols or metric not in self.metrics:
            raise KeyError(f"{key!r}: the table has rows {list(self.protocols)} and columns "
                           f"{list(self.metrics)}")
        return self.values[self.protocols.index(protocol)][self.metrics.index(metric)]

    def __str__(self) -> str:
        return format_table(self.to_dict())
