"""Add images to a built index: ``d2r add --index INDEX (--images DIR | --image-list FILE)``.

The images are extracted with the index's recorded extractor and settings, encoded
with its codebook and appended as a new segment, in one atomic step
(:mod:`d2r.pipeline.update`).  Names already in the index are refused unless
``--replace`` is given; unreadable images are left out and listed.  An image without
features (blank) is never added: alone it is refused, in a folder or list it is left
out and listed (with ``--replace`` its indexed original stays searchable).  The
device must have room for about one and a half times what the index's images take
on average, per image added.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.pipeline.update import add_images
from d2r.pipeline.sources import ImageSource

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r add", __doc__)
    parser.add_index()
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
    if summary.featureless:
        notes.append(f"{len(summary.featureless)} without features left out (e.g. "
                     f"{summary.featureless[0]})")
    print(f"added {len(summary.added)} images to {args.index}"
          f"{' (' + '; '.join(notes) + ')' if notes else ''}; it holds {summary.num_images} "
          f"images ({summary.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
