"""Quality gates a synthetic image must pass before it may join the train split.

Each rejection has one reason, checked cheapest first so the count tells what went wrong:

``blur``
    Laplacian variance below ``synth.blur_threshold`` (blank, washed-out or smeared images).
``no_face`` / ``multiple_faces``
    OpenCV's Haar cascade must find exactly one face (``synth.require_one_face``). Small images
    are upscaled to ``synth.detect_min_side`` first: the cascade's smallest window is 24 px and it
    misses faces that fill a tiny image.
``near_duplicate_real`` / ``near_duplicate_synthetic``
    pHash within ``synth.phash_distance`` bits of a real image (train, val or test: a synthetic
    copy of a test face would leak it into training) or of a synthetic image already accepted.
``embedding_duplicate_real`` / ``embedding_duplicate_synthetic``
    (only with ``synth.embedding.enabled``) image embedding within cosine similarity
    ``synth.embedding.threshold`` of a real or an accepted synthetic image: the same face
    shifted, re-lit or re-cropped, which pHash misses (:mod:`emorec.synth.embedding`).
``cap_class`` / ``cap_overall``
    accepting it would push the synthetic share of its class above ``synth.max_fraction``, or
    that of the whole train split above ``synth.max_fraction_overall`` (``null``: the same
    value, which the per-class caps then already imply).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from emorec.config import Params
from emorec.faces import detect_faces
from emorec.quality import NearDuplicateIndex, laplacian_variance, perceptual_hash
from emorec.synth.embedding import EmbeddingFilter

QUALITY_REASONS = ("blur", "no_face", "multiple_faces", "near_duplicate_real",
                   "near_duplicate_synthetic", "embedding_duplicate_real",
                   "embedding_duplicate_synthetic")
CAP_REASONS = ("cap_class", "cap_overall")
REASONS = QUALITY_REASONS + CAP_REASONS


@dataclass(frozen=True)
class FilterConfig:
    blur_threshold: float
    require_one_face: bool
    detect_min_side: int
    phash_size: int
    phash_distance: int

    @classmethod
    def from_params(cls, params: Params) -> FilterConfig:
        s = params.section("synth")
        return cls(blur_threshold=s.number("blur_threshold", low=0),
                   require_one_face=s.boolean("require_one_face"),
                   detect_min_side=s.integer("detect_min_side", low=24, high=2048),
                   phash_size=s.integer("phash_size", low=4, high=64),
                   phash_distance=s.integer("phash_distance", low=0))


def count_faces(gray: np.ndarray, min_side: int) -> int:
    """Frontal faces found by the Haar cascade, after upscaling to at least ``min_side`` px."""
    h, w = gray.shape[:2]
    if min(h, w) < min_side:
        factor = min_side / min(h, w)
        gray = cv2.resize(gray, (round(w * factor), round(h * factor)),
                          interpolation=cv2.INTER_CUBIC)
    return len(detect_faces(gray))


class QualityFilter:
    """Blur, one-face and near-duplicate checks, with memory of real and accepted images.

    ``embedding`` adds the (optional, slower) embedding near-duplicate check after pHash.
    """

    def __init__(self, config: FilterConfig, embedding: EmbeddingFilter | None = None):
        self.config = config
        self.real = NearDuplicateIndex(config.phash_distance)
        self.synthetic = NearDuplicateIndex(config.phash_distance)
        self.embedding = embedding

    def add_reference(self, gray: np.ndarray) -> None:
        """Remember a real image: synthetic look-alikes of it are rejected."""
        self.add_references([gray])

    def add_references(self, grays: list[np.ndarray]) -> None:
        """Remember real images (embedded in batches when the embedding check is on)."""
        for gray in grays:
            self.real.add(perceptual_hash(gray, self.config.phash_size))
        if self.embedding is not None and grays:
            self.embedding.add_references(grays)

    def check(self, gray: np.ndarray) -> str | None:
        """The reason to reject ``gray`` (one of :data:`QUALITY_REASONS`), or ``None``."""
        if laplacian_variance(gray) < self.config.blur_threshold:
            return "blur"
        if self.config.require_one_face:
            faces = count_faces(gray, self.config.detect_min_side)
            if faces != 1:
                return "no_face" if faces == 0 else "multiple_faces"
        h = perceptual_hash(gray, self.config.phash_size)
        if self.real.is_near_duplicate(h):
            return "near_duplicate_real"
        if self.synthetic.is_near_duplicate(h):
            return "near_duplicate_synthetic"
        if self.embedding is not None:
            return self.embedding.check(gray)
        return None

    def accept(self, gray: np.ndarray) -> None:
        """Remember an accepted synthetic image, so later ones may not copy it."""
        self.synthetic.add(perceptual_hash(gray, self.config.phash_size))
        if self.embedding is not None:
            self.embedding.accept(gray)


def max_synthetic(real: int, fraction: float) -> int:
    """Largest ``s`` with ``s / (real + s) <= fraction``: the cap counts the merged total."""
    if fraction <= 0:
        return 0
    # small epsilon: 0.15 * 85 / 0.85 is 15.000000000000002 in floating point, must stay 15
    return math.floor(fraction * real / (1.0 - fraction) + 1e-9)


class SyntheticCap:
    """Per-class and overall limits on the synthetic share of the merged train split."""

    def __init__(self, real_counts: dict[str, int], fraction: float,
                 overall_fraction: float | None = None):
        self.fraction = fraction
        self.overall_fraction = fraction if overall_fraction is None else overall_fraction
        self.per_class = {c: max_synthetic(n, fraction) for c, n in real_counts.items()}
        self.overall = max_synthetic(sum(real_counts.values()), self.overall_fraction)
        self.taken = dict.fromkeys(real_counts, 0)

    def check(self, label: str) -> str | None:
        """``cap_class`` or ``cap_overall`` when one more ``label`` image would exceed a cap."""
        if self.taken[label] >= self.per_class[label]:
            return "cap_class"
        if sum(self.taken.values()) >= self.overall:
            return "cap_overall"
        return None

    def take(self, label: str) -> None:
        self.taken[label] += 1
