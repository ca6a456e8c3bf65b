"""Who may talk to ``d2r serve``, and who may change its index.

:class:`RequestGuard` is an ASGI middleware that checks, before a byte of the body is read:

- **Host, on every request** (against DNS rebinding: a foreign page whose host name is
  made to resolve to this machine reaches the server as same-origin, but carries its
  own name in ``Host``).  Accepted: IP literals (a rebinding attack needs a name),
  ``localhost``, the ``--host`` the server binds to, and every ``--allowed-host``.  The
  port is not compared: rebinding changes the name, never the port.
- **Writes** (POST and DELETE ``/images``): refused 403 unless writes are allowed; 401
  without ``Authorization: Bearer TOKEN`` when a token is set; 403 when a browser says
  the request comes from another site.  A browser names the page that sent a request in
  ``Origin`` (or, from older browsers, ``Referer``) and, in ``Sec-Fetch-Site``, how it
  relates to the target; the write is same-origin only when the page's ``host:port`` is
  the request's ``Host``.  ``Origin: null`` (a sandboxed frame, a local file) is foreign.
  Clients that are not browsers (curl, requests) send none of these and are accepted.
- **Cross-site searches** (POST ``/search`` with a foreign ``Origin``): refused 403 too,
  so no page can spend this server's processors.

``d2r serve`` refuses to start with writes allowed on an address other than loopback
without a token (:func:`loopback`).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Iterable, Optional
from urllib.parse import urlsplit

from d2r.service.limits import json_response

__all__ = ["RequestGuard", "loopback", "host_name"]

_LOCAL_NAMES = {"localhost", "localhost.localdomain"}


def loopback(host: str) -> bool:
    """Whether the address ``host`` (as given to ``--host``) reaches this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in _LOCAL_NAMES


def host_name(value: str) -> str:
    """The host name of a ``Host`` header value or ``host[:port]``: lower case, without
    the port or an IPv6 literal's brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _netloc(url: str) -> Optional[str]:
    """``host:port`` of an absolute http(s) URL (default ports dropped), else None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return host if port in (None, default) else f"{host}:{port}"


def _same_host(netloc: str, host: str) -> bool:
    """Whether a page at ``netloc`` (``_netloc``) is the server reached as ``Host: host``."""
    host = host.strip().lower()
    for port in (":80", ":443"):
        if host.endswith(port):
            host = host[:-len(port)]
    return netloc == host


class RequestGuard:
    """ASGI middleware applying the module's rules.

    Args:
        bind_host: the ``--host`` the server listens on.
        allowed_hosts: further host names (``--allowed-host``) clients may use.
        allow_writes: accept writes at all.
        token: when set, writes need ``Authorization: Bearer TOKEN``.
    """

    def __init__(self, app, *, bind_host: str, allowed_hosts: Iterable[str] = (),
                 allow_writes: bool = False, token: Optional[str] = None) -> None:
        self.app, self.allow_writes, self.token = app, allow_writes, token
        self.hosts = _LOCAL_NAMES | {host_name(h) for h in (bind_host, *allowed_hosts)}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope["method"], scope["path"],
                                   {k.decode("latin-1").lower(): v.decode("latin-1")
                                    for k, v in scope["headers"]})
            if refusal:
                status, message = refusal
                await json_response(send, status, {"error": message})
                return
        await self.app(scope, receive, send)

    def refusal(self, method: str, path: str, headers: dict) -> Optional[tuple[int, str]]:
        """(status, message) refusing the request, or None to let it through."""
        host = headers.get("host", "")
        name = host_name(host)
        if not (_ip_literal(name) or name in self.hosts):
            return 403, (f"Host {host!r} is not a name of this server; start d2r serve with "
                         f"--allowed-host {name or 'NAME'} to accept it")
        write = method in ("POST", "DELETE") and (path == "/images"
                                                  or path.startswith("/images/"))
        if write and not self.allow_writes:
            return 403, ("this server is read-only: start d2r serve with --allow-writes to add "
                         "or remove images")
        if write and self.token and not hmac.compare_digest(
                headers.get("authorization", "").encode(), f"Bearer {self.token}".encode()):
            return 401, "this server needs 'Authorization: Bearer <token>' for writes"
        if method == "POST" or write:
            foreign = self._foreign(headers, host)
            if foreign:
                return 403, (f"{method} {path} from the page at {foreign} refused: only pages "
                             f"of this server may send it")
        return None

    @staticmethod
    def _foreign(headers: dict, host: str) -> Optional[str]:
        """The page of another site that sent the request, or None."""
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        page = origin if origin is not None else headers.get("referer")
        if page is not None:
            netloc = _netloc(page)
            if netloc is None or not _same_host(netloc, host):
                return page if len(page) <= 200 else page[:200] + "..."
        if site in ("cross-site", "same-site"):
            return f"another site (Sec-Fetch-Site: {site})"
        return None
