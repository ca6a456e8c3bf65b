"""Evaluate rankings on a benchmark: ``d2r evaluate`` (``d2r evaluate``).

Usage::

    d2r evaluate --dataset-dir data/datasets/roxford5k --ranks out/ranks.npy --out out/

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
import sys
from pathlib import Path
from typing import Sequence

from d2r.cli import arguments as cli
from d2r.datasets.benchmarks import BENCHMARKS, load_benchmark
from d2r.errors import InputError
from d2r.evaluation.tables import format_table, load_ranks, write_metrics

__all__ = ["main"]

DEFAULT_KAPPAS = (1, 5, 10)


def _parser() -> argparse.ArgumentParser:
    parser = cli.Parser("d2r evaluate", __doc__)
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
    cli.add_common_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser(), argv, _evaluate)


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Evaluate the rankings ``args`` name; print (and write) the metrics."""
    if any(k < 1 for k in args.kappas):
        parser.error(f"--kappas must be >= 1, got {args.kappas}")
    dataset = load_benchmark(args.dataset_dir, kind=args.benchmark,
                             rotations=args.rotations, name=args.name)
    ranks = load_ranks(args.ranks)
    if args.layout == "revisitop":
        ranks = ranks.T
    if ranks.shape[0] != dataset.num_queries:
        raise InputError(
            f"{args.ranks}: {ranks.shape[0]} ranking rows for {dataset.num_queries} "
            f"queries of {dataset.name}"
        )
    metrics = dataset.evaluate(ranks, args.kappas)
    print(f"{dataset.name}: {dataset.num_queries} queries, {dataset.num_db} database images, "
          f"ranking depth {ranks.shape[1]}")
    print(format_table(metrics))
    if args.out is not None:
        path = write_metrics(metrics, args.out)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
