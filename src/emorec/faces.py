"""Face detection with OpenCV's Haar cascade, whose weights ship inside the opencv package.

Used by the synthetic-data filter (exactly one face) and by the service's optional crop.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x, y, width, height


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():  # pragma: no cover - only with a broken OpenCV install
        raise RuntimeError(f"cannot load Haar cascade from {path}")
    return cascade


def detect_faces(image: Image.Image | np.ndarray, min_size: int = 24) -> list[Box]:
    """Bounding boxes of frontal faces, largest first."""
    gray = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image,
                      dtype=np.uint8)
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(min_size, min_size))
    boxes = [tuple(int(v) for v in box) for box in found]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def crop_largest_face(image: Image.Image, margin: float = 0.15) -> tuple[Image.Image, Box | None]:
    """The largest face with a margin around it, or the whole image when none is found."""
    boxes = detect_faces(image)
    if not boxes:
        return image, None
    x, y, w, h = boxes[0]
    dx, dy = int(w * margin), int(h * margin)
    left, top = max(0, x - dx), max(0, y - dy)
    right, bottom = min(image.width, x + w + dx), min(image.height, y + h + dy)
    return image.crop((left, top, right, bottom)), boxes[0]
