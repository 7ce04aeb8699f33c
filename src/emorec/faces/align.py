"""From a photo and its faces to classifier crops: pixels as uint8 RGB, blank pictures,
eye-levelling alignment, square crops with a margin, and the multi-face policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from emorec.faces.detectors import Face

MULTI_FACE_POLICIES = ("largest", "all", "reject")
# A picture whose grey levels spread less than this (standard deviation, 0-255) shows nothing.
BLANK_STD = 2.0


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
