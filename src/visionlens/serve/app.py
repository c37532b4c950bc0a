"""The FastAPI app: one HTML page and a small JSON API over :class:`~.explorer.Explorer`.

Errors are JSON ``{"error": "one line"}``, the same text as the CLI's ``error:`` lines: 400 for
bad input (malformed requests and bodies that cannot be parsed included), 404 for anything not
served (unknown routes included), 405 for a method a route does not take, 413 for uploads over the
limits, 503 for new work while the server stops, 500 for a bug (its traceback goes to the server's
log). When the server stops, the explorer's jobs are cancelled and their threads waited for."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from http import HTTPStatus

import anyio
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import VisionlensError
from .explorer import Explorer
from .page import PAGE
from .safety import NotServed, ShuttingDown, TooLarge

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
    for kind, status in ((NotServed, 404), (TooLarge, 413), (ShuttingDown, 503)):
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


def create_app(explorer: Explorer) -> FastAPI:
    """The explorer's app (routes below; run it with uvicorn)."""

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
    def page():
        return PAGE

    @app.get("/api/info")
    def info():
        return explorer.describe()

    @app.get("/api/layers")
    def layers(model: str):
        return explorer.layers(model)

    @app.get("/api/images")
    def images():
        return explorer.image_names()

    @app.get("/api/results")
    def results():
        return explorer.result_runs()

    @app.get("/api/scores")
    def scores(run: str):
        return explorer.scores(run)

    @app.post("/api/upload")
    async def upload(request: Request, file: UploadFile):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > explorer.max_upload_bytes + 64 * 1024:
            raise TooLarge(f"upload: {int(declared):,} bytes is over the limit of {explorer.max_upload_bytes:,} bytes")
        data = await file.read(explorer.max_upload_bytes + 1)
        return explorer.add_upload(data)

    @app.post("/api/predict")
    def predict(req: PredictRequest):
        return explorer.predict(req.model, req.image)

    @app.post("/api/explain")
    def explain(req: ExplainRequest):
        return explorer.explain(req.model, req.image, req.methods, req.layer, req.target, req.cmap)

    @app.post("/api/jobs")
    def start_job(req: ExplainRequest):
        return explorer.explain_job(req.model, req.image, req.methods, req.layer, req.target, req.cmap).describe()

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        return explorer.jobs.get(job_id).describe()

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        return explorer.jobs.cancel(job_id).describe()

    @app.post("/api/similarity")
    def similarity(req: SimilarityRequest):
        return explorer.similarity(req.model, req.a, req.b, req.gallery, req.methods, req.metric, req.top, req.cmap)

    @app.get("/api/record-maps")
    def record_maps(run: str, image: str, model: str, cmap: str | None = None):
        return explorer.record_maps(run, image, model, cmap)

    @app.get("/api/result/{token}/map.png")
    def map_png(token: str, method: str, alpha: float = 0.5):
        return Response(explorer.overlay_png(token, method, alpha), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{_file_stem(method)}.png"'})

    @app.get("/api/result/{token}/maps.npz")
    def maps_npz(token: str):
        return Response(explorer.npz_bytes(token), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="maps.npz"'})

    @app.get("/files/{kind}/{name:path}")
    def served(kind: str, name: str):
        return FileResponse(explorer.served_file(kind, name))

    return app


def _file_stem(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in method) or "map"
