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
which model answers and where it came from.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException
from PIL import Image, ImageOps
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer
from starlette.applications import Starlette
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

ROOT = Path(__file__).resolve().parents[1]
try:  # inside a built bento the package travels as source under src/
    import emorec  # noqa: F401
except ImportError:  # pragma: no cover - exercised only in a bento without the wheel
    sys.path.insert(0, str(ROOT / "src"))

from emorec.config import Params, load_params  # noqa: E402
from emorec.errors import ImageError  # noqa: E402
from emorec.faces import FaceSettings  # noqa: E402
from emorec.imageio import open_image  # noqa: E402
from emorec.inference import OnnxClassifier, resolve_min_confidence  # noqa: E402
from emorec.request_timeout import install_in_bentoml  # noqa: E402
from emorec.served_model import ModelChoice, choose_model, model_provenance  # noqa: E402
from emorec.serving import (  # noqa: E402
    FaceTracker,
    FoundFaces,
    MicroBatcher,
    Overloaded,
    StreamSettings,
    answer,
    find_faces,
    resolve_mode,
    server_timing,
    stream_answer,
)

log = logging.getLogger("emorec.service")


@dataclass(frozen=True)
class ServeSettings:
    """The ``serve`` section of params.yaml plus the environment overrides."""

    model: ModelChoice  # the file and why it is the one (serve.model / EMOREC_MODEL)
    max_image_bytes: int
    max_image_side: int
    max_batch_size: int
    max_queue: int
    max_images_per_request: int
    max_request_bytes: int
    faces: FaceSettings  # detector, min size, score threshold, crop margin (serve.face_margin)
    threads: int
    workers: int
    timeout_s: float
    access_log: bool
    stream: StreamSettings
    min_confidence: Any  # "auto" (the model's suggestion) or a number; see resolve_min_confidence

    @classmethod
    def from_params(cls, params: Params, env: dict[str, str]) -> ServeSettings:
        s = params.section("serve")
        resolve_min_confidence(s.get("min_confidence", "auto"), None)  # a bad value stops here
        return cls(
            model=choose_model(params, ROOT, env),
            max_image_bytes=s.integer("max_image_bytes", low=1),
            max_image_side=s.integer("max_image_side", low=16),
            max_batch_size=s.integer("max_batch_size", low=1),
            max_queue=s.integer("max_queue", low=1),
            max_images_per_request=s.integer("max_images_per_request", low=1),
            max_request_bytes=s.integer("max_request_bytes", low=1),
            faces=FaceSettings.from_params(params),
            threads=s.integer("threads", low=0),
            workers=s.integer("workers", low=1),
            timeout_s=s.number("timeout_s", low=1),
            access_log=s.boolean("access_log"),
            stream=StreamSettings.from_params(params),
            min_confidence=s.get("min_confidence", "auto"),
        )


# BentoML's own request timeout keeps every answered request alive for the whole timeout.
install_in_bentoml()

SETTINGS = ServeSettings.from_params(
    load_params(os.environ.get("EMOREC_PARAMS") or ROOT / "params.yaml"), dict(os.environ))

# One model and one batcher per worker process (BentoML imports this module in each).
MODEL = OnnxClassifier(SETTINGS.model.path, threads=SETTINGS.threads)
# Which model answers and where it came from (kind, file, sha256, card name), for /health.
PROVENANCE = model_provenance(SETTINGS.model, MODEL.classes)
log.info("serving %s (%s, sha256 %s)", SETTINGS.model.path, SETTINGS.model.setting,
         PROVENANCE["sha256"][:12])
# Below this calibrated top-1 probability a face is answered "uncertain" (0: never; auto: the
# threshold the evaluate stage found to answer 90 % of val, stored in the model's metadata).
MIN_CONFIDENCE = resolve_min_confidence(SETTINGS.min_confidence,
                                        MODEL.suggested_min_confidence) or None
BATCHER = MicroBatcher(MODEL.probabilities, SETTINGS.max_batch_size, SETTINGS.max_queue)


class PayloadTooLarge(BentoMLException):
    """413: the upload is bigger than ``serve.max_image_bytes`` / ``max_image_side`` allow."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Busy(BentoMLException):
    """503: more face crops wait for the model than ``serve.max_queue``; retry shortly."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


Mode = Literal["faces", "cropped"]


class FaceAnswer(BaseModel):
    box: list[int] = Field(description="[x, y, w, h] of the face in the upright upload "
                           "(mode cropped: the whole upload)")
    landmarks: dict[str, list[float]] | None = Field(
        None, description="[x, y] of left_eye, right_eye, nose, ... when the detector gives them")
    detection_score: float = Field(description="the face detector's confidence (cropped: 1)")
    label: str = Field(description="most probable class, or 'uncertain' below min_confidence")
    confidence: float = Field(description="calibrated probability of the most probable class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    predicted: str | None = Field(None, description="most probable class (with min_confidence)")
    min_confidence: float | None = Field(None, description="threshold in force (serve.min_"
                                         "confidence), when one is")


class Answer(BaseModel):
    faces: list[FaceAnswer] = Field(description="every face found, largest first")
    message: str | None = Field(None, description="'no face found' when faces is empty")
    # The single-face API's fields, for its clients: the largest face, absent when none.
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    face_box: list[int] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave out top-level fields that do not apply (null), e.g. label when no face."""
        return {k: v for k, v in handler(self).items() if v is not None}


def decode_image(data: bytes) -> Image.Image:
    """Validate and decode one image's bytes, upright (ImageError says why not)."""
    if len(data) > SETTINGS.max_image_bytes:
        raise ImageError("too_large", f"{len(data)} bytes, limit {SETTINGS.max_image_bytes} "
                         "(serve.max_image_bytes)")
    image = open_image(data, max_side=SETTINGS.max_image_side)
    # Phone photos carry their rotation in EXIF; turn them upright as ingest and browsers do.
    return ImageOps.exif_transpose(image)


def read_upload(path: Path, what: str) -> Image.Image:
    """One multipart upload, decoded; 4xx exceptions name the field and the reason."""
    if not isinstance(path, Path) or not path.is_file():
        raise BadInput(f"{what}: expected an uploaded image file (multipart/form-data)")
    try:
        return decode_image(path.read_bytes())
    except ImageError as err:
        if err.reason == "too_large":
            raise PayloadTooLarge(f"{what}: {err}") from err
        raise BadInput(f"{what}: {err}") from err


def load_upload(path: Path, what: str, mode: str) -> FoundFaces:
    """One upload's faces with their model inputs (runs in a worker thread)."""
    return find_faces(read_upload(path, what), mode, SETTINGS.faces, MODEL.preprocess)


def request_mode(mode: str | None, face_crop: bool | None) -> str:
    try:
        return resolve_mode(mode, face_crop)
    except ValueError as err:
        raise BadInput(str(err)) from err


def faces_of(data: bytes, mode: str) -> FoundFaces:
    """Decode ``data`` and find its faces with their model inputs (ImageError if unusable)."""
    return find_faces(decode_image(data), mode, SETTINGS.faces, MODEL.preprocess)


# A whole-upload crop this small decodes in about 0.1 ms, less than the hop to a worker thread
# and back costs the event loop; bigger images and face detection go to a thread.
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_PIXELS = 160 * 160


def decodes_inline(data: bytes, mode: str) -> bool:
    """Whether to decode on the event loop: mode cropped and a small image (by its header)."""
    if mode != "cropped" or len(data) > INLINE_MAX_BYTES:
        return False
    try:
        width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    except Exception:  # noqa: BLE001 - a broken header fails as fast in decode_image
        return True
    return width * height <= INLINE_MAX_PIXELS


async def classify_image(data: bytes, mode: str) -> tuple[dict[str, Any], dict[str, float]]:
    """The answer for one image and where its time went (``Server-Timing`` stages, ms).

    Raises ImageError (bad upload) or Overloaded (too many crops waiting); the callers turn
    them into their 4xx/503 answers."""
    started = time.perf_counter()
    if decodes_inline(data, mode):
        found = faces_of(data, mode)
    else:
        found = await asyncio.to_thread(faces_of, data, mode)
    timings = {"decode" if mode == "cropped" else "detect": _elapsed_ms(started)}
    probs = await classify_rows(found.inputs, timings)
    timings["total"] = _elapsed_ms(started)
    return answer(found, probs, MODEL.classes, MIN_CONFIDENCE), timings


async def classify_rows(inputs: list[np.ndarray], timings: dict[str, float]) -> np.ndarray:
    """Probabilities for the face crops of one request through the shared micro-batcher;
    adds ``queue`` and ``model`` milliseconds to ``timings``."""
    if not inputs:
        return np.empty((0, len(MODEL.classes)), dtype=np.float32)
    result = await BATCHER(np.stack(inputs).astype(np.float32, copy=False))
    timings.update(queue=result.wait_ms, model=result.model_ms)
    return result.probabilities


def _elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


# ---------------------------------------------------------------------------------------------
# Routes BentoML does not make: GET /health and the /stream WebSocket (mounted at "/", matched
# passively by BentoML, so every other path still reaches the APIs below).


async def _health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "model": PROVENANCE, **MODEL.info()})


async def stream(ws: WebSocket) -> None:
    """``/stream?mode=faces|cropped``: one JSON answer per binary frame, in the frames' order.

    Up to ``serve.stream.max_in_flight`` frames are decoded and detected at once (in threads,
    their crops batched with everyone else's), so one stream can use more than one core; the
    answers still leave in order, and the per-face smoothing sees the frames in order. A bad
    frame gets ``{"frame": i, "error": ...}`` and the stream goes on.
    """
    await ws.accept()
    try:
        mode = resolve_mode(ws.query_params.get("mode"), None)
    except ValueError as err:
        await ws.close(code=1008, reason=str(err)[:120])
        return
    settings = SETTINGS.stream
    tracker = FaceTracker(settings.smoothing, settings.match_iou, settings.max_missed)
    slots = asyncio.Semaphore(settings.max_in_flight)
    pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()
    sender = asyncio.create_task(_send_in_order(ws, pending, slots, tracker))
    index = 0
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            await slots.acquire()
            pending.put_nowait(asyncio.create_task(_frame(index, message.get("bytes"), mode)))
            index += 1
    finally:
        pending.put_nowait(None)
        await sender


async def _frame(index: int, data: bytes | None, mode: str
                 ) -> tuple[int, FoundFaces | None, np.ndarray | str]:
    """Decode, detect and classify one frame: ``(index, faces, probabilities)`` or
    ``(index, None, error text)``."""
    if data is None:
        return index, None, "send each frame as a binary message (JPEG or PNG bytes)"
    if len(data) > SETTINGS.stream.max_frame_bytes:
        return index, None, (f"too_large: {len(data)} bytes, limit "
                             f"{SETTINGS.stream.max_frame_bytes} (serve.stream.max_frame_bytes)")
    try:
        found = await asyncio.to_thread(faces_of, data, mode)
        return index, found, await classify_rows(found.inputs, {})
    except (ImageError, Overloaded) as err:
        return index, None, f"frame {index}: {err}"


async def _send_in_order(ws: WebSocket, pending: asyncio.Queue, slots: asyncio.Semaphore,
                         tracker: FaceTracker) -> None:
    """Answer the frames in the order they came, smoothing each face over its track.

    Once the client is gone the frames still in flight are drained unanswered, so that the
    reader, which may wait for a free slot, always gets one and sees the disconnect."""
    gone = False
    while (task := await pending.get()) is not None:
        try:
            index, found, result = await task
        finally:
            slots.release()
        if gone:
            continue
        if found is None:
            message: dict[str, Any] = {"frame": index, "error": result}
        else:
            message = stream_answer(index, found, result, tracker, MODEL.classes,
                                    MIN_CONFIDENCE)
        try:
            await ws.send_text(json.dumps(message))
        except (WebSocketDisconnect, RuntimeError, OSError):
            gone = True


extra_app = Starlette(routes=[Route("/health", _health, methods=["GET"]),
                              WebSocketRoute("/stream", stream)])


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class UploadGuard:
    """ASGI middleware in front of the upload endpoints; answers ``POST /classify`` itself.

    Checks: BentoML treats a *text* value in a file field as a URL to download, tries to
    JSON-decode uploads in unknown fields (both end in a 500) and spools uploads of any size to
    disk before the API sees them. The guard answers these cases itself: a body over the byte
    limit gets 413 (from Content-Length when given, before reading it); a missing or unknown
    field, or a text value where a file belongs, gets 400.

    Fast path: having parsed the form already, the guard answers a valid single-image upload
    (``rule.handler``) with the same code and answer as ``EmotionClassifier.classify``. Through
    BentoML's request model each request also paid a second multipart parse, a temporary file
    and a pydantic round trip: about half of the event loop's time under load
    (``reports/bench/serve_profile.json``). BentoML's own middleware (access log, metrics,
    tracing, timeout) still wraps it. Other valid requests pass on untouched (the buffered body
    is replayed to BentoML).
    """

    def __init__(self, app: Any, rules: dict[str, UploadRule]):
        self.app = app
        self.rules = rules  # URL path -> rule

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not headers.get("content-type", "").startswith(_FORM_TYPES):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, headers, rule.max_bytes)
        if isinstance(body, Response) or body is None:
            if body is not None:
                await body(scope, receive, send)
            return
        try:
            form = await Request(scope, _replay(body, receive)).form()
        except Exception as err:  # starlette raises MultiPartException, KeyError, ...
            await _error(400, f"malformed form body: {err}")(scope, receive, send)
            return
        try:
            problem = rule.check(form)
            if problem:
                response: Response | None = _error(400, problem)
            elif rule.handler is not None:
                response = await rule.handler(form)
            else:
                response = None
        finally:
            await form.close()
        if response is not None:
            await response(scope, receive, send)
        else:
            await self.app(scope, _replay(body, receive), send)


@dataclass(frozen=True)
class UploadRule:
    """What :class:`UploadGuard` accepts on one route, and who answers it."""

    field: str                 # the file field
    options: tuple[str, ...]   # other (text) fields allowed
    max_bytes: int             # largest request body
    handler: Callable[[FormData], Awaitable[Response]] | None = None  # None: BentoML answers

    def check(self, form: FormData) -> str | None:
        """What is wrong with the form's fields, or None."""
        items = form.multi_items()
        unknown = sorted({k for k, _ in items} - {self.field, *self.options})
        if unknown:
            return (f"unexpected form field(s) {unknown}; send the image(s) as field "
                    f"'{self.field}' (options: {list(self.options)})")
        files = [v for k, v in items if k == self.field]
        if not files:
            return f"{self.field}: missing; upload the image as multipart field '{self.field}'"
        if any(not isinstance(v, UploadFile) for v in files):
            return f"{self.field}: expected an uploaded image file, got a text value"
        return None


async def _read_body(receive: Any, headers: Headers, limit: int) -> bytes | Response | None:
    """The whole request body, a 413 answer if it exceeds ``limit``, None if the client left."""
    too_large = _error(413, f"too_large: request body exceeds {limit} bytes "
                       "(serve.max_image_bytes / serve.max_request_bytes)")
    if int(headers.get("content-length") or 0) > limit:
        return too_large
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return too_large
        if not message.get("more_body", False):
            return bytes(body)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


_TRUE, _FALSE = {"true", "1", "yes", "on", "t", "y"}, {"false", "0", "no", "off", "f", "n"}


def _form_flag(value: Any) -> bool | None:
    """A form's boolean text as pydantic reads it (ValueError if it is none of those)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"face_crop must be true or false, got {value!r}")


async def classify_form(form: FormData) -> Response:
    """``POST /classify`` from an already parsed form (the guard's fast path)."""
    files = form.getlist("image")
    if len(files) != 1:
        return _error(400, f"image: send exactly one file, got {len(files)}")
    try:
        mode = resolve_mode(form.get("mode"), _form_flag(form.get("face_crop")))
    except ValueError as err:
        return _error(400, str(err))
    try:
        result, timings = await classify_image(await files[0].read(), mode)
    except ImageError as err:
        return _error(413 if err.reason == "too_large" else 400, f"image: {err}")
    except Overloaded as err:
        return _error(503, str(err))
    return Response(Answer(**result).model_dump_json(), media_type="application/json",
                    headers={"server-timing": server_timing(timings)})


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that returns ``body`` once, then defers to the real one."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
            result, timings = await classify_image(image.read_bytes(), chosen)
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
            asyncio.to_thread(load_upload, path, f"images[{i}]", chosen)
            for i, path in enumerate(images)))
        try:
            probs = await classify_rows([x for found in loaded for x in found.inputs], {})
        except Overloaded as err:
            raise Busy(str(err)) from err
        ends = np.cumsum([len(found.inputs) for found in loaded])
        return [Answer(**answer(found, rows, MODEL.classes, MIN_CONFIDENCE))
                for found, rows in zip(loaded, np.split(probs, ends[:-1]), strict=True)]

    @bentoml.api
    async def info(self) -> dict[str, Any]:
        """Model file, classes, preprocessing, limits: what this server is serving."""
        return {"status": "ok", "model": PROVENANCE, **MODEL.info(),
                "limits": {"max_image_bytes": SETTINGS.max_image_bytes,
                           "max_image_side": SETTINGS.max_image_side,
                           "max_images_per_request": SETTINGS.max_images_per_request,
                           "max_faces_per_image": SETTINGS.faces.max_faces},
                "faces": {"detector": SETTINGS.faces.detector,
                          "min_size": SETTINGS.faces.min_size,
                          "score_threshold": SETTINGS.faces.score_threshold,
                          "margin": SETTINGS.faces.margin},
                "batching": {"max_batch_size": SETTINGS.max_batch_size,
                             "max_queue": SETTINGS.max_queue, "workers": SETTINGS.workers,
                             "this_worker": BATCHER.stats.to_json()},
                "stream": {"smoothing": SETTINGS.stream.smoothing,
                           "match_iou": SETTINGS.stream.match_iou,
                           "max_missed": SETTINGS.stream.max_missed,
                           "max_in_flight": SETTINGS.stream.max_in_flight}}


_MULTIPART_SLACK = 64 * 1024  # form boundaries, part headers, the mode/face_crop fields
_OPTIONS = ("mode", "face_crop")
EmotionClassifier.add_asgi_middleware(UploadGuard, rules={
    "/classify": UploadRule("image", _OPTIONS, SETTINGS.max_image_bytes + _MULTIPART_SLACK,
                            handler=classify_form),
    "/classify_batch": UploadRule("images", _OPTIONS, SETTINGS.max_request_bytes),
})

__all__ = ["EmotionClassifier"]
