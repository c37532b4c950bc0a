"""The FastAPI app: one HTML page and a small JSON API over :class:`~.explorer.Explorer`.

Errors are JSON ``{"error": "one line"}``, the same text as the CLI's ``error:`` lines: 400 for
bad input (malformed requests and bodies that cannot be parsed included), 403 for a request whose
``Host`` is not this server's (DNS rebinding) or a state-changing one from another site's page
(``Origin``), 404 for anything not served (unknown routes included), 405 for a method a route does
not take, 413 for uploads over the limits (refused while the body streams in), 429 for a job over
the cap, 503 for new work while the server stops or a device busy for too long, 500 for a bug (its
traceback goes to the server's log). When the server stops, the explorer's jobs are cancelled and
waited for.

The page, the static files and the job polls never wait for a device: they are ``async`` routes
that touch no lock, and the routes that compute run in worker threads of their own (``COMPUTE``),
apart from the light ones (``LIGHT``)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from contextlib import asynccontextmanager
from http import HTTPStatus
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import InputError, VisionlensError
from .explorer import Explorer
from .page import PAGE
from .safety import NotServed, Refused, ShuttingDown, TooLarge, TooMany, too_large

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
FORM_SLACK = 64 * 1024  # multipart headers and boundaries around the uploaded file
COMPUTE_THREADS = 8  # requests that compute (most wait for their device's lock)
LIGHT_THREADS = 8  # requests that read folders or decode uploads

UNPARSED_BODY = "There was an error parsing the body"  # FastAPI's detail for a body it could not decode


class ExplainRequest(BaseModel):
    model: str
    image: str
    methods: list[str]
    layer: str | None = None
    target: str | None = None
    cmap: str | None = None


class SimilarityRequest(BaseModel):
    model: str
    a: str
    b: str | None = None
    gallery: list[str] | None = None
    methods: list[str] = ["sfam"]
    metric: str = "cosine"
    top: int = 5
    cmap: str | None = None


class PredictRequest(BaseModel):
    model: str
    image: str


def _status(err: VisionlensError) -> int:
    for kind, status in ((NotServed, 404), (TooLarge, 413), (ShuttingDown, 503), (TooMany, 429), (Refused, 403)):
        if isinstance(err, kind):
            return status
    return 400


def _one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _printable(text: str, limit: int = 200) -> str:
    """``text`` (e.g. a decoded URL path) on one line: control characters escaped, at most ``limit`` characters."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _http_message(request: Request, err: StarletteHTTPException) -> str:
    """One line for the routing and parsing errors that FastAPI and Starlette raise themselves."""
    where = f"{request.method} {_printable(request.url.path)}"
    if err.status_code == 404 and err.detail == HTTPStatus.NOT_FOUND.phrase:
        return f"not served: {where} (no such page or API route)"
    if err.status_code == 405:
        allowed = (err.headers or {}).get("Allow") or (err.headers or {}).get("allow")
        return f"method not allowed: {where}" + (f"; this route takes {allowed}" if allowed else "")
    if err.status_code == 400 and err.detail == UNPARSED_BODY:
        return "bad request: the body could not be parsed (malformed JSON or form data, or nested too deeply)"
    detail = err.detail if isinstance(err.detail, str) else ""
    try:
        phrase = HTTPStatus(err.status_code).phrase
    except ValueError:
        phrase = f"HTTP {err.status_code}"
    text = _printable(" ".join(detail.split()), 300) or phrase
    return f"bad request: {text}" if err.status_code == 400 and detail else text


def _validation_message(err: RequestValidationError) -> str:
    """One line for the first problem pydantic found in a request."""
    first = err.errors()[0] if err.errors() else {}
    loc, kind = tuple(first.get("loc", ())), first.get("type", "")
    if kind == "json_invalid":
        why = (first.get("ctx") or {}).get("error")
        return "bad request: the body is not valid JSON" + (f" ({_printable(str(why), 200)})" if why else "")
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "bad request: the body must be a JSON object (Content-Type: application/json)"
    where = ".".join(str(part) for part in loc if part != "body") or "request"
    msg = _printable(" ".join(str(first.get("msg", "invalid")).split()), 300)
    return f"bad request: {_printable(where, 200)}: {msg}"


def _split_host(value: str) -> str:
    """The host of a ``Host`` header or origin netloc, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def host_allowed(header: str, bound: str) -> bool:
    """Whether a request's ``Host`` names this server: a loopback name or address, the ``--host``
    it listens on, or (listening on every interface: 0.0.0.0, ::) any IP address; a name that
    resolves elsewhere (DNS rebinding) is not."""
    host, bound = _split_host(header), _split_host(bound)
    if host in LOOPBACK_NAMES or host == bound or (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
        return True
    return bound in ("0.0.0.0", "::") and _is_ip(host)


def origin_allowed(origin: str | None, host_header: str) -> bool:
    """Whether a state-changing request may come from ``origin``: none given, or this server's own."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()


class Guard:
    """ASGI middleware: a 403 for a foreign ``Host`` (DNS rebinding) and for a POST (or other
    state-changing request) whose ``Origin`` is another site's (cross-site form posts)."""

    def __init__(self, app, bound: str):
        self.app, self.bound = app, bound

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host", "")
            why = None
            if not host_allowed(host, self.bound):
                why = f"refused: Host '{_printable(host, 100)}' is not this server's (open it as http://127.0.0.1:PORT/)"
            elif scope["method"] not in SAFE_METHODS and not origin_allowed(headers.get("origin"), host):
                why = f"refused: a {scope['method']} from another site's page (Origin '{_printable(headers['origin'], 100)}')"
            if why:
                await JSONResponse({"error": why}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def upload_file(request: Request, max_bytes: int) -> bytes:
    """The ``file`` field of a multipart upload, read while the body streams in: a 413 as soon as
    the declared or received body is over the limit (nothing more is read)."""
    limit = max_bytes + FORM_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(max_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InputError("bad request: send the image as multipart/form-data in a field named 'file'")

    async def bounded():
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(max_bytes)
            yield chunk

    parser = MultiPartParser(request.headers, bounded(), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise InputError(f"bad request: the upload could not be parsed ({_printable(str(err), 200)})") from None
    file = form.get("file")
    try:
        if not isinstance(file, UploadFile):
            raise InputError("bad request: file: give the image in a multipart form field named 'file'")
        return await file.read(max_bytes + 1)
    finally:
        await form.close()


def create_app(explorer: Explorer, host: str = "127.0.0.1") -> FastAPI:
    """The explorer's app (routes below; run it with uvicorn, listening on ``host``: the requests'
    ``Host`` must name it, or loopback)."""
    compute, light = anyio.CapacityLimiter(COMPUTE_THREADS), anyio.CapacityLimiter(LIGHT_THREADS)

    async def computed(fn, *args):
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=compute)

    async def read(fn, *args):
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=light)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # When the server stops: cancel the jobs and wait for their threads, so that no torch work
        # is still running when the interpreter shuts down. The explorer stays usable (another app
        # may serve it); `serve` closes it before it exits.
        try:
            yield
        except asyncio.CancelledError:
            # stopped at once (uvicorn's forced exit: a second Ctrl-C), the loop is being torn
            # down: stop the jobs all the same, and send no traceback to the log
            explorer.stop_jobs()
            return
        await anyio.to_thread.run_sync(explorer.stop_jobs)  # off the event loop

    app = FastAPI(title="visionlens explorer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.explorer = explorer
    app.add_middleware(Guard, bound=host)

    @app.exception_handler(VisionlensError)
    async def visionlens_error(request: Request, err: VisionlensError):
        return JSONResponse({"error": _one_line(err)}, status_code=_status(err))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        return JSONResponse({"error": _validation_message(err)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)  # unknown routes, wrong methods, bodies that cannot be parsed
    async def http_error(request: Request, err: StarletteHTTPException):
        return JSONResponse({"error": _http_message(request, err)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):  # the traceback stays in the server's log
        return JSONResponse({"error": f"internal error ({type(err).__name__}: {_one_line(err)})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/api/info")
    async def info():
        return await read(explorer.describe)

    @app.get("/api/layers")
    async def layers(model: str):
        return await computed(explorer.layers, model)

    @app.get("/api/images")
    async def images():
        return await read(explorer.image_names)

    @app.get("/api/results")
    async def results():
        return await read(explorer.result_runs)

    @app.get("/api/scores")
    async def scores(run: str):
        return await read(explorer.scores, run)

    @app.post("/api/upload")
    async def upload(request: Request):
        data = await upload_file(request, explorer.max_upload_bytes)
        return await read(explorer.add_upload, data)

    @app.post("/api/predict")
    async def predict(req: PredictRequest):
        return await computed(explorer.predict, req.model, req.image)

    @app.post("/api/explain")
    async def explain(req: ExplainRequest):
        return await computed(explorer.explain, req.model, req.image, req.methods, req.layer, req.target, req.cmap)

    @app.post("/api/jobs")
    async def start_job(req: ExplainRequest):
        job = await read(explorer.explain_job, req.model, req.image, req.methods, req.layer, req.target, req.cmap)
        return job.describe()

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str):
        return explorer.jobs.get(job_id).describe()

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str):
        return explorer.jobs.cancel(job_id).describe()

    @app.post("/api/similarity")
    async def similarity(req: SimilarityRequest):
        return await computed(explorer.similarity, req.model, req.a, req.b, req.gallery, req.methods, req.metric,
                              req.top, req.cmap)

    @app.get("/api/record-maps")
    async def record_maps(run: str, image: str, model: str, cmap: str | None = None):
        return await computed(explorer.record_maps, run, image, model, cmap)

    @app.get("/api/result/{token}/map.png")
    async def map_png(token: str, method: str, alpha: float = 0.5):
        return Response(await read(explorer.overlay_png, token, method, alpha), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{_file_stem(method)}.png"'})

    @app.get("/api/result/{token}/maps.npz")
    async def maps_npz(token: str):
        return Response(await read(explorer.npz_bytes, token), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="maps.npz"'})

    @app.get("/files/{kind}/{name:path}")
    async def served(kind: str, name: str):
        return FileResponse(explorer.served_file(kind, name))

    return app


def _file_stem(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in method) or "map"
