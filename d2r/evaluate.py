"""Evaluate rankings on Revisited Oxford/Paris: ``python -m d2r.evaluate``.

Usage::

    python -m d2r.evaluate --dataset-dir data/datasets/roxford5k --ranks out/ranks.npy --out out/

``--ranks`` accepts

* a directory holding ``ranks.npy`` (what ``python -m d2r.query`` writes), or
  only ``scores.npy`` (full (Q, N) similarities, ranked here);
* a ``.npy`` file: (Q, N) integer database indices, best first (-1 = padding);
* a ``.npz`` file with one of ``ranks``, ``ids`` (top-K search ids, -1 padded)
  or ``scores``;
* a ``.json`` file: ``{"ranks": [[...], ...]}``.

Prints mAP and mP@k of the Easy, Medium and Hard protocols and, with ``--out``,
writes ``metrics.json`` = ``{"easy"|"medium"|"hard": {"mAP", "mP@1", ...}}`` in
percent. Database indices beyond the base images (R1M distractors) are simply
never positive.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from d2r.datasets.revisited import load_revisited
from d2r.evaluation import PROTOCOLS, evaluate_protocols, scores_to_ranks

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


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """Plain-text table: one row per protocol, one column per metric."""
    columns = list(next(iter(metrics.values())).keys())
    lines = ["protocol " + "".join(f"{c:>8}" for c in columns)]
    for protocol, values in metrics.items():
        lines.append(f"{protocol:<9}" + "".join(f"{values[c]:8.2f}" for c in columns))
    return "\n".join(lines)


def write_metrics(metrics: dict[str, dict[str, float]], out_dir: str | Path) -> Path:
    """Write ``metrics.json`` into ``out_dir`` (created); NaN becomes null."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = {
        p: {k: (None if math.isnan(v) else v) for k, v in m.items()}
        for p, m in metrics.items()
    }
    target = out / "metrics.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2) + "\n")
    tmp.replace(target)
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m d2r.evaluate",
        description="mAP and mP@k of rankings on Revisited Oxford/Paris (Easy/Medium/Hard).",
    )
    parser.add_argument("--dataset-dir", required=True, type=Path,
                        help="directory with gnd_<name>.pkl (or .mat) and jpg/")
    parser.add_argument("--ranks", required=True, type=Path,
                        help="ranks .npy/.npz/.json, or a directory with ranks.npy or scores.npy")
    parser.add_argument("--name", default=None,
                        help="dataset name when the directory holds several gnd files")
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
        dataset = load_revisited(args.dataset_dir, args.name)
        ranks = load_ranks(args.ranks)
        if args.layout == "revisitop":
            ranks = ranks.T
        if ranks.shape[0] != dataset.num_queries:
            raise ValueError(
                f"{args.ranks}: {ranks.shape[0]} ranking rows for {dataset.num_queries} "
                f"queries of {dataset.name}"
            )
        metrics = evaluate_protocols(ranks, dataset.gnd, args.kappas)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{dataset.name}: {dataset.num_queries} queries, {dataset.num_db} database images, "
          f"ranking depth {ranks.shape[1]}")
    print(format_table({p: metrics[p] for p in PROTOCOLS}))
    if args.out is not None:
        path = write_metrics(metrics, args.out)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
