"""Image quality measures shared by EDA and the synthetic-data filters."""

from __future__ import annotations

import cv2
import imagehash
import numpy as np
from PIL import Image


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the Laplacian: low values mean few edges, i.e. a blurry or blank image."""
    return float(cv2.Laplacian(np.asarray(gray, dtype=np.uint8), cv2.CV_64F).var())


def perceptual_hash(image: Image.Image | np.ndarray, hash_size: int = 8) -> imagehash.ImageHash:
    """pHash of the grayscale image; Hamming distance between hashes measures visual similarity.

    ``hash_size`` 8 gives the classic 64-bit hash. Images that share one layout (frontal faces,
    all centred) crowd into a few bits at that size; ``hash_size`` 16 (256 bits) keeps distinct
    faces apart while a re-noised copy of one face stays close.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return imagehash.phash(image.convert("L"), hash_size=hash_size)


class NearDuplicateIndex:
    """Perceptual hashes seen so far; answers "is this within ``distance`` bits of one of them?".

    A linear scan: the sets here are thousands of images, where it is fast enough and exact.
    """

    def __init__(self, distance: int):
        self.distance = distance
        self._hashes: list[imagehash.ImageHash] = []

    def __len__(self) -> int:
        return len(self._hashes)

    def nearest(self, h: imagehash.ImageHash) -> int | None:
        """Smallest Hamming distance to a stored hash (``None`` when empty)."""
        return min((h - other for other in self._hashes), default=None)

    def is_near_duplicate(self, h: imagehash.ImageHash) -> bool:
        best = self.nearest(h)
        return best is not None and best <= self.distance

    def add(self, h: imagehash.ImageHash) -> None:
        self._hashes.append(h)
