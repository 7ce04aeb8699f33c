"""What the service does to one upload between decoding and the model call, and the answer
it gives: modes, faces with their model inputs, the JSON per face and per upload. Free of
BentoML so it can be read and tested on its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from emorec.faces import Face, FaceSettings, align_crop, is_blank, thread_detector, to_rgb
from emorec.inference import describe_row

MODES = ("faces", "cropped")
NO_FACE = "no face found"


def resolve_mode(mode: str | None, face_crop: bool | None) -> str:
    """The request's mode; ``faces`` unless asked otherwise.

    ``face_crop`` is the single-face API's flag, still accepted: ``true`` (crop the face first)
    is mode ``faces``, ``false`` (classify the whole upload) is mode ``cropped``. A request that
    sends both must not contradict itself (ValueError).
    """
    legacy = None if face_crop is None else ("faces" if face_crop else "cropped")
    if mode is not None and legacy is not None and mode != legacy:
        raise ValueError(f"mode={mode!r} contradicts face_crop={str(face_crop).lower()}; "
                         "send only mode")
    chosen = mode or legacy or "faces"
    if chosen not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {chosen!r}")
    return chosen


@dataclass(frozen=True)
class FoundFaces:
    """The faces of one upload, each with its model input ``[1, S, S]``, largest first."""

    faces: list[Face]
    inputs: list[np.ndarray]


def find_faces(image: Image.Image, mode: str, settings: FaceSettings,
               preprocess: Callable[[Image.Image], np.ndarray]) -> FoundFaces:
    """Detect (``faces``) or take whole (``cropped``) the faces of an upright image.

    ``faces``: every detected face up to ``settings.max_faces``, eyes levelled and cut square
    with ``settings.margin`` (:func:`emorec.faces.align_crop`). ``cropped``: the whole image is the
    face, boxed as ``[0, 0, width, height]``. A (near) flat image yields no face in both modes.

    An upload already cropped to a face often has too little head around it for a detector
    (MTCNN finds three in four of FER2013's 48 px crops). When nothing is found in an image no
    larger than ``settings.whole_image_max_side``, the image is taken as that crop: one face
    boxed as the whole image, with detection score 0 to say that no detector found it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rgb = to_rgb(image)
    if is_blank(rgb):
        return FoundFaces([], [])
    if mode == "cropped":
        height, width = rgb.shape[:2]
        return FoundFaces([Face((0, 0, width, height), 1.0)], [preprocess(Image.fromarray(rgb))])
    faces = thread_detector(settings).detect(rgb)[:settings.max_faces]
    if not faces and max(rgb.shape[:2]) <= settings.whole_image_max_side:
        height, width = rgb.shape[:2]
        return FoundFaces([Face((0, 0, width, height), 0.0)], [preprocess(Image.fromarray(rgb))])
    crops = [align_crop(rgb, face, settings.margin).image for face in faces]
    return FoundFaces(faces, [preprocess(crop) for crop in crops])


def face_answer(face: Face, probabilities: np.ndarray, classes: Sequence[str],
                min_confidence: float | None, **extra: Any) -> dict[str, Any]:
    """One face's part of an answer: where it is, how sure the detector was, its emotion;
    ``extra`` fields (the stream's ``track_id``) go before the emotion."""
    detection = face.to_json()
    return {"box": detection["box"], "landmarks": detection["landmarks"],
            "detection_score": detection["score"], **extra,
            **describe_row(probabilities, classes, min_confidence)}


def answer(found: FoundFaces, probabilities: np.ndarray, classes: Sequence[str],
           min_confidence: float | None = None) -> dict[str, Any]:
    """The JSON answer for one upload: ``{"faces": [...]}``, or ``{"faces": [], "message":
    "no face found"}``. The top-level ``label``/``confidence``/``probabilities``/``face_box``
    repeat the largest face, for clients of the single-face API (left out when there is none).
    A face whose top probability is below ``min_confidence`` is labelled ``uncertain``."""
    if not found.faces:
        return {"faces": [], "message": NO_FACE}
    faces = [face_answer(face, probs, classes, min_confidence)
             for face, probs in zip(found.faces, probabilities, strict=True)]
    largest = faces[0]
    return {"faces": faces, "label": largest["label"], "confidence": largest["confidence"],
            "probabilities": largest["probabilities"], "face_box": largest["box"]}
