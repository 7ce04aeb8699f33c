"""Which detector: the ``faces`` params section (:class:`FaceSettings`), detectors by name
(:data:`DETECTORS`, :func:`make_detector`) and one detector per thread (:func:`thread_detector`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from emorec.config import Params
from emorec.faces.align import MULTI_FACE_POLICIES
from emorec.faces.detectors import (
    DlibCnnDetector,
    DlibHogDetector,
    FaceDetector,
    HaarDetector,
)
from emorec.faces.mtcnn import MtcnnDetector
from emorec.faces.yunet import YunetDetector


@dataclass(frozen=True)
class FaceSettings:
    """The ``faces`` section of params.yaml; the crop margin is ``serve.face_margin``, which the
    mobile app shares."""

    detector: str = "haar"
    min_size: int = 24
    score_threshold: float | None = None  # None: the detector's own default
    margin: float = 0.15
    multi_face: str = "largest"
    max_faces: int = 20
    scale_factor: float = 0.709  # MTCNN: pyramid step (``faces.mtcnn``)
    threads: int = 1  # threads one photo's detection is shared between (``faces.threads``)
    input_side: int = 640  # YuNet: smaller photos are enlarged to this longer side
    #: photos longer than this (px) are searched shrunk to it (``faces.max_side``); 0 = never
    max_side: int = 0
    #: an upload no larger than this (longer side, px) in which no face is found is taken as a
    #: face crop and classified whole; 0 = never (``faces.whole_image_max_side``)
    whole_image_max_side: int = 0

    @classmethod
    def from_params(cls, params: Params) -> FaceSettings:
        s = params.section("faces")
        threshold = s.get("score_threshold")
        return cls(
            detector=s.choice("detector", DETECTORS),
            min_size=s.integer("min_size", low=8),
            score_threshold=None if threshold is None else s.number("score_threshold"),
            margin=params.number("serve.face_margin", low=0, high=1),
            multi_face=s.choice("multi_face", MULTI_FACE_POLICIES),
            max_faces=s.integer("max_faces", low=1),
            # a params file from before faces.mtcnn gets MTCNN as published, on one thread
            scale_factor=s.number("mtcnn.scale_factor", low=0.5, high=0.9,
                                  default=cls.scale_factor),
            # faces.threads; a params file from before it names MTCNN's own
            threads=s.integer("threads", low=1,
                              default=s.integer("mtcnn.threads", low=1, default=cls.threads)),
            input_side=s.integer("yunet.input_side", low=32, default=cls.input_side),
            whole_image_max_side=s.integer("whole_image_max_side", low=0,
                                           default=cls.whole_image_max_side),
            max_side=s.integer("max_side", low=0, default=cls.max_side),
        )

    def detector_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`make_detector` beyond size and threshold."""
        if self.detector == "mtcnn":
            return {"scale_factor": self.scale_factor, "threads": self.threads,
                    "max_side": self.max_side}
        if self.detector == "yunet":
            return {"threads": self.threads, "max_side": self.max_side,
                    "input_side": self.input_side}
        return {"max_side": self.max_side}


DETECTORS: dict[str, type[FaceDetector]] = {
    cls.name: cls
    for cls in (HaarDetector, DlibHogDetector, DlibCnnDetector, MtcnnDetector, YunetDetector)}


def make_detector(name: str, min_size: int = 24, score_threshold: float | None = None,
                  **options: Any) -> FaceDetector:
    """A new detector by name (raises :class:`DetectorUnavailable` if its package is missing);
    ``options`` go to its constructor (``max_side``; MTCNN: ``scale_factor``, ``threads``)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose from {sorted(DETECTORS)}")
    return DETECTORS[name](min_size=min_size, score_threshold=score_threshold, **options)


_local = threading.local()


def thread_detector(settings: FaceSettings) -> FaceDetector:
    """The detector for ``settings``, one per thread: OpenCV's cascade and dlib's detectors are
    not documented as safe to call from several threads at once, and the service detects in a
    thread pool."""
    cache: dict[FaceSettings, FaceDetector] = _local.__dict__.setdefault("detectors", {})
    if settings not in cache:
        cache[settings] = make_detector(settings.detector, settings.min_size,
                                        settings.score_threshold, **settings.detector_options())
    return cache[settings]
