"""Video streams: faces followed across frames by box overlap, their probabilities smoothed
(EMA) per face, and the JSON message per frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emorec.config import Params
from emorec.faces import Box
from emorec.serving.answers import NO_FACE, FoundFaces, face_answer


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
