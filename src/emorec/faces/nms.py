"""Greedy non-maximum suppression on ``[N, >=5]`` boxes (x1, y1, x2, y2, score), shared by the
detectors (MTCNN's stages, YuNet's anchors) and mirrored by ``mobile/src/faces.js``."""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, threshold: float, union: bool = True) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression on ``[N, >=5]`` (x1, y1, x2, y2, score).

    ``union=False`` divides the overlap by the smaller box (MTCNN's last stage), which also drops
    a small box inside a larger one. Up to ``NMS_MATRIX_MAX`` boxes the pairwise overlaps are
    one matrix and the greedy pass only reads it (a photo's NMS calls: ~2 -> ~0.3 ms); beyond,
    one row is computed per kept box.
    """
    order = np.argsort(boxes[:, 4])[::-1]
    ranked = boxes[order, 0:4]
    matrix = overlaps(ranked, ranked, union) if len(ranked) <= NMS_MATRIX_MAX else None
    suppressed = np.zeros(len(ranked), dtype=bool)
    keep = []
    for i in range(len(ranked)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        row = matrix[i] if matrix is not None else overlaps(ranked[i:i + 1], ranked, union)[0]
        suppressed |= row > threshold
    return np.array(keep, dtype=int)


NMS_MATRIX_MAX = 1024  # 1024^2 float64 overlaps = 8 MB


def overlaps(a: np.ndarray, b: np.ndarray, union: bool) -> np.ndarray:
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
