"""Bounds on what ``d2r serve`` takes in: request bodies, requests in flight, worker threads.

:class:`RequestLimits` is an ASGI middleware.  A body whose ``Content-Length`` exceeds
the limit is answered 413 before a byte of it is read; a body without one (chunked) is
counted as it arrives and refused the moment it passes the limit, so nothing beyond the
limit is read or spooled.  The limit covers the whole body: every multipart part and its
headers.  Requests on the heavy routes (searches, uploads, removals, thumbnails) are
admitted while fewer than ``capacity`` are in flight and answered 503 with
``Retry-After`` otherwise, before their body is read.  :class:`WorkPool` runs their work
on a fixed number of threads, so at most ``workers`` decode images and search at once
while the other admitted ones wait in its queue holding only their spooled upload.
"""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

__all__ = ["RequestLimits", "WorkPool", "json_response", "FORM_ALLOWANCE"]

FORM_ALLOWANCE = 64 << 10
"""Bytes a request body may hold beyond the upload limit: the form fields of a search or
an upload and the multipart boundaries and headers."""


async def json_response(send, status: int, body: dict, headers: Iterable[tuple[str, str]] = ()
                        ) -> None:
    """Send a complete JSON response on an ASGI ``send`` channel."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            *((k.encode(), v.encode()) for k, v in headers)]})
    await send({"type": "http.response.body", "body": data})


class _TooLarge(Exception):
    """The body passed the limit while it was read."""


class RequestLimits:
    """ASGI middleware: refuse bodies over ``max_body`` bytes (413) and, on the routes
    ``heavy(method, path)`` says, more than ``capacity`` requests in flight (503)."""

    def __init__(self, app, *, max_body: int, capacity: int,
                 heavy: Callable[[str, str], bool], retry_after_s: int = 1) -> None:
        self.app, self.max_body, self.capacity = app, max_body, capacity
        self.heavy, self.retry_after_s = heavy, retry_after_s
        self.in_flight = 0

    def _too_large(self) -> str:
        return (f"the request is larger than the {self.max_body / 2**20:.1f} MiB limit (the "
                f"upload limit and its form fields)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await json_response(send, 413 if length.isdigit() else 400,
                                {"error": self._too_large() if length.isdigit()
                                 else "bad request (Content-Length is not a number)"},
                                [("connection", "close")])
            return
        if not self.heavy(scope["method"], scope["path"]):
            await self._limited(scope, receive, send)
            return
        if self.in_flight >= self.capacity:
            await json_response(send, 503, {"error": f"the server is busy ({self.in_flight} "
                                                     f"requests in progress); try again shortly"},
                                [("retry-after", str(self.retry_after_s))])
            return
        self.in_flight += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _limited(self, scope, receive, send) -> None:
        """Run the app with the body counted; past the limit, whatever the app answers is
        replaced by the 413."""
        received, over, started = 0, False, False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if over:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await json_response(send, 413, {"error": self._too_large()},
                                [("connection", "close")])


class WorkPool:
    """A fixed pool of ``workers`` threads for the heavy work of requests."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d2r-work")

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on one of the pool's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
