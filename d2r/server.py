"""The query service behind ``d2r serve``: an HTTP API and a web page over one index.

The index is opened once (its arrays memory-mapped), its extractor (and model) built
once, and every query is answered from memory.  Endpoints (JSON unless said)::

    GET    /health          {"status": "ok", "images": N}
    GET    /settings        what the web page needs: writes allowed, token needed, limits
    POST   /search          multipart: image, box?, top?, rerank?, expand?, matches?
                            -> {"results": [{"rank", "name", "score", "inliers"?}], "timing"}
    POST   /images          multipart: image, name?, replace?  -> 201 {"name", "features"}
    DELETE /images/{name}   -> {"name", "removed": true}; 404 for an unknown name
    GET    /images/{name}   the image's thumbnail (JPEG)
    GET    /                the web page (no external resources)
    GET    /docs            OpenAPI documentation (/openapi.json)

Writes (POST and DELETE /images) are refused with 403 unless the server was started
with ``allow_writes``, and with 401 when a token is set and the request lacks
``Authorization: Bearer TOKEN``.  A write is a ``d2r add`` / ``d2r remove`` (one
atomic generation); the service then opens the new generation and swaps it in, so a
search that started before sees the old one and no search sees a mix.  Uploaded
images are kept in ``INDEX/uploads/``.  Every error is ``{"error": message}`` with a
4xx status; an unexpected one is a 500 with a generic message (the traceback goes to
the server log only).
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from d2r import __version__
from d2r.checks import parse_box
from d2r.errors import USER_ERRORS
from d2r.pipeline.run import run_image
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.update import UnknownImagesError, add_images, live_names, remove_images
from d2r.report import thumbnail
from d2r.sources import ImageSource

__all__ = ["ServeSettings", "IndexService", "ApiError", "create_app", "UPLOADS"]

logger = logging.getLogger(__name__)

UPLOADS = "uploads"
"""Folder of the index directory where images added through the API are kept."""

_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")


@dataclass(frozen=True)
class ServeSettings:
    """How ``d2r serve`` runs.

    Attributes:
        index: the index directory.
        allow_writes: accept POST / DELETE ``/images``.
        token: when set, writes need ``Authorization: Bearer <token>``.
        max_upload_bytes: largest accepted upload.
        max_pixels: largest accepted image (width x height).
        top: results per search unless the request says otherwise.
        max_top: the most results a request may ask for.
        max_matches: matched point pairs returned per verified result (``matches=1``).
        thumbnail_side: longest side of the thumbnails of ``GET /images/{name}``.
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


class ApiError(Exception):
    """A request the service refuses: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class IndexService:
    """The opened index, swapped for the new generation after each write."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.searcher = Searcher(settings.index)
        self.searcher.extractor  # built (and a model loaded) once, before the first query
        self._write_lock = threading.Lock()
        self.scratch = Path(tempfile.mkdtemp(prefix="d2r-serve-"))

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def reopen(self) -> None:
        """Open the index's current generation and make it the one searches use."""
        searcher = Searcher(self.settings.index)
        searcher._extractor = self.searcher._extractor  # the same recorded extractor
        self.searcher = searcher

    # ------------------------------------------------------------------ requests

    def receive(self, upload: UploadFile) -> Path:
        """The uploaded image saved to a scratch file, refused when too large, not an image,
        or of too many pixels."""
        limit = self.settings.max_upload_bytes
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"{upload.filename or 'the upload'} is larger than the "
                                f"{limit / 2**20:.0f} MiB upload limit")
        if not data:
            raise ApiError(400, f"{upload.filename or 'the upload'} is empty")
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError):
            raise ApiError(400, f"{upload.filename or 'the upload'} is not an image d2r can "
                                f"read (JPEG, PNG, WebP, TIFF, ...)") from None
        if width * height > self.settings.max_pixels:
            raise ApiError(413, f"{upload.filename or 'the upload'} has {width}x{height} "
                                f"pixels, more than the limit of {self.settings.max_pixels}")
        file = Path(tempfile.mkstemp(dir=self.scratch, suffix=".img")[1])
        file.write_bytes(data)
        return file

    def search(self, image: Path, *, box: Optional[str], top: int, rerank: Optional[int],
               matches: bool, expand: Optional[int] = None) -> dict:
        """The ranked results of one query image and the seconds of each stage."""
        if not 1 <= top <= self.settings.max_top:
            raise ApiError(400, f"top must be between 1 and {self.settings.max_top}, got {top}")
        if rerank is not None and not 0 <= rerank <= 10_000:
            raise ApiError(400, f"rerank must be between 0 and 10000, got {rerank}")
        if expand is not None and not 0 <= expand <= 1000:
            raise ApiError(400, f"expand must be between 0 and 1000, got {expand}")
        searcher, overrides = self.searcher, []
        if rerank is not None:
            overrides.append(f"verification.rerank={rerank}")
        if expand is not None:
            overrides.append(f"search.query_expansion={expand}")
        if overrides:
            searcher = searcher.configured(overrides)
        box_values = None if box in (None, "") else parse_box(box)
        timing: dict = {}
        start = time.perf_counter()
        rows = run_image(searcher, image, box_values, timing=timing,
                         k=max(top, searcher.config.search.top_k),
                         matches=self.settings.max_matches if matches else 0)
        timing = {f"{stage}_s": round(seconds, 6) for stage, seconds in timing.items()}
        timing["total_s"] = round(time.perf_counter() - start, 6)
        return {"results": rows[:top], "timing": timing}

    def check_write(self, authorization: Optional[str]) -> None:
        """Refuse a write unless writes are allowed and the request carries the token."""
        if not self.settings.allow_writes:
            raise ApiError(403, "this server is read-only: start d2r serve with --allow-writes "
                                "to add or remove images")
        token = self.settings.token
        if token and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise ApiError(401, "this server needs 'Authorization: Bearer <token>' for writes")

    def add(self, image: Path, name: str, *, replace: bool) -> dict:
        """Add an uploaded image as ``name`` (kept in ``INDEX/uploads``)."""
        if not _NAME.match(name) or name in (".", "..") or name.startswith("."):
            raise ApiError(400, f"image name {name!r} must be 1-200 characters without '/', "
                                f"'\\' or control characters, not starting with '.'")
        uploads = self.settings.index / UPLOADS
        with self._write_lock:
            if name in live_names(self.searcher) and not replace:
                raise ApiError(409, f"{name!r} is already in the index (send replace=true to "
                                    f"replace it)")
            uploads.mkdir(exist_ok=True)
            kept = uploads / name
            os.replace(image, kept)
            summary = add_images(self.settings.index,
                                 ImageSource.checked([name], [kept], root=uploads.resolve()),
                                 replace=replace, show_progress=False)
            self.reopen()
        searcher = self.searcher
        image_id = max(i for i, n in enumerate(searcher.names) if n == summary.added[0])
        return {"name": name, "features": len(searcher.database_features(image_id))}

    def remove(self, name: str) -> dict:
        with self._write_lock:
            try:
                remove_images(self.settings.index, [name])
            except UnknownImagesError:
                raise ApiError(404, f"no image named {name!r} in the index") from None
            self.reopen()
        return {"name": name, "removed": True}

    def thumbnail(self, name: str) -> bytes:
        """The JPEG thumbnail of indexed image ``name``."""
        path = self.searcher.image_file(name)
        if path is None or not path.is_file():
            raise ApiError(404, f"no image file for {name!r} (not in the index, or the file "
                                f"has moved since it was indexed)")
        image, _ = thumbnail(path, self.settings.thumbnail_side, 0)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=80)
        return buffer.getvalue()


def _page() -> str:
    return resources.files("d2r").joinpath("web/index.html").read_text(encoding="utf-8")


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving ``settings.index``."""
    service = IndexService(settings)
    app = FastAPI(title="d2r", version=__version__,
                  description="Landmark and object retrieval over one d2r index.")
    app.state.service = service
    app.router.add_event_handler("shutdown", service.close)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": f"bad request ({problems})"}, status_code=400)

    async def _user_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(exc).split())}, status_code=400)

    for error in USER_ERRORS:  # ConfigError is an InputError
        app.add_exception_handler(error, _user_error)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error answering %s %s", request.method, request.url.path,
                     exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server "
                                      f"log"}, status_code=500)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "images": service.searcher.num_images}

    @app.get("/settings")
    def page_settings() -> dict:
        searcher = service.searcher
        return {"images": searcher.num_images, "writes": settings.allow_writes,
                "token_required": bool(settings.token), "top": settings.top,
                "rerank": searcher.config.verification.rerank,
                "min_inliers": searcher.config.verification.min_inliers,
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels, "kind": searcher.manifest["kind"]}

    @app.post("/search")
    def search(image: UploadFile = File(...), box: Optional[str] = Form(None),
               top: Optional[int] = Form(None), rerank: Optional[int] = Form(None),
               expand: Optional[int] = Form(None), matches: bool = Form(False)) -> dict:
        """Rank the indexed images for a query photo (optionally a box of it); ``rerank``
        and ``expand`` override the index's verification depth and query expansion."""
        file = service.receive(image)
        try:
            return service.search(file, box=box, top=settings.top if top is None else top,
                                  rerank=rerank, matches=matches, expand=expand)
        finally:
            file.unlink(missing_ok=True)

    @app.post("/images", status_code=201)
    def add_image(image: UploadFile = File(...), name: Optional[str] = Form(None),
                  replace: bool = Form(False),
                  authorization: Optional[str] = Header(None)) -> dict:
        """Add a photo to the index (needs --allow-writes)."""
        service.check_write(authorization)
        file = service.receive(image)
        try:
            return service.add(file, name or Path(image.filename or "").name, replace=replace)
        finally:
            file.unlink(missing_ok=True)

    @app.delete("/images/{name:path}")
    def delete_image(name: str, authorization: Optional[str] = Header(None)) -> dict:
        """Remove a photo from the index (needs --allow-writes)."""
        service.check_write(authorization)
        return service.remove(name)

    @app.get("/images/{name:path}")
    def get_image(name: str) -> Response:
        """The thumbnail of an indexed photo."""
        return Response(service.thumbnail(name), media_type="image/jpeg",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

    return app
