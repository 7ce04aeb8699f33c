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

The service's own plumbing lives here too, so that ``bento/service.py`` only declares the
service: :mod:`~emorec.serving.settings` (``serve`` params), :mod:`~emorec.serving.worker` (one
worker's model, batcher and per-image work), :mod:`~emorec.serving.api` (answer schema, HTTP
errors, uploads), :mod:`~emorec.serving.upload_guard` (the ASGI upload guard) and
:mod:`~emorec.serving.stream` (the ``/stream`` WebSocket protocol). Those import BentoML or
Starlette and are not imported here.
"""

from emorec.serving.answers import (
    MODES,
    NO_FACE,
    FoundFaces,
    answer,
    face_answer,
    find_faces,
    resolve_mode,
)
from emorec.serving.batching import (
    Batched,
    BatchStats,
    MicroBatcher,
    Overloaded,
    parse_server_timing,
    server_timing,
)
from emorec.serving.server import REPO, SERVICE, BentoServer, ServerError, free_port
from emorec.serving.tracking import FaceTracker, StreamSettings, Track, box_iou, stream_answer

__all__ = [
    "MODES", "NO_FACE", "REPO", "SERVICE", "BatchStats", "Batched", "BentoServer", "FaceTracker",
    "FoundFaces", "MicroBatcher", "Overloaded", "ServerError", "StreamSettings", "Track",
    "answer", "box_iou", "face_answer", "find_faces", "free_port", "parse_server_timing",
    "resolve_mode", "server_timing", "stream_answer",
]
