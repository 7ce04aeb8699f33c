"""How the service's own crop path scores on a labelled split, and which face margin suits it.

The evaluate stage scores models on the dataset's crops as they are. The service instead finds
the face (``faces.detector``), levels the eyes and cuts a square with ``serve.face_margin``
around the detector's box (:func:`emorec.faces.align_crop`). If that crop is framed unlike the
training crops, real photos score below the test split, and nothing else would show it. This
module replays the service path on labelled images: how often a face is found, and the accuracy
on those faces for several margins, next to the accuracy of the same images taken whole.

The margin is chosen on the validation split only; the test split is scored once, at the
chosen margin and at the configured one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from emorec.faces import Face, FaceSettings, align_crop, thread_detector, to_rgb
from emorec.inference import OnnxClassifier


@dataclass(frozen=True)
class Detected:
    """A split's images with labels, and the largest face the service's detector finds in each
    (None: none found; the service would answer "no face found")."""

    images: list[np.ndarray]
    labels: np.ndarray
    faces: list[Face | None]

    @property
    def found(self) -> np.ndarray:
        return np.array([face is not None for face in self.faces])


def detect_split(paths: Sequence[Path], labels: Sequence[str], settings: FaceSettings,
                 what: str = "images") -> Detected:
    """Load ``paths`` and run the service's detector on each, largest face kept."""
    detector = thread_detector(settings)
    images, faces = [], []
    for path in tqdm(paths, desc=f"detecting faces in {what}", unit="img", leave=False):
        rgb = to_rgb(Image.open(path))
        found = detector.detect(rgb)
        images.append(rgb)
        faces.append(found[0] if found else None)
    return Detected(images, np.asarray(labels, dtype=str), faces)


def accuracy(model: OnnxClassifier, images: Sequence[np.ndarray], labels: np.ndarray,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``images`` (uint8 RGB) against string ``labels``."""
    if not len(images):
        return float("nan")
    predicted = []
    for start in range(0, len(images), batch_size):
        rows = [model.preprocess(Image.fromarray(im)) for im in images[start:start + batch_size]]
        predicted += list(model.probabilities(np.stack(rows)).argmax(1))
    return float(np.mean(np.asarray(model.classes)[predicted] == labels))


def crops(detected: Detected, margin: float) -> list[np.ndarray]:
    """The service's crop of every found face at ``margin``."""
    return [np.asarray(align_crop(im, face, margin).image)
            for im, face in zip(detected.images, detected.faces, strict=True) if face]


def score(model: OnnxClassifier, detected: Detected, margins: Sequence[float]
          ) -> dict[str, Any]:
    """Face-found rate; on the found faces, accuracy per margin and of the images taken whole."""
    found = detected.found
    whole = [im for im, ok in zip(detected.images, found, strict=True) if ok]
    return {"n": int(len(found)), "faces_found": int(found.sum()),
            "found_rate": float(found.mean()) if len(found) else float("nan"),
            "whole_image_accuracy_on_found": accuracy(model, whole, detected.labels[found]),
            "accuracy_on_found_by_margin": {
                f"{m:g}": accuracy(model, crops(detected, m), detected.labels[found])
                for m in margins}}


def best_margin(val: dict[str, Any]) -> float:
    """The margin with the highest validation accuracy (ties: the smaller margin)."""
    by_margin = val["accuracy_on_found_by_margin"]
    return min((float(m) for m in by_margin), key=lambda m: (-by_margin[f"{m:g}"], m))
