"""One service worker: its model and micro-batcher, and the work on one image (decode, find the
faces, classify them through the batcher that every request of the worker shares)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from emorec.errors import ImageError
from emorec.imageio import open_image
from emorec.inference import OnnxClassifier, resolve_min_confidence
from emorec.served_model import model_provenance
from emorec.serving.answers import FoundFaces, answer, find_faces
from emorec.serving.batching import MicroBatcher
from emorec.serving.settings import ServeSettings

log = logging.getLogger("emorec.service")

# A whole-upload crop this small decodes in about 0.1 ms, less than the hop to a worker thread
# and back costs the event loop; bigger images and face detection go to a thread.
INLINE_MAX_BYTES = 64 * 1024
INLINE_MAX_PIXELS = 160 * 160


class Worker:
    """One model and one batcher per worker process (BentoML imports the service in each)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.model = OnnxClassifier(settings.model.path, threads=settings.threads)
        # Which model answers and where it came from (kind, file, sha256, card name), for /health.
        self.provenance = model_provenance(settings.model, self.model.classes)
        log.info("serving %s (%s, sha256 %s)", settings.model.path, settings.model.setting,
                 self.provenance["sha256"][:12])
        # Below this calibrated top-1 probability a face is answered "uncertain" (0: never; auto:
        # the threshold the evaluate stage found to answer 90 % of val, in the model's metadata).
        self.min_confidence = resolve_min_confidence(settings.min_confidence,
                                                     self.model.suggested_min_confidence) or None
        self.batcher = MicroBatcher(self.model.probabilities, settings.max_batch_size,
                                    settings.max_queue)

    def decode_image(self, data: bytes) -> Image.Image:
        """Validate and decode one image's bytes, upright (ImageError says why not)."""
        limit = self.settings.max_image_bytes
        if len(data) > limit:
            raise ImageError("too_large", f"{len(data)} bytes, limit {limit} "
                             "(serve.max_image_bytes)")
        image = open_image(data, max_side=self.settings.max_image_side)
        # Phone photos carry their rotation in EXIF; turn them upright as ingest and browsers do.
        return ImageOps.exif_transpose(image)

    def find_faces(self, image: Image.Image, mode: str) -> FoundFaces:
        """An upright image's faces with their model inputs."""
        return find_faces(image, mode, self.settings.faces, self.model.preprocess)

    def faces_of(self, data: bytes, mode: str) -> FoundFaces:
        """Decode ``data`` and find its faces with their model inputs (ImageError if unusable)."""
        return self.find_faces(self.decode_image(data), mode)

    async def classify_image(self, data: bytes, mode: str
                             ) -> tuple[dict[str, Any], dict[str, float]]:
        """The answer for one image and where its time went (``Server-Timing`` stages, ms).

        Raises ImageError (bad upload) or Overloaded (too many crops waiting); the callers turn
        them into their 4xx/503 answers."""
        started = time.perf_counter()
        if decodes_inline(data, mode):
            found = self.faces_of(data, mode)
        else:
            found = await asyncio.to_thread(self.faces_of, data, mode)
        timings = {"decode" if mode == "cropped" else "detect": _elapsed_ms(started)}
        probs = await self.classify_rows(found.inputs, timings)
        timings["total"] = _elapsed_ms(started)
        return self.answer(found, probs), timings

    async def classify_rows(self, inputs: list[np.ndarray], timings: dict[str, float]
                            ) -> np.ndarray:
        """Probabilities for the face crops of one request through the shared micro-batcher;
        adds ``queue`` and ``model`` milliseconds to ``timings``."""
        if not inputs:
            return np.empty((0, len(self.model.classes)), dtype=np.float32)
        result = await self.batcher(np.stack(inputs).astype(np.float32, copy=False))
        timings.update(queue=result.wait_ms, model=result.model_ms)
        return result.probabilities

    def answer(self, found: FoundFaces, probabilities: np.ndarray) -> dict[str, Any]:
        """The JSON answer for one upload (:func:`emorec.serving.answers.answer`)."""
        return answer(found, probabilities, self.model.classes, self.min_confidence)

    def health(self) -> dict[str, Any]:
        """``GET /health``: which model answers, where it came from, its classes."""
        return {"status": "ok", "model": self.provenance, **self.model.info()}

    def info(self) -> dict[str, Any]:
        """Model file, classes, preprocessing, limits: what this server is serving."""
        s = self.settings
        return {"status": "ok", "model": self.provenance, **self.model.info(),
                "limits": {"max_image_bytes": s.max_image_bytes,
                           "max_image_side": s.max_image_side,
                           "max_images_per_request": s.max_images_per_request,
                           "max_faces_per_image": s.faces.max_faces},
                "faces": {"detector": s.faces.detector,
                          "min_size": s.faces.min_size,
                          "score_threshold": s.faces.score_threshold,
                          "margin": s.faces.margin},
                "batching": {"max_batch_size": s.max_batch_size,
                             "max_queue": s.max_queue, "workers": s.workers,
                             "this_worker": self.batcher.stats.to_json()},
                "stream": {"smoothing": s.stream.smoothing,
                           "match_iou": s.stream.match_iou,
                           "max_missed": s.stream.max_missed,
                           "max_in_flight": s.stream.max_in_flight}}


def decodes_inline(data: bytes, mode: str) -> bool:
    """Whether to decode on the event loop: mode cropped and a small image (by its header)."""
    if mode != "cropped" or len(data) > INLINE_MAX_BYTES:
        return False
    try:
        width, height = Image.open(io.BytesIO(data)).size  # reads the header only
    except Exception:  # noqa: BLE001 - a broken header fails as fast in decode_image
        return True
    return width * height <= INLINE_MAX_PIXELS


def _elapsed_ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
