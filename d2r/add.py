"""Add images to a built index: ``d2r add --index INDEX (--images DIR | --image-list FILE)``.

The images are extracted with the index's recorded extractor and settings, encoded
with its codebook and appended as a new segment, in one atomic step
(:mod:`d2r.pipeline.update`).  Names already in the index are refused unless
``--replace`` is given; unreadable images are left out and listed.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r import cli
from d2r.pipeline.update import add_images
from d2r.sources import ImageSource

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="d2r add", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="INDEX", help="index directory")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", metavar="DIR", help="every image below this directory")
    group.add_argument("--image-list", metavar="FILE", help="file with one image path per line")
    parser.add_argument("--replace", action="store_true",
                        help="replace images whose names are already in the index")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _add)


def _add(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    source = ImageSource.from_directory(args.images) if args.images \
        else ImageSource.from_list(args.image_list)
    summary = add_images(args.index, source, replace=args.replace)
    notes = [f"{len(summary.replaced)} replaced"] if summary.replaced else []
    if summary.skipped:
        notes.append(f"{len(summary.skipped)} unreadable left out (e.g. {summary.skipped[0]})")
    print(f"added {len(summary.added)} images to {args.index}"
          f"{' (' + '; '.join(notes) + ')' if notes else ''}; it holds {summary.num_images} "
          f"images ({summary.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
