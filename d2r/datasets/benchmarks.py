"""One interface over every benchmark the CLIs evaluate (``--dataset-dir DIR``).

==============  ====================================================  ==========================
kind            files in ``DIR``                                      metrics
==============  ====================================================  ==========================
revisited       ``gnd_<name>.pkl`` (or ``.mat``) and ``jpg/``         Easy / Medium / Hard mAP
                (ROxf, RPar; + R1M distractors)                       and mP@k
oxford-paris    ``gt_files/<q>_query.txt``, ``_good``, ``_ok``,       mAP and mP@k
                ``_junk`` and the images (Oxford5k, Paris6k)
holidays        images ``100000.jpg``, ``100001.jpg``, ...            mAP and mP@k
                (INRIA Holidays)
ukbench         images ``ukbench00000.jpg``, ... (UKBench)            N-S score (0..4)
==============  ====================================================  ==========================

The classic benchmarks' images are read from the first of ``DIR/jpg``,
``DIR/full`` and ``DIR`` itself that holds ``*.jpg`` files (flat: Paris6k's
per-landmark folders must be merged into one). ``kind="auto"``
(:func:`detect_benchmark`) checks for a ``gnd_*`` file, then ``gt_files/``,
then the image names. Metrics are in percent except the N-S score; mP@k is
the revisitop precision at k (:func:`d2r.evaluation.metrics.compute_map`). Ground-truth
images missing from an Oxford5k / Paris6k database (Paris6k's corrupt images
are usually deleted) are dropped with a logged warning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2r.datasets.classic import (
    ClassicDataset,
    load_holidays,
    load_oxford_paris,
    load_ukbench,
    ukbench_ns_score,
)
from d2r.datasets.revisited import (
    RevisitedDataset,
    load_distractors,
    load_revisited,
    with_distractors,
)
from d2r.errors import InputError
from d2r.evaluation.metrics import PROTOCOLS, compute_map, evaluate_protocols
from d2r.evaluation.metrics import protocol_gnd as revisited_protocol_gnd

__all__ = [
    "BENCHMARKS", "CLASSIC_PROTOCOL", "IMAGE_DIRS", "Benchmark", "detect_benchmark",
    "load_benchmark",
]

BENCHMARKS = ("revisited", "oxford-paris", "holidays", "ukbench")
"""The benchmark kinds, as ``--benchmark`` names them (plus ``auto``)."""

IMAGE_DIRS = ("jpg", "full", ".")
"""Where a classic benchmark's images are looked for, relative to its directory, in order."""

CLASSIC_PROTOCOL = "all"
"""Name of the single protocol of a classic benchmark (report frames and PR curve)."""

_UKBENCH_NAME = re.compile(r"ukbench\d+")
_QUERY_PREFIX = "oxc1_"


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark of any kind: images, queries, ground truth and its metric.

    Attributes:
        kind: one of :data:`BENCHMARKS`.
        dataset: the :class:`RevisitedDataset` (``revisited``) or
            :class:`ClassicDataset` (the others) read from disk.
    """

    kind: str
    dataset: RevisitedDataset | ClassicDataset

    def __post_init__(self) -> None:
        expected = RevisitedDataset if self.kind == "revisited" else ClassicDataset
        if self.kind not in BENCHMARKS or not isinstance(self.dataset, expected):
            raise TypeError(f"a {self.kind!r} benchmark cannot hold a "
                            f"{type(self.dataset).__name__}")

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def db_names(self) -> tuple[str, ...]:
        return self.dataset.db_names

    @property
    def num_db(self) -> int:
        return self.dataset.num_db

    @property
    def num_queries(self) -> int:
        return self.dataset.num_queries

    @property
    def query_names(self) -> tuple[str, ...]:
        """Query identifiers (image names; ``all_souls_1`` style labels for Oxford5k / Paris6k)."""
        if isinstance(self.dataset, RevisitedDataset):
            return self.dataset.query_names
        return self.dataset.query_labels

    @property
    def query_boxes(self) -> np.ndarray:
        """(Q, 4) float32 ``x1, y1, x2, y2`` in pixels; ``0, 0, inf, inf`` for a full image."""
        return self.dataset.query_boxes

    def db_path(self, i: int) -> Path:
        """Image file of database image ``i``."""
        return self.dataset.db_path(i)

    def query_path(self, i: int) -> Path:
        """Image file of query ``i``."""
        return self.dataset.query_path(i)

    def query_box(self, i: int) -> tuple[float, float, float, float] | None:
        """Crop of query ``i`` as ``(x1, y1, x2, y2)`` pixels, None for the full image."""
        box = self.query_boxes[int(i)]
        return tuple(float(v) for v in box) if np.all(np.isfinite(box)) else None

    def rotation(self, i: int) -> int:
        """Clockwise degrees that turn database image ``i`` upright (Holidays; else 0)."""
        if isinstance(self.dataset, RevisitedDataset):
            return 0
        return self.dataset.rotation(i)

    def query_rotation(self, i: int) -> int:
        """Clockwise degrees that turn query ``i`` upright (Holidays; else 0)."""
        if isinstance(self.dataset, RevisitedDataset):
            return 0
        return self.dataset.rotation(int(self.dataset.query_ids[int(i)]))

    @property
    def protocols(self) -> tuple[str, ...]:
        """Ground-truth protocols: Easy / Medium / Hard, or :data:`CLASSIC_PROTOCOL`."""
        return PROTOCOLS if self.kind == "revisited" else (CLASSIC_PROTOCOL,)

    @property
    def default_protocol(self) -> str:
        """The protocol a report frames results with: Medium, or the only one."""
        return "medium" if self.kind == "revisited" else CLASSIC_PROTOCOL

    def protocol_gnd(self, protocol: str) -> list[dict[str, np.ndarray]]:
        """Per query ``{"ok": (P,) int64, "junk": (J,) int64}`` database indices of ``protocol``."""
        if protocol not in self.protocols:
            raise InputError(f"protocol must be one of {self.protocols} for {self.name}, "
                             f"got {protocol!r}")
        if isinstance(self.dataset, RevisitedDataset):
            return revisited_protocol_gnd(self.dataset.gnd, protocol)
        return [{"ok": np.asarray(g["ok"], np.int64), "junk": np.asarray(g["junk"], np.int64)}
                for g in self.dataset.gnd]

    def result_kinds(self, q: int) -> dict[int, str]:
        """Database index -> its ground-truth list for query ``q`` (negatives absent).

        ``easy``, ``hard`` or ``junk`` (revisited); ``positive``, ``junk`` or
        ``query`` (classic: the query image itself, ignored by Holidays).
        """
        if isinstance(self.dataset, RevisitedDataset):
            g = self.dataset.gnd[q]
            return {int(i): kind for kind in ("junk", "hard", "easy") for i in getattr(g, kind)}
        g = self.dataset.gnd[q]
        kinds = {int(i): kind for kind, key in (("junk", "junk"), ("positive", "ok"))
                 for i in g[key]}
        if kinds.get(int(self.dataset.query_ids[q])) == "junk":
            kinds[int(self.dataset.query_ids[q])] = "query"
        return kinds

    def evaluate(self, ranks, kappas: Sequence[int] = (1, 5, 10)) -> dict:
        """Metrics of rankings of every query.

        Args:
            ranks: (Q, N) int database indices best first, -1 padding.
            kappas: the k of mean precision at k (ignored by UKBench).

        Returns:
            revisited: ``{"easy"|"medium"|"hard": {"mAP", "mP@k", ...}}`` in percent;
            oxford-paris, holidays: ``{"mAP", "mP@k", ...}`` in percent (queries
            without positives left out); ukbench: ``{"N-S": score}`` in 0..4.
        """
        if isinstance(self.dataset, RevisitedDataset):
            return evaluate_protocols(ranks, self.dataset.gnd, kappas)
        if self.kind == "ukbench":
            return {"N-S": ukbench_ns_score(ranks, query_ids=self.dataset.query_ids)}
        mean_ap, _, mean_pr, _ = compute_map(ranks, self.dataset.gnd, kappas)
        metrics = {"mAP": 100.0 * mean_ap}
        metrics.update({f"mP@{int(k)}": 100.0 * p for k, p in zip(kappas, mean_pr.tolist())})
        return metrics


def _jpg_stems(directory: Path) -> list[str]:
    return [p.stem for p in directory.glob("*.jpg") if p.is_file()]


def _image_dir_candidates(root: Path) -> list[Path]:
    return [root / sub if sub != "." else root for sub in IMAGE_DIRS]


def _image_dir(root: Path) -> Path | None:
    """The first of :data:`IMAGE_DIRS` below ``root`` that holds ``*.jpg`` files."""
    for candidate in _image_dir_candidates(root):
        if candidate.is_dir() and _jpg_stems(candidate):
            return candidate
    return None


def _has_gnd_file(root: Path) -> bool:
    return any(p.suffix in (".pkl", ".mat") for p in root.glob("gnd_*"))


def detect_benchmark(dataset_dir: str | os.PathLike) -> str:
    """The kind of benchmark in ``dataset_dir`` (see the module docstring for the rules).

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a directory.
        ValueError: no layout fits; the message lists what was looked for.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {root}")
    if _has_gnd_file(root):
        return "revisited"
    if (root / "gt_files").is_dir():
        return "oxford-paris"
    image_dir = _image_dir(root)
    if image_dir is not None:
        stems = _jpg_stems(image_dir)
        if all(s.isdigit() for s in stems):
            return "holidays"
        if all(_UKBENCH_NAME.fullmatch(s) for s in stems):
            return "ukbench"
    where = ", ".join(str(d) for d in _image_dir_candidates(root))
    raise InputError(
        f"cannot tell which benchmark {root} holds; looked for gnd_<name>.pkl or .mat "
        f"(revisited), a gt_files/ folder (oxford-paris), and *.jpg images in {where} named "
        "only like 100000.jpg (holidays) or ukbench00000.jpg (ukbench)"
        + ("" if image_dir is None else f" (found {image_dir} with other names)")
        + "; pass the kind explicitly (--benchmark)"
    )


def _oxford_paris_name(gt_dir: Path, root: Path) -> str:
    """``oxford5k`` (``oxc1_`` query lines), ``paris6k`` (``paris_`` images) or the folder name."""
    for query_file in sorted(gt_dir.glob("*_query.txt")):
        first = query_file.read_text().split()
        if first:
            if first[0].startswith(_QUERY_PREFIX):
                return "oxford5k"
            if first[0].startswith("paris_"):
                return "paris6k"
            break
    return root.resolve().name


def load_benchmark(
    dataset_dir: str | os.PathLike,
    *,
    kind: str = "auto",
    rotations: Mapping[str, int] | str | os.PathLike | None = None,
    distractor_list: str | os.PathLike | None = None,
    distractor_root: str | os.PathLike | None = None,
    name: str | None = None,
) -> Benchmark:
    """Read the benchmark in ``dataset_dir``.

    Args:
        dataset_dir: the benchmark's directory (layouts in the module docstring).
        kind: one of :data:`BENCHMARKS`, or ``"auto"`` (:func:`detect_benchmark`).
        rotations: Holidays only: image name -> clockwise degrees that make it
            upright, or a ``<image> <degrees>`` file (:func:`~d2r.datasets.classic.read_rotations`).
        distractor_list, distractor_root: revisited only, both or neither: the
            R1M list (``revisitop1m.txt``) and the folder its names are relative to.
        name: revisited only: which ``gnd_<name>`` file when there are several.
    """
    root = Path(dataset_dir)
    if kind not in ("auto", *BENCHMARKS):
        raise InputError(f"benchmark kind must be 'auto' or one of {BENCHMARKS}, got {kind!r}")
    if (distractor_list is None) != (distractor_root is None):
        raise InputError("give both the distractor list and the distractor image folder, or neither")
    if kind == "auto":
        kind = detect_benchmark(root)
    if kind != "revisited":
        for given, what in ((distractor_list, "R1M distractors (--distractors)"),
                            (name, "a ground-truth name (--name)")):
            if given is not None:
                raise InputError(f"{what} apply to revisited benchmarks only; {root} is {kind}")
    if rotations is not None and kind != "holidays":
        raise InputError(f"image rotations (--rotations) apply to Holidays only; {root} is {kind}")

    if kind == "revisited":
        dataset = load_revisited(root, name)
        if distractor_list is not None:
            dataset = with_distractors(dataset, load_distractors(distractor_list), distractor_root)
        return Benchmark(kind, dataset)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {root}")
    image_dir = _image_dir(root)
    if image_dir is None:
        where = ", ".join(str(d) for d in _image_dir_candidates(root))
        raise FileNotFoundError(f"no *.jpg images for the {kind} benchmark in {where}")
    if kind == "oxford-paris":
        gt_dir = root / "gt_files"
        classic = load_oxford_paris(gt_dir, image_dir, name=_oxford_paris_name(gt_dir, root),
                                    missing="drop")
    elif kind == "holidays":
        classic = load_holidays(image_dir, rotations=rotations)
    else:
        classic = load_ukbench(image_dir)
    return Benchmark(kind, classic)
