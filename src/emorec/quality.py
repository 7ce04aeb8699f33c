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


def pack_hashes(hashes: list[imagehash.ImageHash]) -> np.ndarray:
    """Perceptual hashes as rows of 64-bit words (``[N, bits / 64]`` uint64), for fast XOR."""
    bits = np.stack([np.asarray(h.hash, dtype=bool).ravel() for h in hashes])
    pad = (-bits.shape[1]) % 64
    bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def near_duplicate_pairs(words: np.ndarray, distance: int, block: int = 512) -> np.ndarray:
    """Pairs ``(i, j, hamming)``, ``i < j``, whose hashes differ in at most ``distance`` bits.

    Exact all-pairs search, vectorised: each block of rows is compared only with the rows after
    it (upper triangle), one 64-bit word at a time, so memory stays at ``block x N`` small
    integers. 30k 256-bit hashes take seconds, where a Python loop over pairs takes hours.
    Returns an ``[P, 3]`` int64 array, sorted by ``(i, j)``.
    """
    n = len(words)
    found: list[np.ndarray] = []
    for start in range(0, n, block):
        rows = words[start:start + block]
        rest = words[start:]
        dist = np.zeros((len(rows), len(rest)), dtype=np.uint16)
        for w in range(words.shape[1]):
            dist += np.bitwise_count(rows[:, w, None] ^ rest[None, :, w])
        ii, jj = np.nonzero(dist <= distance)
        keep = jj > ii  # strictly after i: each pair once, never an image with itself
        ii, jj = ii[keep], jj[keep]
        found.append(np.stack([ii + start, jj + start, dist[ii, jj]], axis=1).astype(np.int64))
    return np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)


def near_duplicate_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Group id per image: connected components of the near-duplicate graph (chains join)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


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
