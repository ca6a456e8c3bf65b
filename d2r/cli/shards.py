"""``d2r shards INDEX --shards N [--out DIR]``: split a built index into N shard indexes
for sharded search on Ray (:mod:`d2r.distributed.shards`)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.distributed.shards import read_shards_manifest, split_index
from d2r.errors import InputError

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``d2r shards INDEX --shards N [--out DIR]``: split a built index."""
    parser = cli.Parser("d2r shards", "Split a built index into N shard indexes for sharded "
                                      "search on Ray.")
    parser.add_index(positional=True,
                     help="index directory (index.json + search/) or a bare index")
    parser.add_argument("--shards", type=int, required=True, metavar="N", help="number of shards")
    parser.add_argument("--out", metavar="DIR", help="sharded directory (default INDEX/shards)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _split)


def _split(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Split the index ``args`` names; print the shards."""
    try:
        out = split_index(args.index, num_shards=args.shards, out=args.out,
                          overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        raise InputError(str(exc)) from None
    manifest = read_shards_manifest(out)
    print(f"{manifest['num_images']} images in {len(manifest['shards'])} {manifest['kind']} "
          f"shards -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
