"""The FastAPI app: a page to upload a video, ``POST /api/score``, ``POST /api/report``, ``/healthz``.

One worker scores one video at a time (the scorer holds the CPU); a few more requests may
wait their turn, and beyond that the answer is 503 "busy" at once, before any upload is
read. Uploads live in a private temporary folder (mode 0700) only while they are scored.
The score is the one scorer's (``dfdc.scoring.scorer``) on the saved upload: the same
P(FAKE) as ``dfdc predict``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from dfdc.config import ScoreConfig, ServeConfig
from dfdc.faces.video import VIDEO_SUFFIXES
from dfdc.release.bundle import Bundle, load_bundle
from dfdc.scoring.scorer import Scorer
from dfdc.serve.result import ModelInfo, Result, build_result, model_info, report_html, templates
from dfdc.serve.upload import ServeError, probe_video, receive_file

_LOG = logging.getLogger(__name__)
_UPLOAD_BODY = {  # the request body of /api/score, for /docs (the handler streams it itself)
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "the video"}},
        }}},
    }
}  # fmt: skip
_ERRORS = {
    413: {"description": "too large or too long"},
    415: {"description": "not a video (judged by its content)"},
    422: {"description": "no file field, or an empty file"},
    503: {"description": "busy: the queue is full, try again later"},
}


class Gate:
    """One scoring at a time; ``queue`` more requests admitted to upload and wait; the rest refused."""

    def __init__(self, queue: int) -> None:
        self.capacity = 1 + queue
        self.admitted = 0  # uploading, waiting or scoring
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Count a request in for its whole life, or refuse it with 503 when all places are taken."""
        if self.admitted >= self.capacity:
            raise ServeError(
                503, "busy", f"{self.admitted} videos are being scored or waiting; try again in a minute"
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for the scorer, first come first served."""
        async with self._turn:
            yield


def _error(err: ServeError) -> JSONResponse:
    headers = {"Retry-After": "60"} if err.status == 503 else None
    return JSONResponse({"error": err.reason, "detail": err.detail}, err.status, headers=headers)


def create_app(
    bundle_dir: Path,
    cfg: ServeConfig | None = None,
    bundle: Bundle | None = None,
    run: ScoreConfig | None = None,
) -> FastAPI:
    """The app on a bundle folder (verified and loaded here, unless ``bundle`` is that folder's, loaded).

    One scorer serves every upload (``run``: its device and threads), so the detector and
    the model are built once, not per request.
    """
    cfg = cfg or ServeConfig()
    bundle = bundle or load_bundle(bundle_dir)
    scorer = bundle.scorer(run)
    info = model_info(bundle_dir, bundle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upload_dir = Path(tempfile.mkdtemp(prefix="dfdc-serve-"))  # mode 0700
        try:
            yield
        finally:
            shutil.rmtree(app.state.upload_dir, ignore_errors=True)

    app = FastAPI(
        title="dfdc deepfake check",
        description="Scores one uploaded video with P(FAKE), the calibrated probability that a face in it "
        "was swapped. A score, not proof.",
        version=info.version,
        lifespan=lifespan,
    )
    app.state.gate = Gate(cfg.queue)
    app.state.cfg = cfg
    app.exception_handler(ServeError)(lambda _request, err: _error(err))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return templates().get_template("page.html").render(
            model=info, kinds=", ".join(s.lstrip(".") for s in VIDEO_SUFFIXES),
            accept=",".join(VIDEO_SUFFIXES),
            max_mb=f"{cfg.max_upload_bytes / 1e6:g}", max_minutes=f"{cfg.max_duration_s / 60:g}",
        )  # fmt: skip

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        """Alive, which model, and how many requests are in (scoring or waiting)."""
        gate: Gate = app.state.gate
        return {"status": "ok", "model": info.version, "admitted": gate.admitted, "capacity": gate.capacity}

    @app.get("/api/model")
    def model() -> ModelInfo:
        """The model: backbone, weights version, provenance, metrics and card."""
        return info

    @app.post("/api/score", openapi_extra=_UPLOAD_BODY, responses=_ERRORS)
    async def score(request: Request) -> Result:
        """Score one video (multipart field ``file``): P(FAKE), each person's frames, the model."""
        gate: Gate = app.state.gate
        async with gate.admit():
            # the server's own name for the file, never the client's
            path = app.state.upload_dir / f"{uuid.uuid4().hex}.upload"
            try:
                name = await receive_file(
                    request.headers.get("content-type", ""), request.headers.get("content-length"),
                    request.stream(), path, cfg.max_upload_bytes,
                )  # fmt: skip
                duration = probe_video(path, cfg.max_duration_s)
                async with gate.turn():
                    return await asyncio.to_thread(_score, scorer, bundle, path, info, name, duration)
            finally:
                path.unlink(missing_ok=True)

    @app.post("/api/report", response_class=HTMLResponse)
    def report(result: Result) -> Response:
        """One result (as ``/api/score`` answered it) as a self-contained HTML file to download."""
        stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in result.filename)[:100]
        return HTMLResponse(
            report_html(result),
            headers={"Content-Disposition": f'attachment; filename="deepfake-report-{stem}.html"'},
        )

    return app


def _score(scorer: Scorer, bundle: Bundle, path: Path, info: ModelInfo, name: str, duration: float) -> Result:
    """The scorer on the saved upload (as ``dfdc predict`` scores it), then the reading."""
    row = scorer.score([path], progress=False, details=True).iloc[0].to_dict()
    row["detail"] = row["detail"].replace(str(path), name)  # never the server's file in an answer
    if row["status"] != "ok":
        _LOG.info("%s: fallback score (%s %s)", name, row["status"], row["detail"])
    return build_result(bundle, path, row, info, name, duration)
