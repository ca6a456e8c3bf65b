"""Remove images from a built index: ``d2r remove --index INDEX (--names N ... | --name-list FILE)``.

The images are marked deleted in one atomic step (:mod:`d2r.pipeline.update`) and are
never returned again; ``d2r compact`` drops them from the search structures.  A name
the index does not hold is refused, and then nothing is removed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.errors import InputError
from d2r.pipeline.update import remove_images

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r remove", __doc__)
    parser.add_index()
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--names", nargs="+", metavar="NAME",
                       help="image names as the index holds them (as `d2r query` prints them)")
    group.add_argument("--name-list", metavar="FILE", help="file with one image name per line")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _remove)


def _remove(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    names = args.names
    if args.name_list:
        try:
            text = Path(args.name_list).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read name list {args.name_list}: {exc}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    summary = remove_images(args.index, names)
    print(f"removed {len(summary.removed)} images from {args.index}; it holds "
          f"{summary.num_images} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
