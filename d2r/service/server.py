"""The query service behind ``d2r serve``: an HTTP API and a web page over one index.

The index is opened once as a :class:`d2r.Index` (its arrays memory-mapped), its
extractor (and model) built once, and every query is answered from memory; searches,
adds and removes are that object's methods, so the server answers what the Python API
and ``d2r query`` answer.  Endpoints (JSON unless said)::

    GET    /health          {"status": "ok", "images": N}
    GET    /settings        what the web page needs: writes allowed, token needed, limits,
                            the verification decision and its rule in words
    POST   /search          multipart: image, box?, top?, rerank?, expand?, matches?
                            -> {"results": [{"rank", "name", "score", "verified", "inliers"?,
                                "verification_score"?}], "timing"}
    POST   /images          multipart: image, name?, replace?  -> 201 {"name", "features"}
    DELETE /images/{name}   -> {"name", "removed": true}; 404 for an unknown name
    GET    /images/{name}   the image's thumbnail (JPEG)
    GET    /                the web page (no external resources)
    GET    /docs            OpenAPI documentation (/openapi.json)

Who may call what (Host, Origin, writes, token) is :mod:`d2r.service.guard`; the bounds on
bodies, requests in flight and worker threads are :mod:`d2r.service.limits`; uploaded
images and ``INDEX/uploads/`` are :mod:`d2r.service.uploads`.

A write is a ``d2r add`` / ``d2r remove`` (one atomic generation).  Every request first
compares ``INDEX/index.json`` (inode, size, mtime) with the one of the generation it
serves and, when it changed (a write of this server, or ``d2r add`` / ``remove`` /
``compact`` / ``build-index`` from the command line), opens the committed generation
and swaps it in (:meth:`d2r.Index.refresh`): a search that started before finishes on
the old one and no search sees a mix.  Every error is ``{"error": message}`` naming the uploaded file by its
client name, never a path of the server; a writer lock held by another process is 409;
an unexpected error is a 500 with a generic message (the traceback goes to the log).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from fastapi import FastAPI, File, Form, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from d2r import __version__
from d2r.checks import parse_box
from d2r.errors import USER_ERRORS, DiskFullError, disk_full
from d2r.index.layout import MANIFEST, WriterBusyError
from d2r.spatial.decision import error_rate, rule
from d2r.api import Index
from d2r.pipeline.update import UnknownImagesError
from d2r.report.drawing import thumbnail
from d2r.service.guard import RequestGuard
from d2r.service.limits import FORM_ALLOWANCE, RequestLimits, WorkPool
from d2r.service.uploads import UPLOADS, UploadError, Uploads, check_name, read_upload

__all__ = ["ServeSettings", "IndexService", "ApiError", "create_app", "UPLOADS",
           "default_workers"]

logger = logging.getLogger(__name__)

_ABSOLUTE = re.compile(r"(?<![\w/.:-])(?:/[^\s'\"/:,;()]+){2,}/?")
"""An absolute path of at least two components (scrubbed from error messages)."""


def default_workers() -> int:
    """Worker threads by default: the processors this process may use, at most 4 (each
    search also verifies on several threads)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeSettings:
    """How ``d2r serve`` runs.

    Attributes:
        index: the index directory.
        allow_writes: accept POST / DELETE ``/images``.
        token: when set, writes need ``Authorization: Bearer <token>``.
        max_upload_bytes: largest accepted upload (the whole request body may hold
            :data:`~d2r.service.limits.FORM_ALLOWANCE` more).
        max_pixels: largest accepted image (width x height).
        top: results per search unless the request says otherwise.
        max_top: the most results a request may ask for.
        max_matches: matched point pairs returned per re-ranked result (``matches=1``).
        thumbnail_side: longest side of the thumbnails of ``GET /images/{name}``.
        host: the address the server listens on (accepted in ``Host``).
        allowed_hosts: further host names clients may reach the server by.
        workers: threads searching (and adding, thumbnailing) at once.
        queue: requests admitted beyond ``workers`` to wait for a thread; more are 503.
    """

    index: Path
    allow_writes: bool = False
    token: Optional[str] = None
    max_upload_bytes: int = 20 << 20
    max_pixels: int = 40_000_000
    top: int = 20
    max_top: int = 1000
    max_matches: int = 300
    thumbnail_side: int = 320
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    workers: int = field(default_factory=default_workers)
    queue: int = 32


class ApiError(Exception):
    """A request the service refuses: an HTTP status, a message and extra headers."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _status(exc: BaseException) -> int:
    """The HTTP status of a user error: 507 for a full disk, 400 otherwise."""
    return 507 if isinstance(exc, DiskFullError) or disk_full(exc) else 400


def _label(filename: Optional[str]) -> str:
    """How messages name an upload: its client file name, else "the uploaded image"."""
    name = Path(filename or "").name
    return name[:100] if name else "the uploaded image"


class IndexService:
    """The committed generation of the index, reopened whenever ``index.json`` changes."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.uploads = Uploads(settings.index)
        self._write_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._stamp = self._manifest_stamp()
        self._retry_at = 0.0
        self.index = Index(settings.index)
        self.index.warm_up()  # the extractor built (a model loaded) before the first query
        self._searching, self._searching_lock = 0, threading.Lock()
        index = settings.index
        self._paths = sorted({str(index.absolute()), str(index.resolve())}, key=len,
                             reverse=True)

    def close(self) -> None:
        self.index.close()

    # -------------------------------------------------------------- the generation

    def _manifest_stamp(self) -> Optional[tuple]:
        try:
            st = os.stat(self.settings.index / MANIFEST)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def current(self) -> Index:
        """The index at its committed generation (refreshed when ``index.json`` changed;
        a failed refresh keeps the generation opened before and is retried a second later)."""
        stamp = self._manifest_stamp()
        if stamp == self._stamp or stamp is None or time.monotonic() < self._retry_at:
            return self.index
        with self._open_lock:
            stamp = self._manifest_stamp()
            if stamp != self._stamp and stamp is not None:
                try:
                    self.index.refresh()
                    self._stamp = stamp
                    logger.info("index.json changed: now answering from the committed index "
                                "(%d images)", len(self.index))
                except Exception as exc:  # keep answering from the generation opened before
                    self._retry_at = time.monotonic() + 1.0
                    logger.warning("could not open the index's new generation (%s); still "
                                   "answering from the one opened before", exc)
        return self.index

    # ------------------------------------------------------------------ messages

    def scrub(self, message: str, labels: Optional[dict] = None) -> str:
        """``message`` in one line without a path of this machine: the files of
        ``labels`` by their label, paths in the index relative to it, others by their name."""
        message = " ".join(str(message).split())
        for path, label in sorted((labels or {}).items(), key=lambda p: -len(str(p[0]))):
            message = message.replace(str(path), label)
        for path in self._paths:
            message = re.sub(rf"\bindex {re.escape(path)}(?![^\s'\":;,)])", "the index",
                             message)
            message = re.sub(re.escape(path) + r"/+", "", message)
            message = message.replace(path, "the index")
        return _ABSOLUTE.sub(lambda m: Path(m.group()).name or "/", message)

    # ------------------------------------------------------------------ requests

    def _receive(self, upload: BinaryIO, label: str) -> bytes:
        limit = self.settings.max_upload_bytes
        data = upload.read(limit + 1)
        read_upload(data, label, max_bytes=limit, max_pixels=self.settings.max_pixels)
        return data

    @contextlib.contextmanager
    def _verifying_threads(self) -> Iterator[int]:
        """Threads one search verifies with: the cores shared by the searches running now
        (one search alone uses them all; the worker pool bounds how many share them)."""
        with self._searching_lock:
            self._searching += 1
            threads = max(1, (os.cpu_count() or 1) // self._searching)
        try:
            yield threads
        finally:
            with self._searching_lock:
                self._searching -= 1

    def search(self, upload: BinaryIO, filename: Optional[str], *, box: Optional[str], top: int,
               rerank: Optional[int], matches: bool, expand: Optional[int] = None) -> dict:
        """The ranked results of one query image and the seconds of each stage."""
        if not 0 <= top <= self.settings.max_top:
            raise ApiError(400, f"top must be between 0 (all) and {self.settings.max_top}, "
                                f"got {top}")
        if rerank is not None and not 0 <= rerank <= 10_000:
            raise ApiError(400, f"rerank must be between 0 and 10000, got {rerank}")
        if expand is not None and not 0 <= expand <= 1000:
            raise ApiError(400, f"expand must be between 0 and 1000, got {expand}")
        label = _label(filename)
        data = self._receive(upload, label)
        index, overrides = self.current(), []
        if top == 0 and len(index) > self.settings.max_top:
            raise ApiError(400, f"top=0 asks for all {len(index)} images, more than "
                                f"the limit of {self.settings.max_top} results per request")
        if rerank is not None:
            overrides.append(f"verification.rerank={rerank}")
        if expand is not None:
            overrides.append(f"search.query_expansion={expand}")
        box_values = None if box in (None, "") else parse_box(box)
        timing: dict = {}
        start = time.perf_counter()
        try:
            with self._verifying_threads() as threads:
                hits = index.search(data, box=box_values, top=top, settings=overrides,
                                    label=label, timing=timing, workers=threads)
        except USER_ERRORS as exc:
            raise UploadError(_status(exc), self.scrub(str(exc))) from None
        timing = {f"{stage}_s": round(seconds, 6) for stage, seconds in timing.items()}
        timing["total_s"] = round(time.perf_counter() - start, 6)
        limit = self.settings.max_matches if matches else 0
        return {"results": [hit.row(matches=limit) for hit in hits], "timing": timing}

    @staticmethod
    def _busy() -> ApiError:
        """The answer while another process holds the index's writer lock."""
        return ApiError(409, "the index is being built or updated by another d2r process; "
                             "try again when it has finished", {"Retry-After": "5"})

    def add(self, upload: BinaryIO, filename: Optional[str], name: Optional[str], *,
            replace: bool) -> dict:
        """Add an uploaded image as ``name`` (kept as ``INDEX/uploads/NAME``); a failed add
        or replace leaves the index and ``uploads/`` as they were."""
        label = _label(filename)
        name = name or Path(filename or "").name
        check_name(name)
        data = self._receive(upload, label)
        with self._write_lock:
            if name in self.current().names and not replace:
                raise ApiError(409, f"{name!r} is already in the index (send replace=true to "
                                    f"replace it)")
            staged = self.uploads.stage(data)
            del data
            try:
                self.current().add([staged], names=[name], replace=replace,
                                   kept_in=self.uploads.folder(), progress=False)
            except WriterBusyError:
                staged.unlink(missing_ok=True)
                raise self._busy() from None
            except USER_ERRORS as exc:
                staged.unlink(missing_ok=True)
                raise UploadError(_status(exc), self.scrub(str(exc), {staged: label})) from None
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            self.uploads.keep(staged, name)
            index = self.current()
        return {"name": name, "features": len(index.features(name))}

    def remove(self, name: str) -> dict:
        """Remove image ``name`` (and its file, when it is one of ``uploads/``)."""
        with self._write_lock:
            file = self.current().image_file(name)
            try:
                self.current().remove([name])
            except WriterBusyError:
                raise self._busy() from None
            except UnknownImagesError:
                raise ApiError(404, f"no image named {name!r} in the index") from None
            if self.uploads.holds(file) and name not in self.current().names:
                self.uploads.discard(name)
        return {"name": name, "removed": True}

    def thumbnail(self, name: str) -> bytes:
        """The JPEG thumbnail of indexed image ``name``."""
        path = self.current().image_file(name)
        if path is None or not path.is_file():
            raise ApiError(404, f"no image file for {name!r} (not in the index, or the file "
                                f"has moved since it was indexed)")
        image, _ = thumbnail(path, self.settings.thumbnail_side, 0)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=80)
        return buffer.getvalue()


def _page() -> str:
    return resources.files("d2r").joinpath("service/web/index.html").read_text(encoding="utf-8")


def _heavy(method: str, path: str) -> bool:
    """Routes whose work runs on the worker pool (admitted while there is room)."""
    return path == "/search" or path == "/images" or path.startswith("/images/")


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving ``settings.index``."""
    service = IndexService(settings)
    pool = WorkPool(settings.workers)
    app = FastAPI(title="d2r", version=__version__,
                  description="Landmark and object retrieval over one d2r index.")
    app.state.service = service
    app.router.add_event_handler("shutdown", service.close)
    app.router.add_event_handler("shutdown", pool.close)
    app.add_middleware(RequestLimits, max_body=settings.max_upload_bytes + FORM_ALLOWANCE,
                       capacity=settings.workers + settings.queue, heavy=_heavy)
    app.add_middleware(RequestGuard, bind_host=settings.host,
                       allowed_hosts=settings.allowed_hosts, allow_writes=settings.allow_writes,
                       token=settings.token)
    _answer_errors(app, service)
    _add_routes(app, service, pool, settings)
    return app


def _answer_errors(app: FastAPI, service: IndexService) -> None:
    """Every error as ``{"error": one line}`` with its status; a user's error says what was
    wrong with the request, an internal one only its type (the log has the rest)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": service.scrub(str(exc))}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": f"bad request ({problems})"}, status_code=400)

    async def _user_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": service.scrub(str(exc))}, status_code=_status(exc))

    for error in USER_ERRORS:  # ConfigError is an InputError
        app.add_exception_handler(error, _user_error)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        if disk_full(exc):
            return JSONResponse({"error": "no space left on the server's disk; the index is "
                                          "unchanged"}, status_code=507)
        logger.error("internal error answering %s %s", request.method, request.url.path,
                     exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server "
                                      f"log"}, status_code=500)


def _add_routes(app: FastAPI, service: IndexService, pool: WorkPool,
                settings: ServeSettings) -> None:
    """The page, its settings, search, and the writes (behind the bearer token, if any)."""
    bearer = Security(HTTPBearer(auto_error=False,
                                 description="the --token of d2r serve, when it has one"))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "images": len(service.current())}

    @app.get("/settings")
    def page_settings() -> dict:
        index = service.current()
        verification = index.settings.verification
        return {"images": len(index), "writes": settings.allow_writes,
                "token_required": bool(settings.token), "top": settings.top,
                "rerank": verification.rerank, "min_inliers": verification.min_inliers,
                "decision": verification.decision, "rule": rule(verification),
                "error_rate": error_rate(verification),
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels, "kind": index.kind}

    @app.post("/search")
    async def search(image: UploadFile = File(...), box: Optional[str] = Form(None),
                     top: Optional[int] = Form(None), rerank: Optional[int] = Form(None),
                     expand: Optional[int] = Form(None), matches: bool = Form(False)) -> dict:
        """Rank the indexed images for a query photo (optionally a box of it); ``rerank``
        and ``expand`` override the index's verification depth and query expansion."""
        return await pool.run(service.search, image.file, image.filename, box=box,
                              top=settings.top if top is None else top, rerank=rerank,
                              matches=matches, expand=expand)

    @app.post("/images", status_code=201, dependencies=[bearer])
    async def add_image(image: UploadFile = File(...), name: Optional[str] = Form(None),
                        replace: bool = Form(False)) -> dict:
        """Add a photo to the index (needs --allow-writes)."""
        return await pool.run(service.add, image.file, image.filename, name, replace=replace)

    @app.delete("/images/{name:path}", dependencies=[bearer])
    async def delete_image(name: str) -> dict:
        """Remove a photo from the index (needs --allow-writes)."""
        return await pool.run(service.remove, name)

    @app.get("/images/{name:path}")
    async def get_image(name: str) -> Response:
        """The thumbnail of an indexed photo."""
        return Response(await pool.run(service.thumbnail, name), media_type="image/jpeg",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

