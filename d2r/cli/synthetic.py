"""Generate the synthetic landmark-retrieval benchmark (revisitop layout): ``d2r synthetic
--out DIR [--size NAME] [--seed N] [--name NAME]`` (:func:`d2r.datasets.synthetic.generate`).

Photographs shipped with scikit-image are pasted into scenes under random views; nothing is
downloaded.  ``--size`` picks a preset (``tiny``, ``small``, ``default``, ``large``).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.datasets.synthetic import SIZES, generate

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r synthetic", __doc__)
    parser.add_argument("--out", required=True, help="output directory (missing or empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="preset size (default: default)")
    parser.add_argument("--name", default="synth", help="dataset name (gnd_<name>.pkl)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier dataset")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _generate)


def _generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Generate the benchmark ``args`` describes; print where it went."""
    try:
        out = generate(args.out, seed=args.seed, name=args.name, overwrite=args.overwrite,
                       **SIZES[args.size])
    except ValueError as exc:
        parser.error(str(exc))
    print(f"synthetic benchmark -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
