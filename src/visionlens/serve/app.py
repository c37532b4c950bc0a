"""The FastAPI app: one HTML page and a small JSON API over :class:`~.explorer.Explorer`.

Errors are JSON ``{"error": "one line"}``, the same text as the CLI's ``error:`` lines: 400 for
bad input (malformed requests included), 404 for anything not served, 413 for uploads over the
limits, 500 for a bug (its traceback goes to the server's log)."""

from __future__ import annotations

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from ..errors import VisionlensError
from .explorer import Explorer
from .page import PAGE
from .safety import NotServed, TooLarge


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
    return 404 if isinstance(err, NotServed) else 413 if isinstance(err, TooLarge) else 400


def _one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def create_app(explorer: Explorer) -> FastAPI:
    """The explorer's app (routes below; run it with uvicorn)."""
    app = FastAPI(title="visionlens explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = explorer

    @app.exception_handler(VisionlensError)
    async def visionlens_error(request: Request, err: VisionlensError):
        return JSONResponse({"error": _one_line(err)}, status_code=_status(err))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}"}, status_code=400)

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
