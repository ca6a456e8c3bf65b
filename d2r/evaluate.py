"""Evaluate rankings on a benchmark: ``python -m d2r.evaluate``.

Usage::

    python -m d2r.evaluate --dataset-dir data/datasets/roxford5k --ranks out/ranks.npy --out out/

The benchmark is detected from the directory or named with ``--benchmark``
(``revisited``, ``oxford-paris``, ``holidays``, ``ukbench``; layouts in
:mod:`d2r.datasets.benchmarks`).

``--ranks`` accepts

* a directory holding ``ranks.npy`` (what ``python -m d2r.query`` writes), or
  only ``scores.npy`` (full (Q, N) similarities, ranked here);
* a ``.npy`` file: (Q, N) integer database indices, best first (-1 = padding);
* a ``.npz`` file with one of ``ranks``, ``ids`` (top-K search ids, -1 padded)
  or ``scores``;
* a ``.json`` file: ``{"ranks": [[...], ...]}``.

Prints the metrics and, with ``--out``, writes them to ``metrics.json``:

* Revisited Oxford/Paris: ``{"easy"|"medium"|"hard": {"mAP", "mP@1", ...}}``
  in percent. Database indices beyond the base images (R1M distractors) are
  simply never positive.
* Oxford5k/Paris6k (original protocol) and Holidays: ``{"mAP", "mP@1", ...}``
  in percent.
* UKBench: ``{"N-S": score}``, the mean number of group images in the top 4
  (0..4).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from d2r.datasets.benchmarks import BENCHMARKS, load_benchmark
from d2r.evaluation import scores_to_ranks

__all__ = ["load_ranks", "write_metrics", "format_table", "main"]

logger = logging.getLogger(__name__)

DEFAULT_KAPPAS = (1, 5, 10)


def load_ranks(path: str | Path) -> np.ndarray:
    """Read rankings in any of the formats listed in the module docstring.

    Returns:
        (Q, N) int64 database indices best first (queries first).
    """
    path = Path(path)
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
            raise ValueError(
                f"{path} has none of the arrays 'ranks', 'ids', 'scores': {archive.files}"
            )
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            if "ranks" not in data:
                raise ValueError(f"{path}: JSON object has no 'ranks' key")
            data = data["ranks"]
        try:
            arr = np.array(data, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: 'ranks' must be a list of equal-length integer lists"
            ) from exc
        return _int_ranks(arr, path)
    raise ValueError(
        f"{path}: unsupported ranks format {suffix!r} (use .npy, .npz, .json or a directory)"
    )


def _int_ranks(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 2:
        raise ValueError(f"{path}: ranks must be a (Q, N) array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m d2r.evaluate",
        description="Metrics of rankings on a benchmark: Revisited Oxford/Paris (Easy/Medium/"
                    "Hard mAP, mP@k), Oxford5k/Paris6k and Holidays (mAP, mP@k), UKBench (N-S).",
    )
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="benchmark directory (revisitop gnd_<name>.pkl + jpg/, gt_files/ + "
                             "jpg/, Holidays or UKBench images)")
    parser.add_argument("--benchmark", choices=("auto", *BENCHMARKS), default="auto",
                        help="the benchmark's layout (default: auto, detected from the files)")
    parser.add_argument("--rotations", type=Path, metavar="FILE",
                        help="Holidays rotation list (checked against the images; metrics do "
                             "not depend on it)")
    parser.add_argument("--ranks", required=True, type=Path,
                        help="ranks .npy/.npz/.json, or a directory with ranks.npy or scores.npy")
    parser.add_argument("--name", default=None,
                        help="revisited: dataset name when the directory holds several gnd files")
    parser.add_argument("--out", type=Path, default=None, help="write metrics.json here")
    parser.add_argument("--kappas", type=int, nargs="+", default=list(DEFAULT_KAPPAS),
                        help="k of mean precision at k (default: 1 5 10)")
    parser.add_argument("--layout", choices=("queries_first", "revisitop"), default="queries_first",
                        help="ranks shape: (Q, N) queries_first or (N, Q) revisitop")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset = load_benchmark(args.dataset_dir, kind=args.benchmark,
                                 rotations=args.rotations, name=args.name)
        ranks = load_ranks(args.ranks)
        if args.layout == "revisitop":
            ranks = ranks.T
        if ranks.shape[0] != dataset.num_queries:
            raise ValueError(
                f"{args.ranks}: {ranks.shape[0]} ranking rows for {dataset.num_queries} "
                f"queries of {dataset.name}"
            )
        metrics = dataset.evaluate(ranks, args.kappas)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{dataset.name}: {dataset.num_queries} queries, {dataset.num_db} database images, "
          f"ranking depth {ranks.shape[1]}")
    print(format_table(metrics))
    if args.out is not None:
        path = write_metrics(metrics, args.out)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
