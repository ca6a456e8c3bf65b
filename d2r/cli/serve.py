"""Serve an index over HTTP: ``d2r serve --index INDEX [--port 8080] [--allow-writes]``.

Opens the index and its extractor once and answers queries from memory: a JSON API
(``/search``, ``/images``, ``/health``; OpenAPI documentation at ``/docs``) and a web
page at ``/`` to search with a photo, draw a box, see the results and their matched
points, and (with ``--allow-writes``) add the photo.  The server follows the index:
``d2r add`` / ``remove`` / ``compact`` / ``build-index`` run meanwhile are seen by the
next request.

Who may reach it: binds to 127.0.0.1 unless ``--host`` says otherwise, and answers
only requests whose ``Host`` is an IP address, ``localhost``, the ``--host`` or an
``--allowed-host`` (the names clients use when it listens on 0.0.0.0 or behind a
proxy).  Who may write: nobody without ``--allow-writes``; with it, pages of other
sites never (``Origin`` / ``Referer`` checked), and with ``--token`` (or
``$D2R_TOKEN``) only requests that carry it.  Writes on an address other than
loopback need a token.  At most ``--workers`` requests compute at once and
``--queue`` more wait; the others get 503 with ``Retry-After``.  Needs
``pip install 'd2r[serve]'``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from pathlib import Path
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.errors import InputError
from d2r.extras import require

__all__ = ["main"]

logger = logging.getLogger("d2r.cli.serve")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.Parser("d2r serve", __doc__)
    parser.add_index()
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name clients reach the server by, accepted in the Host "
                             "header besides IP addresses, localhost and --host (repeatable)")
    parser.add_argument("--allow-writes", action="store_true",
                        help="accept POST /images and DELETE /images/NAME (add, remove)")
    parser.add_argument("--token", default=os.environ.get("D2R_TOKEN"),
                        help="writes need 'Authorization: Bearer TOKEN' (default $D2R_TOKEN); "
                             "required with --allow-writes on an address other than loopback")
    parser.add_argument("--max-upload-mb", type=float, default=20,
                        help="largest accepted upload in MiB (default 20)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="largest accepted image in pixels (default 40000000)")
    parser.add_argument("--top", type=int, default=20, help="results per search (default 20)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="requests computed at once (default: the processors, at most 4)")
    parser.add_argument("--queue", type=int, default=32, metavar="N",
                        help="requests waiting for a worker before 503 (default 32)")
    cli.add_common_args(parser)
    return cli.run(parser, argv, _serve)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    require("serve", "d2r serve")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import uvicorn

    from d2r.service.server import ServeSettings, create_app, default_workers
    from d2r.service.guard import loopback

    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or args.top < 1:
        raise InputError("--max-upload-mb, --max-pixels and --top must be positive")
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1 or args.queue < 0:
        raise InputError(f"--workers must be at least 1 and --queue at least 0, got "
                         f"{workers} and {args.queue}")
    bad = [name for name in args.allowed_host if not name or any(c in name for c in "/ @")]
    if bad:
        raise InputError(f"--allowed-host {bad[0]!r} is not a host name (give it without "
                         f"scheme or path, e.g. --allowed-host photos.example.org)")
    if args.allow_writes and not args.token and not loopback(args.host):
        raise InputError(f"--allow-writes on {args.host} needs --token (or $D2R_TOKEN): "
                         f"anyone who reaches the port could change the index")
    settings = ServeSettings(Path(args.index), allow_writes=args.allow_writes, token=args.token,
                             max_upload_bytes=int(args.max_upload_mb * 2**20),
                             max_pixels=args.max_pixels, top=args.top, host=args.host,
                             allowed_hosts=tuple(args.allowed_host), workers=workers,
                             queue=args.queue)
    sock = _listen(args.host, args.port)
    try:
        app = create_app(settings)
        if settings.allow_writes:
            app.state.service.uploads.folder()  # refuses a symbolic link before serving
        images = len(app.state.service.index)
        print(f"serving {args.index} ({images} images) at {_url(args.host, args.port)} "
              f"(API documentation: /docs; writes {'on' if args.allow_writes else 'off'}; "
              f"{workers} worker{'s' if workers > 1 else ''})", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="debug" if args.verbose
                                               else "warning"))
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, refused in one line when that is impossible."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: not an address of this machine ({exc.strerror})") \
            from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use (another d2r serve?); choose "
                             f"another with --port") from None
        if exc.errno == errno.EACCES:
            raise InputError(f"port {port} on {host} needs administrator rights; choose one "
                             f"above 1023 with --port") from None
        raise InputError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
    return sock


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


if __name__ == "__main__":
    raise SystemExit(main())
