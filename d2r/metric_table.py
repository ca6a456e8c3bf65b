"""A benchmark's metrics as one typed table (what ``metrics.json`` holds, by row and column).

Revisited Oxford/Paris give one row per protocol (``easy``, ``medium``, ``hard``), the
classic benchmarks one row (``all``); columns are ``mAP``, ``mP@k`` (percent) or UKBench's
``N-S`` (0..4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from d2r.results import format_table

__all__ = ["MetricTable"]

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
