"""The whole system on the embedded synthetic benchmark: ``d2r demo`` (``d2r demo``).

Generates the synthetic landmark benchmark (from photographs shipped with
scikit-image; nothing is downloaded), builds an index with a preset
(default ``rootsift-asmk-star``: no model weights needed), runs every query
without and with spatial re-ranking and with verified query expansion, evaluates (ROxf-style Easy / Medium /
Hard) and writes the HTML report.  Everything lands under ``--out``::

    OUT/data/        the benchmark (revisitop layout)
    OUT/index/       the index
    OUT/results/     rankings, metrics.json, timing.json (no re-ranking)
    OUT/reranked/    the same with re-ranking, plus report/index.html
    OUT/expanded/    re-ranking then verified query expansion (local-feature kernels)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.datasets.synthetic import SIZES
from d2r.evaluation.tables import format_table
from d2r.pipeline.demo import run_demo

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r demo", __doc__)
    parser.add_argument("--out", default="d2r-demo", help="output directory (default: d2r-demo)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="synthetic benchmark size (default: default)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the synthetic benchmark (default 0)")
    parser.add_argument("--rerank", type=int, default=100,
                        help="re-rank the top N by spatial verification (0: skip)")
    cli.add_config_args(parser, default_preset="rootsift-asmk-star")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _demo)


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the demo; print its tables and where the report is."""
    results = run_demo(args.out, cli.config_from_args(args), size=args.size, seed=args.seed,
                       rerank=args.rerank)
    for name, metrics in results.items():
        print(f"\n{name}:\n{format_table(metrics)}")
    report = Path(args.out) / "reranked" / "report" / "index.html"
    if report.exists():
        print(f"\nreport: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
