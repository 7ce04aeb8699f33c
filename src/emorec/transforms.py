"""Pixel preprocessing shared by training, evaluation, export, serving and the mobile client.

The contract is deliberately tiny so it can be re-implemented exactly in JavaScript
(``mobile/``): grayscale (ITU-R 601-2 luma, as PIL's ``convert("L")``), bilinear resize to
``image.size`` square, ``x = (pixel / 255 - mean) / std``, tensor layout ``[1, size, size]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from emorec.config import Params


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: float
    std: float

    @classmethod
    def from_params(cls, params: Params) -> Preprocess:
        return cls(
            size=params.integer("image.size", low=16, high=1024),
            mean=params.number("image.mean", low=0, high=1),
            std=params.number("image.std", low=1e-6),
        )

    @classmethod
    def from_meta(cls, image: Mapping[str, Any]) -> Preprocess:
        """From the ``image`` dict stored with a model (checkpoint meta, ONNX metadata)."""
        return cls(size=int(image["size"]), mean=float(image["mean"]), std=float(image["std"]))

    def to_gray(self, image: Image.Image) -> np.ndarray:
        """uint8 ``[size, size]`` array: grayscale, resized."""
        gray = image.convert("L")
        if gray.size != (self.size, self.size):
            gray = gray.resize((self.size, self.size), Image.BILINEAR)
        return np.asarray(gray, dtype=np.uint8)

    def normalize(self, gray: np.ndarray) -> np.ndarray:
        """float32 ``[1, H, W]`` from a uint8 ``[H, W]`` array."""
        x = gray.astype(np.float32) / 255.0
        return ((x - self.mean) / self.std)[None, :, :]

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalize(self.to_gray(image))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """float32 ``[N, 1, size, size]``."""
        return np.stack([self(img) for img in images]).astype(np.float32)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Back to uint8 pixels, for overlays and grids."""
        gray = (np.asarray(x).squeeze() * self.std + self.mean) * 255.0
        return np.clip(gray, 0, 255).astype(np.uint8)
