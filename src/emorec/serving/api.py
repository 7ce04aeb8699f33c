"""The HTTP API's pieces that ``bento/service.py`` declares its endpoints with: the answer schema,
the 413/503 errors, reading uploads, and ``POST /classify`` answered from an already parsed form
(the :class:`~emorec.serving.upload_guard.UploadGuard` fast path)."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from bentoml.exceptions import BadInput, BentoMLException
from PIL import Image
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer
from starlette.datastructures import FormData
from starlette.responses import Response

from emorec.errors import ImageError
from emorec.serving.answers import FoundFaces, resolve_mode
from emorec.serving.batching import Overloaded, server_timing
from emorec.serving.upload_guard import json_error
from emorec.serving.worker import Worker


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


def request_mode(mode: str | None, face_crop: bool | None) -> str:
    try:
        return resolve_mode(mode, face_crop)
    except ValueError as err:
        raise BadInput(str(err)) from err


def read_upload(worker: Worker, path: Path, what: str) -> Image.Image:
    """One multipart upload, decoded; 4xx exceptions name the field and the reason."""
    if not isinstance(path, Path) or not path.is_file():
        raise BadInput(f"{what}: expected an uploaded image file (multipart/form-data)")
    try:
        return worker.decode_image(path.read_bytes())
    except ImageError as err:
        if err.reason == "too_large":
            raise PayloadTooLarge(f"{what}: {err}") from err
        raise BadInput(f"{what}: {err}") from err


def load_upload(worker: Worker, path: Path, what: str, mode: str) -> FoundFaces:
    """One upload's faces with their model inputs (runs in a worker thread)."""
    return worker.find_faces(read_upload(worker, path, what), mode)


_TRUE, _FALSE = {"true", "1", "yes", "on", "t", "y"}, {"false", "0", "no", "off", "f", "n"}


def form_flag(value: Any) -> bool | None:
    """A form's boolean text as pydantic reads it (ValueError if it is none of those)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"face_crop must be true or false, got {value!r}")


async def classify_form(worker: Worker, form: FormData) -> Response:
    """``POST /classify`` from an already parsed form (the guard's fast path)."""
    files = form.getlist("image")
    if len(files) != 1:
        return json_error(400, f"image: send exactly one file, got {len(files)}")
    try:
        mode = resolve_mode(form.get("mode"), form_flag(form.get("face_crop")))
    except ValueError as err:
        return json_error(400, str(err))
    try:
        result, timings = await worker.classify_image(await files[0].read(), mode)
    except ImageError as err:
        return json_error(413 if err.reason == "too_large" else 400, f"image: {err}")
    except Overloaded as err:
        return json_error(503, str(err))
    return Response(Answer(**result).model_dump_json(), media_type="application/json",
                    headers={"server-timing": server_timing(timings)})
