"""Serve an index over HTTP: ``d2r serve --index INDEX [--port 8080] [--allow-writes]``.

Opens the index and its extractor once and answers queries from memory: a JSON API
(``/search``, ``/images``, ``/health``; OpenAPI documentation at ``/docs``) and a web
page at ``/`` to search with a photo, draw a box, see the results and their matched
points, and (with ``--allow-writes``) add the photo.  Binds to 127.0.0.1 unless
``--host`` says otherwise; give writes a ``--token`` (or ``$D2R_TOKEN``) whenever
others can reach the port.  Needs ``pip install 'd2r[serve]'``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from d2r import cli
from d2r.extras import require

__all__ = ["main"]

logger = logging.getLogger("d2r.serve")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="d2r serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="INDEX", help="index directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--allow-writes", action="store_true",
                        help="accept POST /images and DELETE /images/NAME (add, remove)")
    parser.add_argument("--token", default=os.environ.get("D2R_TOKEN"),
                        help="writes need 'Authorization: Bearer TOKEN' (default $D2R_TOKEN)")
    parser.add_argument("--max-upload-mb", type=float, default=20,
                        help="largest accepted upload in MiB (default 20)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="largest accepted image in pixels (default 40000000)")
    parser.add_argument("--top", type=int, default=20, help="results per search (default 20)")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _serve)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    require("serve", "d2r serve")
    import uvicorn

    from d2r.server import ServeSettings, create_app

    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or args.top < 1:
        parser.error("--max-upload-mb, --max-pixels and --top must be positive")
    settings = ServeSettings(Path(args.index), allow_writes=args.allow_writes, token=args.token,
                             max_upload_bytes=int(args.max_upload_mb * 2**20),
                             max_pixels=args.max_pixels, top=args.top)
    app = create_app(settings)
    if args.allow_writes and not args.token and not _loopback(args.host):
        logger.warning("writes are allowed without --token on %s: anyone who reaches the port "
                       "can change the index", args.host)
    images = app.state.service.searcher.num_images
    print(f"serving {args.index} ({images} images) at http://{args.host}:{args.port}/ "
          f"(API documentation: /docs; writes {'on' if args.allow_writes else 'off'})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port,
                log_level="debug" if args.verbose else "warning")
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    raise SystemExit(main())
