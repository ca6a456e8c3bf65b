"""Check an index's integrity: ``d2r check --index INDEX [--index INDEX ...]`` (or ``d2r check
INDEX ...``; ``d2r verify``, its former name, runs it too).

Hashes every array and record of the search structure against its manifest, reads
every feature store of the index in full (every chunk of every shard, each checked
against its HDF5 checksum), checks that ``index.json``, the search structure, the
codebook and the feature stores belong to the same build, and prints ``OK`` or one
``BAD:`` line per bad file.  Exit status 0 when every index is sound, 1 otherwise.
Reads every byte of the search structure and the features (about 1 s per 1.5 GB); an
ordinary open checks only the small files and the arrays changed since their last
verification, and a search reads only the features it uses (docs/reliability.md).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.pipeline.check import check_index

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r check", __doc__)
    parser.add_index(many=True, positional=True, help="index directory")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _check)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print OK or the problems of each index; 1 if any has a problem."""
    status = 0
    for index in args.index:
        problems = check_index(index)
        for problem in problems:
            print(f"BAD: {problem}")
        if problems:
            status = 1
        else:
            print(f"OK: {index}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
