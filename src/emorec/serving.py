"""Serving helpers: what the service does to one upload, and a real ``bentoml serve`` process.

* Faces per upload (:func:`find_faces`, :func:`answer`): the service's work between decoding an
  upload and the model call, kept free of BentoML so it can be read and tested on its own. Mode
  ``faces`` detects, aligns and crops every face; mode ``cropped`` takes the upload as one tight
  face crop (FER-style). A blank picture has no face in either mode, so it never gets an emotion.
* :class:`MicroBatcher`: the model call. Requests that arrive while the model is busy go
  together as the next batch; an idle server runs a request at once (no batching wait).
* Video streams (:class:`StreamSettings`, :class:`FaceTracker`, :func:`stream_answer`): faces
  followed from frame to frame by box overlap, their probabilities smoothed (EMA) per face.
* :class:`BentoServer`: starting and stopping ``bentoml serve`` on loopback, shared by the service
  tests and the serving benchmarks: both need a server exactly as a user starts it (a
  subprocess with its own workers), a readiness wait with a deadline, and a clean shutdown of the
  whole process group it spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from emorec.config import Params
from emorec.errors import EmorecError
from emorec.faces import Box, Face, FaceSettings, align_crop, is_blank, thread_detector, to_rgb
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


def face_answer(face: Face, probabilities: np.ndarray, classes: Sequence[str],
                min_confidence: float | None, **extra: Any) -> dict[str, Any]:
    """One face's part of an answer: where it is, how sure the detector was, its emotion;
    ``extra`` fields (the stream's ``track_id``) go before the emotion."""
    detection = face.to_json()
    return {"box": detection["box"], "landmarks": detection["landmarks"],
            "detection_score": detection["score"], **extra,
            **describe_row(probabilities, classes, min_confidence)}


def answer(found: FoundFaces, probabilities: np.ndarray, classes: Sequence[str],
           min_confidence: float | None = None) -> dict[str, Any]:
    """The JSON answer for one upload: ``{"faces": [...]}``, or ``{"faces": [], "message":
    "no face found"}``. The top-level ``label``/``confidence``/``probabilities``/``face_box``
    repeat the largest face, for clients of the single-face API (left out when there is none).
    A face whose top probability is below ``min_confidence`` is labelled ``uncertain``."""
    if not found.faces:
        return {"faces": [], "message": NO_FACE}
    faces = [face_answer(face, probs, classes, min_confidence)
             for face, probs in zip(found.faces, probabilities, strict=True)]
    largest = faces[0]
    return {"faces": faces, "label": largest["label"], "confidence": largest["confidence"],
            "probabilities": largest["probabilities"], "face_box": largest["box"]}


# ---------------------------------------------------------------------------------------------
# The model call: micro-batching without a wait


class Overloaded(EmorecError):
    """More face crops wait for the model than ``serve.max_queue`` allows (the service: 503)."""


@dataclass
class Batched:
    """A job's probabilities and where its time went (milliseconds)."""

    probabilities: np.ndarray
    wait_ms: float      # queued behind the batch that was running
    model_ms: float     # the batch's model run (shared with the batch's other rows)
    batch_rows: int     # rows in the largest batch the job rode in


@dataclass
class _Job:
    rows: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters for ``/info``: how much batching the load really produced."""

    batches: int = 0
    rows: int = 0
    largest: int = 0

    def add(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        self.largest = max(self.largest, rows)

    def to_json(self) -> dict[str, Any]:
        mean = self.rows / self.batches if self.batches else 0.0
        return {"batches": self.batches, "rows": self.rows, "largest": self.largest,
                "mean_rows": round(mean, 2)}


class MicroBatcher:
    """Runs ``run([N, ...]) -> [N, C]`` in one dedicated thread, merging calls that overlap.

    Why not BentoML's adaptive batching: it parks each request for part of a latency budget
    to find partners and sends it to a second service over HTTP; on an idle server both are
    pure cost (the issue measured 106 ms per request for a 2 ms model). Here the first request
    runs at once; requests that arrive while a batch runs queue up and go together as the next
    batch (at most ``max_batch_size`` rows). Under load batches grow by themselves, when idle
    the latency is the model's own. The thread is private so model runs never queue behind
    decoding or face detection in the shared thread pool, and onnxruntime releases the GIL, so
    the event loop keeps reading requests meanwhile.

    Callers must validate their input first: a batch holds several clients' rows, and a failing
    run fails all of them. ``max_queue`` bounds the rows waiting, so a flood is refused with
    :class:`Overloaded` instead of growing everyone's latency without end.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch_size: int,
                 max_queue: int):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._queued_rows = 0
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emorec-model")

    async def __call__(self, rows: np.ndarray) -> Batched:
        """Probabilities for ``rows`` (``[N, ...]``), in order; no rows give ``[0, 0]``."""
        if len(rows) == 0:
            return Batched(np.empty((0, 0), dtype=np.float32), 0.0, 0.0, 0)
        if self._queued_rows + len(rows) > self.max_queue:
            raise Overloaded(f"{self._queued_rows} face crops already wait for the model "
                             f"(serve.max_queue {self.max_queue}); retry shortly")
        loop = asyncio.get_running_loop()
        jobs = [_Job(rows[i:i + self.max_batch_size], loop.create_future())
                for i in range(0, len(rows), self.max_batch_size)]
        self._jobs.extend(jobs)
        self._queued_rows += len(rows)
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        parts: list[Batched] = await asyncio.gather(*(job.future for job in jobs))
        return Batched(np.concatenate([p.probabilities for p in parts]),
                       max(p.wait_ms for p in parts), sum(p.model_ms for p in parts),
                       max(p.batch_rows for p in parts))

    def _take(self) -> list[_Job]:
        """The next batch: waiting jobs in arrival order up to ``max_batch_size`` rows."""
        batch = [self._jobs.popleft()]
        rows = len(batch[0].rows)
        while self._jobs and rows + len(self._jobs[0].rows) <= self.max_batch_size:
            rows += len(self._jobs[0].rows)
            batch.append(self._jobs.popleft())
        self._queued_rows -= rows
        return batch

    async def _drain(self) -> None:
        """Run batches until nothing waits (the next call starts a new drain)."""
        loop = asyncio.get_running_loop()
        try:
            while self._jobs:
                batch = self._take()
                started = time.perf_counter()
                merged = np.concatenate([job.rows for job in batch])
                try:
                    probs = await loop.run_in_executor(self._executor, self._run, merged)
                except Exception as err:  # noqa: BLE001 - handed to every waiting caller
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                done = time.perf_counter()
                self.stats.add(len(merged))
                model_ms = (done - started) * 1000.0
                ends = np.cumsum([len(job.rows) for job in batch])[:-1]
                for job, part in zip(batch, np.split(probs, ends), strict=True):
                    if not job.future.done():  # the caller may have gone (cancelled)
                        job.future.set_result(Batched(part, (started - job.queued_at) * 1000.0,
                                                      model_ms, len(merged)))
        finally:
            self._worker = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def server_timing(stages: dict[str, float]) -> str:
    """A ``Server-Timing`` header (W3C) from ``{stage: milliseconds}``: browsers' dev tools and
    ``benchmarks/serve_load.py --profile`` read where a request's time went from it."""
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in stages.items())


def parse_server_timing(header: str) -> dict[str, float]:
    """The inverse of :func:`server_timing` (unknown parts are skipped)."""
    stages: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            stages[name] = float(rest)
    return stages


# ---------------------------------------------------------------------------------------------
# Video streams: faces followed across frames, probabilities smoothed per face


@dataclass(frozen=True)
class StreamSettings:
    """``serve.stream`` in params.yaml: the ``/stream`` WebSocket."""

    smoothing: float       # EMA weight of the newest frame per tracked face; 1 = no smoothing
    match_iou: float       # a face continues a track when its box overlaps the track's this much
    max_missed: int        # frames a track survives without a face matching it
    max_in_flight: int     # frames of one stream worked on at once (answers stay in order)
    max_frame_bytes: int   # larger frames are answered with an error (the stream goes on)

    @classmethod
    def from_params(cls, params: Params) -> StreamSettings:
        s = params.section("serve.stream")
        return cls(smoothing=s.number("smoothing", low=0.01, high=1.0),
                   match_iou=s.number("match_iou", low=0.01, high=1.0),
                   max_missed=s.integer("max_missed", low=0),
                   max_in_flight=s.integer("max_in_flight", low=1, high=64),
                   max_frame_bytes=s.integer("max_frame_bytes", low=1))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed across frames."""

    id: int
    box: Box
    probabilities: np.ndarray  # smoothed
    missed: int = 0


class FaceTracker:
    """Identity of the faces of one stream, and their EMA-smoothed probabilities.

    Why: an emotion read from single frames flickers (a blink, motion blur, a half-turned head);
    averaging each face's probabilities over its recent frames steadies the label without a
    model change. A new frame's faces are matched to the tracks of the frames before by box
    overlap (greedy, largest IoU first): at video frame rates a face moves little from one frame
    to the next, so overlap is enough and needs no appearance model. A track that finds no face
    for more than ``max_missed`` frames ends; an unmatched face starts a new one.
    """

    def __init__(self, smoothing: float, match_iou: float, max_missed: int):
        self.alpha = smoothing
        self.match_iou = match_iou
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(self, boxes: Sequence[Box], probabilities: np.ndarray
               ) -> list[tuple[int, np.ndarray]]:
        """``(track id, smoothed probabilities)`` for each face of the new frame, in order."""
        pairs = self._match(boxes)
        out: list[tuple[int, np.ndarray]] = []
        seen: set[int] = set()
        for i, box in enumerate(boxes):
            probs = np.asarray(probabilities[i], dtype=np.float64)
            track = pairs.get(i)
            if track is None:
                track = Track(self._next_id, tuple(box), probs)
                self._next_id += 1
                self.tracks.append(track)
            else:
                track.probabilities = self.alpha * probs + (1 - self.alpha) * track.probabilities
                track.box, track.missed = tuple(box), 0
            seen.add(track.id)
            out.append((track.id, track.probabilities.astype(np.float32)))
        for track in self.tracks:
            if track.id not in seen:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return out

    def _match(self, boxes: Sequence[Box]) -> dict[int, Track]:
        """Face index -> track, greedily by overlap (each track and face used once)."""
        scored = sorted(((box_iou(tuple(box), t.box), i, t.id)
                         for i, box in enumerate(boxes) for t in self.tracks), reverse=True)
        by_id = {t.id: t for t in self.tracks}
        pairs: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, i, track_id in scored:
            if overlap < self.match_iou:
                break
            if i not in pairs and track_id not in used:
                pairs[i] = by_id[track_id]
                used.add(track_id)
        return pairs


def stream_answer(index: int, found: FoundFaces, probabilities: np.ndarray,
                  tracker: FaceTracker, classes: Sequence[str],
                  min_confidence: float | None = None) -> dict[str, Any]:
    """The message for frame ``index``: like :func:`answer` per face plus its ``track_id``; the
    label, confidence and probabilities are the track's smoothed ones."""
    tracked = tracker.update([f.box for f in found.faces], probabilities)
    faces = [face_answer(face, probs, classes, min_confidence, track_id=track_id)
             for face, (track_id, probs) in zip(found.faces, tracked, strict=True)]
    message: dict[str, Any] = {"frame": index, "faces": faces}
    if not faces:
        message["message"] = NO_FACE
    return message


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
                 port: int | None = None, cpus: Sequence[int] | None = None):
        self.target = target
        self.cpus = list(cpus) if cpus else None  # pin the server (and its workers) with taskset
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
        if self.cpus:
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
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
            family = self.pids()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            # workers that outlived the arbiter (started by it, so by us) are killed too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in family[1:]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pids(self) -> list[int]:
        """The server's processes: ``bentoml serve`` and its descendants (BentoML starts each
        worker in a process group of its own, so the group alone misses them)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the fields after the parenthesised command: state, ppid, ...
                ppid = int(stat.read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return sorted(found)

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
