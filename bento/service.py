"""BentoML service: facial emotion classification over HTTP and WebSocket with the exported
(INT8) ONNX model.

One service, one process per worker, the model in-process. Each upload is decoded and
validated on its own (a malformed image gets its own 4xx and never shares a model batch), then
its face crops go to :class:`emorec.serving.MicroBatcher`: when the model is idle a request runs
at once; requests that arrive while a batch runs are merged into the next batch. (The earlier
design, BentoML adaptive batching in a second service, made every request wait for partners
and cross an extra HTTP hop: about 100 ms per request on an idle server for a 2 ms model; see
``reports/bench/serve_profile.json``.) Every answer carries a ``Server-Timing`` header
(decode/detect, queue, model) for profiling.

Every upload is answered per face. Mode ``faces`` (the default) finds the faces
(``params.yaml: faces``), turns each upright by its eyes and classifies each crop; mode ``cropped``
is for callers that already send tight face crops (FER-style) and classifies the whole upload.
Either way a picture with no face (blank, or nothing a detector recognises) gets
``{"faces": [], "message": "no face found"}``, never an emotion.

``/stream`` is a WebSocket for video: the client sends JPEG (or PNG) frames as binary
messages and gets one JSON message per frame, in order, with the faces, a ``track_id`` per face
and its emotion smoothed over the frames before (``serve.stream``).

Run from the repository root::

    bentoml serve bento.service:EmotionClassifier --port 3000

Configuration comes from ``params.yaml`` (``serve`` and ``faces`` sections; classes and
preprocessing come from the model file's metadata). With no environment the service serves the
real-face model shipped in ``serve.shipped_model`` (``serve.model: shipped``); ``serve.model:
pipeline`` (or ``fp32``) serves this pipeline's own model (:mod:`emorec.served_model`).
``EMOREC_MODEL`` overrides the model file, ``EMOREC_PARAMS`` the parameter file. ``/health`` says
which model answers and where it came from. Browsers may call it from the origins in
``serve.cors_origins`` (none by default): the web app's fallback to the service.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BadInput
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

ROOT = Path(__file__).resolve().parents[1]
try:  # inside a built bento the package travels as source under src/
    import emorec  # noqa: F401
except ImportError:  # pragma: no cover - exercised only in a bento without the wheel
    sys.path.insert(0, str(ROOT / "src"))

from emorec.config import load_params  # noqa: E402
from emorec.errors import ImageError  # noqa: E402
from emorec.request_timeout import install_in_bentoml  # noqa: E402
from emorec.serving import Overloaded, server_timing  # noqa: E402
from emorec.serving.api import (  # noqa: E402
    Answer,
    Busy,
    Mode,
    PayloadTooLarge,
    classify_form,
    load_upload,
    request_mode,
)
from emorec.serving.settings import ServeSettings  # noqa: E402
from emorec.serving.stream import serve_stream  # noqa: E402
from emorec.serving.upload_guard import UploadGuard, UploadRule  # noqa: E402
from emorec.serving.worker import Worker  # noqa: E402

# BentoML's own request timeout keeps every answered request alive for the whole timeout.
install_in_bentoml()

SETTINGS = ServeSettings.from_params(
    load_params(os.environ.get("EMOREC_PARAMS") or ROOT / "params.yaml"), dict(os.environ), ROOT)
# One model and one batcher per worker process (BentoML imports this module in each).
WORKER = Worker(SETTINGS)


# Routes BentoML does not make: GET /health and the /stream WebSocket (mounted at "/", matched
# passively by BentoML, so every other path still reaches the APIs below).
async def health(_: Request) -> JSONResponse:
    return JSONResponse(WORKER.health())


async def stream(ws: WebSocket) -> None:
    """``/stream?mode=faces|cropped``: one JSON answer per binary frame, in the frames' order
    (:mod:`emorec.serving.stream`)."""
    await serve_stream(ws, WORKER)


extra_app = Starlette(routes=[Route("/health", health, methods=["GET"]),
                              WebSocketRoute("/stream", stream)])


@bentoml.asgi_app(extra_app, path="/")
@bentoml.service(name="emotion_classifier", workers=SETTINGS.workers,
                 traffic={"timeout": SETTINGS.timeout_s},
                 logging={"access": {"enabled": SETTINGS.access_log}})
class EmotionClassifier:
    """Public API: classify one image, a batch of images, model info; ``/stream`` for video."""

    def __init__(self) -> None:
        # Everything loaded so far (BentoML, pydantic, onnxruntime, ...) lives as long as the
        # worker: moved out of the collector's sight, a full collection no longer walks it.
        # Such walks paused the event loop for ~130 ms a few times a second under load.
        gc.freeze()

    @bentoml.api
    async def classify(
        self,
        image: Path,
        ctx: bentoml.Context,
        mode: Mode | None = None,
        face_crop: bool | None = None,
    ) -> Answer:
        """Classify every face in one image (multipart field ``image``).

        ``mode``: ``faces`` (default) detects the faces; ``cropped`` takes the image as one face
        crop. ``face_crop`` is the older flag: true = ``faces``, false = ``cropped``."""
        chosen = request_mode(mode, face_crop)
        if not isinstance(image, Path) or not image.is_file():
            raise BadInput("image: expected an uploaded image file (multipart/form-data)")
        try:
            result, timings = await WORKER.classify_image(image.read_bytes(), chosen)
        except ImageError as err:
            error = PayloadTooLarge if err.reason == "too_large" else BadInput
            raise error(f"image: {err}") from err
        except Overloaded as err:
            raise Busy(str(err)) from err
        ctx.response.headers["server-timing"] = server_timing(timings)
        return Answer(**result)

    @bentoml.api
    async def classify_batch(
        self,
        images: list[Path],
        mode: Mode | None = None,
        face_crop: bool | None = None,
    ) -> list[Answer]:
        """Classify the faces of several images (repeat the multipart field ``images``), answers
        in order; ``mode`` as in ``classify``. One bad image rejects the request, naming its
        position."""
        if not images:
            raise BadInput("images: no files uploaded")
        if len(images) > SETTINGS.max_images_per_request:
            raise PayloadTooLarge(f"images: {len(images)} files, limit "
                                  f"{SETTINGS.max_images_per_request} "
                                  "(serve.max_images_per_request)")
        chosen = request_mode(mode, face_crop)
        loaded = await asyncio.gather(*(
            asyncio.to_thread(load_upload, WORKER, path, f"images[{i}]", chosen)
            for i, path in enumerate(images)))
        try:
            probs = await WORKER.classify_rows([x for found in loaded for x in found.inputs], {})
        except Overloaded as err:
            raise Busy(str(err)) from err
        ends = np.cumsum([len(found.inputs) for found in loaded])
        return [Answer(**WORKER.answer(found, rows))
                for found, rows in zip(loaded, np.split(probs, ends[:-1]), strict=True)]

    @bentoml.api
    async def info(self) -> dict[str, Any]:
        """Model file, classes, preprocessing, limits: what this server is serving."""
        return WORKER.info()


# CORS outermost: the upload guard answers /classify itself, and its answers need the headers too
# (BentoML's own http.cors setting would sit inside the guard).
if SETTINGS.cors_options():
    EmotionClassifier.add_asgi_middleware(CORSMiddleware, **SETTINGS.cors_options())
_MULTIPART_SLACK = 64 * 1024  # form boundaries, part headers, the mode/face_crop fields
_OPTIONS = ("mode", "face_crop")
EmotionClassifier.add_asgi_middleware(UploadGuard, rules={
    "/classify": UploadRule("image", _OPTIONS, SETTINGS.max_image_bytes + _MULTIPART_SLACK,
                            handler=partial(classify_form, WORKER)),
    "/classify_batch": UploadRule("images", _OPTIONS, SETTINGS.max_request_bytes),
})

__all__ = ["EmotionClassifier"]
