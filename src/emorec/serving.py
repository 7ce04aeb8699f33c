"""Serving helpers: what the service does to one upload, and a real ``bentoml serve`` process.

* Faces per upload (:func:`find_faces`, :func:`answer`): the service's work between decoding an
  upload and the model call, kept free of BentoML so it can be read and tested on its own. Mode
  ``faces`` detects, aligns and crops every face; mode ``cropped`` takes the upload as one tight
  face crop (FER-style). A blank picture has no face in either mode, so it never gets an emotion.
* :class:`BentoServer`: starting and stopping ``bentoml serve`` on loopback, shared by the service
  tests and ``benchmarks/serve_load.py``: both need a server exactly as a user starts it (a
  subprocess with its own workers), a readiness wait with a deadline, and a clean shutdown of the
  whole process group it spawned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from emorec.errors import EmorecError
from emorec.faces import Face, FaceSettings, align_crop, is_blank, thread_detector, to_rgb
from emorec.inference import describe_row

REPO = Path(__file__).resolve().parents[2]
SERVICE = "bento.service:EmotionClassifier"
MODES = ("faces", "cropped")
NO_FACE = "no face found"


def resolve_mode(mode: str | None, face_crop: bool | None) -> str:
    """The request's mode; ``faces`` unless asked otherwise.

    ``face_crop`` is the single-face API's flag, still accepted: ``true`` (crop the face first)
    is mode ``faces``, ``false`` (classify the whole upload) is mode ``cropped``. A request that
    sends both must not contradict itself (ValueError).
    """
    legacy = None if face_crop is None else ("faces" if face_crop else "cropped")
    if mode is not None and legacy is not None and mode != legacy:
        raise ValueError(f"mode={mode!r} contradicts face_crop={str(face_crop).lower()}; "
                         "send only mode")
    chosen = mode or legacy or "faces"
    if chosen not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {chosen!r}")
    return chosen


@dataclass(frozen=True)
class FoundFaces:
    """The faces of one upload, each with its model input ``[1, S, S]``, largest first."""

    faces: list[Face]
    inputs: list[np.ndarray]


def find_faces(image: Image.Image, mode: str, settings: FaceSettings,
               preprocess: Callable[[Image.Image], np.ndarray]) -> FoundFaces:
    """Detect (``faces``) or take whole (``cropped``) the faces of an upright image.

    ``faces``: every detected face up to ``settings.max_faces``, eyes levelled and cut square
    with ``settings.margin`` (:func:`emorec.faces.align_crop`). ``cropped``: the whole image is the
    face, boxed as ``[0, 0, width, height]``. A (near) flat image yields no face in both modes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rgb = to_rgb(image)
    if is_blank(rgb):
        return FoundFaces([], [])
    if mode == "cropped":
        height, width = rgb.shape[:2]
        return FoundFaces([Face((0, 0, width, height), 1.0)], [preprocess(Image.fromarray(rgb))])
    faces = thread_detector(settings).detect(rgb)[:settings.max_faces]
    crops = [align_crop(rgb, face, settings.margin).image for face in faces]
    return FoundFaces(faces, [preprocess(crop) for crop in crops])


def answer(found: FoundFaces, probabilities: np.ndarray, classes: Sequence[str]
           ) -> dict[str, Any]:
    """The JSON answer for one upload: ``{"faces": [...]}``, or ``{"faces": [], "message":
    "no face found"}``. The top-level ``label``/``confidence``/``probabilities``/``face_box``
    repeat the largest face, for clients of the single-face API (left out when there is none)."""
    if not found.faces:
        return {"faces": [], "message": NO_FACE}
    faces = []
    for face, probs in zip(found.faces, probabilities, strict=True):
        detection = face.to_json()
        faces.append({"box": detection["box"], "landmarks": detection["landmarks"],
                      "detection_score": detection["score"], **describe_row(probs, classes)})
    largest = faces[0]
    return {"faces": faces, "label": largest["label"], "confidence": largest["confidence"],
            "probabilities": largest["probabilities"], "face_box": largest["box"]}


class ServerError(EmorecError):
    """The server did not start (the message carries the tail of its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BentoServer:
    """``bentoml serve <target>`` on 127.0.0.1 in its own process group; a context manager."""

    def __init__(self, target: str = SERVICE, working_dir: Path = REPO,
                 log_path: Path | None = None, env: dict[str, str] | None = None,
                 port: int | None = None):
        self.target = target
        self.working_dir = working_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or Path(os.devnull)
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> BentoServer:
        """Launch and wait until ``/readyz`` answers 200 (or fail with the log tail)."""
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml_cli), "serve", self.target, "--host", "127.0.0.1",
               "--port", str(self.port), "--working-dir", str(self.working_dir)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.working_dir, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerError(f"bentoml serve exited with {self.proc.returncode}:\n"
                                  f"{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise ServerError(f"bentoml serve not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group (its workers too), SIGKILL if it lingers."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            # workers that outlived the arbiter (same group, started by us) are killed too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> BentoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
