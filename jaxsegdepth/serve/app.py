"""The ASGI app: routes, limits and the page (`create_app`).

    POST /v1/plates   multipart `plate` -> {"plate_id", "width", "height"}
    POST /v1/predict  multipart `scene` and `plate_id` or `plate`; ?output=json|mask|depth|cutout
    GET  /v1/health   the model, the batches formed so far, the queue and the plate cache
    GET  /            the page (static/); /openapi.json and /docs from FastAPI

A predict request is decoded, its plate resized to the scene when their sizes differ (header
`X-Plate-Resized`), registered onto the scene (`align.py`, when `align` is enabled), resized to
the model size predict would choose and handed to the `Batcher`; the probabilities come back
at the scene's size. Host work runs in the thread pool, so the event loop only waits.
"""

import asyncio
import base64
import contextlib
import dataclasses
import os
import re
import time
from typing import Literal, Optional

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from jaxsegdepth import align, inference
from jaxsegdepth.serve import batcher as batcher_lib, images

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PLATE_ID = re.compile(r"[0-9a-f]{16}")
RETRY_AFTER_S = "1"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the server accepts and how it batches (the `serve` command's flags)."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_plates: int = 64
    max_upload_bytes: int = 20 << 20
    max_pixels: int = 40_000_000
    timeout_s: float = 30.0


class _BodyLimit:
    """ASGI middleware: a POST without Content-Length is refused with 411, one declaring more
    than `max_bytes` with 413 before the app reads it (the body is drained up to
    `drain_bytes` so that the client reads the answer; a larger one closes the connection)."""

    def __init__(self, app, max_bytes: int, drain_bytes: int = 64 << 20):
        self.app, self.max_bytes, self.drain_bytes = app, max_bytes, drain_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if not length.isdigit():
            message = "the request has no Content-Length (chunked uploads are not accepted)"
            return await _error(411, message)(scope, receive, send)
        if int(length) > self.max_bytes:
            if int(length) <= self.drain_bytes:
                while (await receive()).get("more_body"):
                    pass
            message = (
                f"upload of {length} bytes, more than --max-upload-mb ({self.max_bytes} bytes)"
            )
            return await _error(413, message)(scope, receive, send)
        return await self.app(scope, receive, send)


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"detail": message}, status, headers=headers or None)


def create_app(predictor: inference.Predictor, limits: Limits) -> FastAPI:
    """The app serving `predictor` within `limits` (module doc)."""
    batcher = batcher_lib.Batcher(
        predictor.forward, limits.max_batch, limits.max_wait_ms / 1000, limits.max_queue
    )
    plates = images.Plates(limits.max_plates)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(
        title="jaxsegdepth",
        summary="Foreground mask, depth and cutout from a plate (the empty scene) and a scene.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.include_router(_routes(predictor, limits, batcher, plates))

    @app.exception_handler(images.Refused)
    async def refused(request, error: images.Refused):
        return _error(error.status, str(error))

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"))

    return app


def _routes(predictor, limits: Limits, batcher, plates) -> APIRouter:
    """The API's routes (module doc)."""
    router = APIRouter(prefix="/v1")

    @router.get("/health")
    async def health() -> dict:
        """The model served, the batches formed so far by size, the queue and the plates."""
        return {
            "status": "ok",
            "model": predictor.card["model"],
            "source": predictor.source,
            "heads": list(predictor.heads),
            "size": predictor.resolution or None,
            "align": predictor.alignment.enabled,
            "max_batch": limits.max_batch,
            "batches": {str(size): count for size, count in sorted(batcher.formed.items())},
            "queued": batcher.admitted,
            "plates": len(plates),
        }

    @router.post("/plates")
    async def post_plate(plate: UploadFile = File(..., description="the empty scene")) -> dict:
        """Keeps a plate for later predictions (an LRU cache of --max-plates) and names it."""
        data = await plate.read()
        rgb = await run_in_threadpool(images.decode, data, "plate", limits.max_pixels)
        plate_id = plates.id_of(data)
        plates.put(plate_id, rgb)
        return {"plate_id": plate_id, "width": rgb.shape[1], "height": rgb.shape[0]}

    @router.post("/predict", responses={200: {"content": {"image/png": {}}}})
    async def post_predict(
        scene: UploadFile = File(..., description="the scene, with what moved in front"),
        plate_id: Optional[str] = Form(None, description="a plate from POST /v1/plates"),
        plate: Optional[UploadFile] = File(None, description="or the plate itself"),
        output: Literal["json", "mask", "depth", "cutout"] = Query("json"),
    ):
        """The mask, depth and cutout of `scene` against its plate: one PNG, or all three as
        base64 in JSON with the timings and the registration estimate."""
        job = _Job(predictor, batcher, plates, limits, output)
        try:
            return await asyncio.wait_for(job.run(scene, plate, plate_id), limits.timeout_s)
        except batcher_lib.QueueFull as error:
            return _error(503, f"busy: {error}; retry", **{"Retry-After": RETRY_AFTER_S})
        except asyncio.TimeoutError:
            message = f"the request took more than --timeout-s={limits.timeout_s}"
            return _error(503, message, **{"Retry-After": RETRY_AFTER_S})

    return router


def _unsaid(message: str) -> None:
    """A request's warnings travel in its response headers, not on the server's stderr."""
    del message


class _Job:
    """One predict request, from the uploads to the response."""

    def __init__(self, predictor, batcher, plates, limits: Limits, output: str):
        self.predictor, self.batcher, self.plates = predictor, batcher, plates
        self.limits, self.output = limits, output
        self.timings: dict[str, float] = {}
        self.headers: dict[str, str] = {}
        self.estimate: Optional[align.Estimate] = None

    def _timed(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round((now - start) * 1000, 2)
        return now

    async def run(self, scene, plate, plate_id) -> Response:
        if self.output == "depth" and "depth" not in self.predictor.heads:
            raise images.Refused(400, "output=depth: this model has no trained depth head")
        scene_bytes = await scene.read()
        plate_bytes = await plate.read() if plate is not None else None
        pair = await run_in_threadpool(self.prepare, scene_bytes, plate_bytes, plate_id)
        queued = time.perf_counter()
        outputs, batch = await asyncio.wrap_future(self.batcher.submit(*pair[2:]))
        self._timed("queue_and_model", queued)
        self.headers["X-Batch-Size"] = str(batch)
        return await run_in_threadpool(self.respond, pair[1], outputs, batch)

    def prepare(self, scene_bytes: bytes, plate_bytes: Optional[bytes], plate_id: Optional[str]):
        """(plate, scene) at the scene's size, then both at the model's size."""
        start = time.perf_counter()
        scene = images.decode(scene_bytes, "scene", self.limits.max_pixels)
        if plate_bytes is not None:
            plate = images.decode(plate_bytes, "plate", self.limits.max_pixels)
        elif plate_id is None:
            raise images.Refused(400, "plate_id: give a plate_id from POST /v1/plates or a plate")
        elif not PLATE_ID.fullmatch(plate_id) or self.plates.get(plate_id) is None:
            raise images.Refused(
                404, f"plate_id={plate_id[:40]!r}: no such plate (upload it again)"
            )
        else:
            plate = self.plates.get(plate_id)
        start = self._timed("decode", start)
        plate, scene, estimate, resized = self.predictor.prepare(plate, scene, warn=_unsaid)
        if resized:
            self.headers["X-Plate-Resized"] = resized
        if self.predictor.alignment.enabled:
            self.estimate = estimate
            self.headers["X-Alignment"] = estimate.status
        start = self._timed("align", start)
        size = self.predictor.model_hw(*scene.shape[:2])
        small = [inference.resize(image, size) for image in (plate, scene)]
        self._timed("resize", start)
        return plate, scene, *small

    def respond(self, scene: np.ndarray, outputs: dict, batch: int) -> Response:
        """The probabilities at the scene's size, as the PNG or JSON asked for."""
        start = time.perf_counter()
        back = {
            head: np.clip(inference.resize(value, scene.shape[:2]), 0, 1)
            for head, value in outputs.items()
        }
        result = inference.Result(
            scene, back["mask"], back["mask"] >= self.predictor.threshold, back.get("depth")
        )
        encode = {
            "mask": lambda: images.png(result.mask.astype(np.uint8) * 255),
            "depth": lambda: images.png(np.round(result.depth * 255).astype(np.uint8)),
            "cutout": lambda: images.png(result.cutout()),
        }
        if self.output != "json":
            body = encode[self.output]()
            self._timed("encode", start)
            return Response(body, media_type="image/png", headers=self.headers)
        wanted = [name for name in encode if name != "depth" or result.depth is not None]
        pngs = {name: base64.b64encode(encode[name]()).decode("ascii") for name in wanted}
        self._timed("encode", start)
        content = {
            **{"mask": None, "depth": None, "cutout": None, **pngs},
            "width": scene.shape[1],
            "height": scene.shape[0],
            "model_size": list(outputs["mask"].shape),
            "batch_size": batch,
            "plate_resized": self.headers.get("X-Plate-Resized"),
            "alignment": self.estimate.to_json() if self.estimate else None,
            "timings_ms": self.timings,
        }
        return JSONResponse(content, headers=self.headers)
