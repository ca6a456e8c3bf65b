"""Compact an updated index: ``d2r compact --index INDEX``.

Merges the segments ``d2r add`` appended into one and drops the images ``d2r remove``
deleted, in one atomic step (:mod:`d2r.pipeline.update`); searches return the same
results before and after.  The live images are re-encoded from their stored features
(no extraction).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.pipeline.update import compact_index

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r compact", __doc__)
    parser.add_index()
    cli.add_common_args(parser)
    return cli.run(parser, argv, _compact)


def _compact(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    summary = compact_index(args.index)
    print(f"compacted {args.index}: {summary.num_images} images in one segment "
          f"({summary.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
