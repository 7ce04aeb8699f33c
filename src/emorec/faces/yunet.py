"""YuNet on onnxruntime: one pass of a 75k-parameter network, anchors decoded as OpenCV does."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from emorec.faces.detectors import Face, FaceDetector, unscale
from emorec.faces.nms import nms

WEIGHTS = "weights/yunet_s.onnx"  # inside emorec.faces; provenance in weights/PROVENANCE.md
STRIDES = (8, 16, 32)
PAD = 32  # the input is padded to a multiple of the coarsest stride, as cv2.FaceDetectorYN does


def weights_path() -> Path:
    """The shipped YuNet-s file (package data: nothing is downloaded)."""
    return Path(str(resources.files("emorec.faces") / WEIGHTS))


class YunetDetector(FaceDetector):
    """YuNet (Wu, Peng, Yu 2023) with the weights of OpenCV's ``FaceDetectorYN``.

    One network run per photo, where MTCNN runs a pyramid of P-Net passes and two more nets
    on its candidates: about 3x less time on a 640x480 photo (``benchmarks/face_detectors.py``).
    The decoding follows OpenCV's ``FaceDetectorYN::postProcess``: on each stride's grid, score =
    sqrt(class x objectness), box centre = (cell + offset) x stride, size = exp(offset) x stride,
    five landmarks = (cell + offset) x stride. The network takes BGR pixels 0-255.
    """

    name = "yunet"
    default_threshold = 0.9  # sqrt(class x objectness); cv2.FaceDetectorYN's default
    has_landmarks = True
    candidate_threshold = 0.5  # anchors below it never reach NMS (the raw floor)
    nms_threshold = 0.3  # IoU; cv2.FaceDetectorYN's default

    def __init__(self, min_size: int = 24, score_threshold: float | None = None,
                 threads: int = 1, max_side: int = 0, input_side: int = 640):
        super().__init__(min_size, score_threshold, max_side)
        self.input_side = input_side
        import onnxruntime as ort

        options = ort.SessionOptions()
        # one network on the whole photo: onnxruntime's own pool shares it between the cores
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(weights_path()), options,
                                             providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """A photo shorter than ``input_side`` (longer side) is enlarged to it first: YuNet
        learnt on 640 px pictures, and misses faces under ~30 px that it finds enlarged."""
        height, width = rgb.shape[:2]
        factor = self.input_side / max(height, width)
        if factor <= 1:
            return self._run(rgb)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return [unscale(face, factor)
                for face in self._run(cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR))]

    def _run(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        outputs = dict(zip(self._outputs, self._session.run(None, {"input": network_input(rgb)}),
                           strict=True))
        rows = decode(outputs, _padded(height), _padded(width), self.candidate_threshold)
        rows = rows[nms(rows, self.nms_threshold)] if len(rows) else rows
        return [_face(row) for row in rows]


def network_input(rgb: np.ndarray) -> np.ndarray:
    """``[1, 3, H', W']`` float BGR, zero-padded right and bottom to multiples of ``PAD``."""
    height, width = rgb.shape[:2]
    out = np.zeros((1, 3, _padded(height), _padded(width)), dtype=np.float32)
    out[0, :, :height, :width] = rgb[:, :, ::-1].transpose(2, 0, 1)
    return out


def _padded(side: int) -> int:
    return max(PAD, -(-side // PAD) * PAD)


def decode(outputs: dict[str, np.ndarray], height: int, width: int, threshold: float
           ) -> np.ndarray:
    """Anchors scoring at or above ``threshold`` as ``[N, 15]`` rows: x1, y1, x2, y2, score,
    then the five landmarks' x, y (the two eyes, the nose tip, the two mouth corners)."""
    found = []
    for stride in STRIDES:
        cols = width // stride
        cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
        obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
        score = np.sqrt(cls * obj)
        keep = np.nonzero(score >= threshold)[0]
        if not len(keep):
            continue
        cell = np.stack([keep % cols, keep // cols], axis=1).astype(np.float64)  # (col, row)
        bbox = outputs[f"bbox_{stride}"][0, keep].astype(np.float64)
        centre = (cell + bbox[:, 0:2]) * stride
        size = np.exp(bbox[:, 2:4]) * stride
        kps = outputs[f"kps_{stride}"][0, keep].astype(np.float64).reshape(-1, 5, 2)
        marks = (kps + cell[:, None, :]) * stride
        found.append(np.hstack([centre - size / 2, centre + size / 2, score[keep, None],
                                marks.reshape(-1, 10)]))
    return np.vstack(found) if found else np.empty((0, 15))


def _face(row: np.ndarray) -> Face:
    x1, y1, x2, y2, score = row[:5]
    pts = row[5:].reshape(5, 2)  # the subject's right eye, left eye, nose, right, left mouth
    eyes = sorted([tuple(pts[0]), tuple(pts[1])])
    marks = {"left_eye": eyes[0], "right_eye": eyes[1], "nose": tuple(pts[2]),
             "mouth_left": tuple(pts[3]), "mouth_right": tuple(pts[4])}
    return Face((int(x1), int(y1), int(x2 - x1), int(y2 - y1)), float(score),
                {k: (float(a), float(b)) for k, (a, b) in marks.items()})
