"""The whole system on the embedded synthetic benchmark: ``d2r demo`` (``python -m d2r.demo``).

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
import json
from pathlib import Path
from typing import Optional, Sequence

from d2r import cli
from d2r.sources import ImageSource
from d2r.pipeline.build import build_index
from d2r.config import Config, load_config
from d2r.datasets.synthetic import SIZES, generate
from d2r.results import format_table
from d2r.pipeline.run import run_dataset
from d2r.pipeline.searcher import Searcher

__all__ = ["run_demo", "main"]


EXPANSION = ("search.query_expansion=10", "search.qe_features=region")
"""The ``expanded`` row: verified query expansion as the ``rootsift-asmk-star-qe`` preset."""


def run_demo(out: str | Path, config: Optional[Config] = None, *, size: str = "default",
             seed: int = 0, rerank: int = 100) -> dict:
    """Run the demo into ``out``; returns ``{"initial": metrics, "reranked": metrics,
    "expanded": metrics}`` (spatial verification of the top ``rerank``, then verified query
    expansion; the last two only when ``rerank`` > 0).

    ``config`` defaults to the ``rootsift-asmk-star`` preset.
    """
    out = Path(out)
    data = out / "data"
    if not (data / "synthetic.json").exists():
        generate(data, seed=seed, overwrite=True, **SIZES[size])
    config = config or load_config("rootsift-asmk-star")
    build_index(config, ImageSource.from_dataset(data), out / "index")
    results = {}
    with Searcher(out / "index", overrides=["verification.rerank=0",
                                            "search.query_expansion=0"]) as searcher:
        results["initial"] = run_dataset(searcher, data, out / "results")
    if rerank > 0:
        with Searcher(out / "index", overrides=[f"verification.rerank={rerank}",
                                                "search.query_expansion=0"]) as searcher:
            results["reranked"] = run_dataset(searcher, data, out / "reranked", report=True)
            expands = getattr(searcher.method, "expands", False)
        if expands:
            expansion = [f"verification.rerank={rerank}", *EXPANSION]
            with Searcher(out / "index", overrides=expansion) as searcher:
                results["expanded"] = run_dataset(searcher, data, out / "expanded")
    (out / "demo.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


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
