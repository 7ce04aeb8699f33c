"""BentoML service: facial emotion classification over HTTP with the exported (INT8) ONNX model.

Two services, one deployment:

* ``EmotionModel`` owns the onnxruntime session and exposes one *batchable* API on preprocessed
  arrays; BentoML's adaptive batching merges concurrent calls into one ``[N, 1, S, S]`` run.
* ``EmotionClassifier`` is the public HTTP front. It decodes and validates every upload *before*
  anything is batched, so a malformed image gets its own 4xx and can never fail other clients'
  requests that happened to share a batch.

Every upload is answered per face. Mode ``faces`` (the default) finds the faces
(``params.yaml: faces``), turns each upright by its eyes and classifies each crop; mode ``cropped``
is for callers that already send tight face crops (FER-style) and classifies the whole upload.
Either way a picture with no face (blank, or nothing a detector recognises) gets
``{"faces": [], "message": "no face found"}``, never an emotion.

Run from the repository root::

    bentoml serve bento.service:EmotionClassifier --port 3000

Configuration comes from ``params.yaml`` (``serve`` and ``faces`` sections; classes and
preprocessing come from the model file's metadata). ``EMOREC_MODEL`` overrides the model file,
``EMOREC_PARAMS`` the parameter file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException
from PIL import Image, ImageOps
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
try:  # inside a built bento the package travels as source under src/
    import emorec  # noqa: F401
except ImportError:  # pragma: no cover - exercised only in a bento without the wheel
    sys.path.insert(0, str(ROOT / "src"))

from emorec.config import Params, load_params  # noqa: E402
from emorec.errors import ImageError  # noqa: E402
from emorec.faces import FaceSettings  # noqa: E402
from emorec.imageio import open_image  # noqa: E402
from emorec.inference import OnnxClassifier  # noqa: E402
from emorec.serving import FoundFaces, answer, find_faces, resolve_mode  # noqa: E402

log = logging.getLogger("emorec.service")
MODEL_FILES = {"int8": "models/model.int8.onnx", "fp32": "models/model.onnx"}
# RuntimeError texts of aiohttp when BentoML recycles the inter-service session mid-call.
DROPPED_CONNECTION_MESSAGES = ("Session is closed", "Connection closed")


@dataclass(frozen=True)
class ServeSettings:
    """The ``serve`` section of params.yaml plus the environment overrides."""

    model_path: Path
    max_image_bytes: int
    max_image_side: int
    max_batch_size: int
    max_latency_ms: int
    max_images_per_request: int
    max_request_bytes: int
    faces: FaceSettings  # detector, min size, score threshold, crop margin (serve.face_margin)
    threads: int
    timeout_s: float
    backend_attempts: int

    @classmethod
    def from_params(cls, params: Params, env: dict[str, str]) -> ServeSettings:
        s = params.section("serve")
        choice = s.choice("model", MODEL_FILES)
        model = Path(env.get("EMOREC_MODEL") or ROOT / MODEL_FILES[choice])
        return cls(
            model_path=model,
            max_image_bytes=s.integer("max_image_bytes", low=1),
            max_image_side=s.integer("max_image_side", low=16),
            max_batch_size=s.integer("max_batch_size", low=2),
            max_latency_ms=s.integer("max_latency_ms", low=1),
            max_images_per_request=s.integer("max_images_per_request", low=1),
            max_request_bytes=s.integer("max_request_bytes", low=1),
            faces=FaceSettings.from_params(params),
            threads=s.integer("threads", low=0),
            timeout_s=s.number("timeout_s", low=1),
            backend_attempts=s.integer("backend_attempts", low=1),
        )


SETTINGS = ServeSettings.from_params(
    load_params(os.environ.get("EMOREC_PARAMS") or ROOT / "params.yaml"), dict(os.environ))


# Loaded in every service process: the model service runs it, the front reads its classes and
# preprocessing (one self-describing file, so the two can never disagree).
MODEL = OnnxClassifier(SETTINGS.model_path, threads=SETTINGS.threads)


class PayloadTooLarge(BentoMLException):
    """413: the upload is bigger than ``serve.max_image_bytes`` / ``max_image_side`` allow."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


Mode = Literal["faces", "cropped"]


class FaceAnswer(BaseModel):
    box: list[int] = Field(description="[x, y, w, h] of the face in the upright upload "
                           "(mode cropped: the whole upload)")
    landmarks: dict[str, list[float]] | None = Field(
        None, description="[x, y] of left_eye, right_eye, nose, ... when the detector gives them")
    detection_score: float = Field(description="the face detector's confidence (cropped: 1)")
    label: str = Field(description="most probable class")
    confidence: float = Field(description="probability of the label")
    probabilities: dict[str, float] = Field(description="probability of every class")


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


def read_upload(path: Path, what: str) -> Image.Image:
    """Validate and decode one upload, upright; 4xx exceptions name the field and the reason."""
    if not isinstance(path, Path) or not path.is_file():
        raise BadInput(f"{what}: expected an uploaded image file (multipart/form-data)")
    size = path.stat().st_size
    if size > SETTINGS.max_image_bytes:
        raise PayloadTooLarge(f"{what}: too_large: {size} bytes, limit "
                              f"{SETTINGS.max_image_bytes} (serve.max_image_bytes)")
    try:
        image = open_image(path.read_bytes(), max_side=SETTINGS.max_image_side)
    except ImageError as err:
        message = f"{what}: {err}"
        if err.reason == "too_large":
            raise PayloadTooLarge(message) from err
        raise BadInput(message) from err
    # Phone photos carry their rotation in EXIF; turn them upright as ingest and browsers do.
    return ImageOps.exif_transpose(image)


def load_upload(path: Path, what: str, mode: str) -> FoundFaces:
    """One upload's faces with their model inputs (runs in a worker thread)."""
    return find_faces(read_upload(path, what), mode, SETTINGS.faces, MODEL.preprocess)


def request_mode(mode: str | None, face_crop: bool | None) -> str:
    try:
        return resolve_mode(mode, face_crop)
    except ValueError as err:
        raise BadInput(str(err)) from err


@bentoml.service(name="emotion_model", traffic={"timeout": SETTINGS.timeout_s})
class EmotionModel:
    """The onnxruntime session behind adaptive batching."""

    def __init__(self) -> None:
        self.model = MODEL

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``[N, C]`` for a preprocessed float32 batch ``[N, 1, S, S]``."""
        return self.model.probabilities(batch)


async def _health(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", **MODEL.info()})


# Mounted at "/" but matched passively by BentoML: only GET /health is served by it.
health_app = Starlette(routes=[Route("/health", _health, methods=["GET"])])


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class UploadGuard:
    """ASGI middleware in front of the upload endpoints.

    BentoML treats a *text* value in a file field as a URL to download, tries to JSON-decode
    uploads in unknown fields (both end in a 500) and spools uploads of any size to disk before
    the API sees them. This guard answers these cases itself: a body over the byte limit gets
    413 (from Content-Length when given, before reading it); a missing or unknown field, or a
    text value where a file belongs, gets 400. Valid requests pass on untouched (the buffered
    body is replayed to BentoML).
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
        limit = rule.max_bytes
        too_large = (f"too_large: request body exceeds {limit} bytes "
                     "(serve.max_image_bytes / serve.max_request_bytes)")
        if int(headers.get("content-length") or 0) > limit:
            await JSONResponse({"error": too_large}, status_code=413)(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await JSONResponse({"error": too_large}, status_code=413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        problem = await self._check_fields(scope, bytes(body), receive, rule)
        if problem:
            await JSONResponse({"error": problem}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    @staticmethod
    async def _check_fields(scope: dict, body: bytes, receive: Any, rule: UploadRule
                            ) -> str | None:
        try:
            form = await Request(scope, _replay(body, receive)).form()
        except Exception as err:  # starlette raises MultiPartException, KeyError, ...
            return f"malformed form body: {err}"
        try:
            items = form.multi_items()
        finally:
            await form.close()
        unknown = sorted({k for k, _ in items} - {rule.field, *rule.options})
        if unknown:
            return (f"unexpected form field(s) {unknown}; send the image(s) as field "
                    f"'{rule.field}' (options: {list(rule.options)})")
        files = [v for k, v in items if k == rule.field]
        if not files:
            return f"{rule.field}: missing; upload the image as multipart field '{rule.field}'"
        if any(not isinstance(v, UploadFile) for v in files):
            return f"{rule.field}: expected an uploaded image file, got a text value"
        return None


@dataclass(frozen=True)
class UploadRule:
    """What :class:`UploadGuard` accepts on one route."""

    field: str                 # the file field
    options: tuple[str, ...]   # other (text) fields allowed
    max_bytes: int             # largest request body


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


@bentoml.asgi_app(health_app, path="/")
@bentoml.service(name="emotion_classifier", traffic={"timeout": SETTINGS.timeout_s})
class EmotionClassifier:
    """Public API: classify one image, a batch of images, model info."""

    backend = bentoml.depends(EmotionModel)

    async def _predict(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Probabilities for preprocessed images, in chunks the batcher accepts."""
        if not arrays:
            return np.empty((0, len(MODEL.classes)), dtype=np.float32)
        step = SETTINGS.max_batch_size
        chunks = [np.stack(arrays[i:i + step]).astype(np.float32)
                  for i in range(0, len(arrays), step)]
        results = await asyncio.gather(*(self._call_backend(c) for c in chunks))
        return np.concatenate([np.asarray(r) for r in results])

    async def _call_backend(self, chunk: np.ndarray) -> np.ndarray:
        """One call to the batching model service, retried on a dropped connection.

        BentoML >= 1.4.31 recycles its inter-service HTTP session every 100 requests by closing
        it under requests still in flight (bentoml/BentoML#5540), which surfaces as
        ``ServerDisconnectedError``, "Session is closed" or, when the body was cut mid-read,
        "Connection closed". Inference is idempotent, so such a call is simply sent again on the
        fresh session; other errors are not retried.
        """
        for attempt in range(1, SETTINGS.backend_attempts + 1):
            try:
                return await self.backend.to_async.predict(chunk)
            except (aiohttp.ClientConnectionError, RuntimeError) as err:
                transient = (isinstance(err, aiohttp.ClientConnectionError)
                             or any(m in str(err) for m in DROPPED_CONNECTION_MESSAGES))
                if not transient or attempt == SETTINGS.backend_attempts:
                    raise
                log.info("model service call dropped (%s), retry %d", type(err).__name__,
                         attempt)
        raise AssertionError("unreachable")

    @bentoml.api
    async def classify(
        self,
        image: Path,
        mode: Mode | None = None,
        face_crop: bool | None = None,
    ) -> Answer:
        """Classify every face in one image (multipart field ``image``).

        ``mode``: ``faces`` (default) detects the faces; ``cropped`` takes the image as one face
        crop. ``face_crop`` is the older flag: true = ``faces``, false = ``cropped``."""
        found = await asyncio.to_thread(load_upload, image, "image",
                                        request_mode(mode, face_crop))
        probs = await self._predict(found.inputs)
        return Answer(**answer(found, probs, MODEL.classes))

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
        probs = await self._predict([x for found in loaded for x in found.inputs])
        ends = np.cumsum([len(found.inputs) for found in loaded])
        return [Answer(**answer(found, rows, MODEL.classes))
                for found, rows in zip(loaded, np.split(probs, ends[:-1]), strict=True)]

    @bentoml.api
    async def info(self) -> dict[str, Any]:
        """Model file, classes, preprocessing, limits: what this server is serving."""
        return {"status": "ok", **MODEL.info(),
                "limits": {"max_image_bytes": SETTINGS.max_image_bytes,
                           "max_image_side": SETTINGS.max_image_side,
                           "max_images_per_request": SETTINGS.max_images_per_request,
                           "max_faces_per_image": SETTINGS.faces.max_faces},
                "faces": {"detector": SETTINGS.faces.detector,
                          "min_size": SETTINGS.faces.min_size,
                          "score_threshold": SETTINGS.faces.score_threshold,
                          "margin": SETTINGS.faces.margin},
                "batching": {"max_batch_size": SETTINGS.max_batch_size,
                             "max_latency_ms": SETTINGS.max_latency_ms}}


_MULTIPART_SLACK = 64 * 1024  # form boundaries, part headers, the mode/face_crop fields
_OPTIONS = ("mode", "face_crop")
EmotionClassifier.add_asgi_middleware(UploadGuard, rules={
    "/classify": UploadRule("image", _OPTIONS, SETTINGS.max_image_bytes + _MULTIPART_SLACK),
    "/classify_batch": UploadRule("images", _OPTIONS, SETTINGS.max_request_bytes),
})

__all__ = ["EmotionClassifier", "EmotionModel"]
