"""The service's settings: the ``serve`` section of params.yaml plus the environment overrides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.faces import FaceSettings
from emorec.inference import resolve_min_confidence
from emorec.served_model import ModelChoice, choose_model
from emorec.serving.tracking import StreamSettings


@dataclass(frozen=True)
class ServeSettings:
    """The ``serve`` section of params.yaml plus the environment overrides."""

    model: ModelChoice  # the file and why it is the one (serve.model / EMOREC_MODEL)
    max_image_bytes: int
    max_image_side: int
    max_batch_size: int
    max_queue: int
    max_images_per_request: int
    max_request_bytes: int
    faces: FaceSettings  # detector, min size, score threshold, crop margin (serve.face_margin)
    threads: int
    workers: int
    timeout_s: float
    access_log: bool
    stream: StreamSettings
    min_confidence: Any  # "auto" (the model's suggestion) or a number; see resolve_min_confidence
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API (serve.cors_origins)

    @classmethod
    def from_params(cls, params: Params, env: dict[str, str], root: Path) -> ServeSettings:
        """``root``: the folder the model paths are relative to (the repo, or the bento)."""
        s = params.section("serve")
        resolve_min_confidence(s.get("min_confidence", "auto"), None)  # a bad value stops here
        return cls(
            model=choose_model(params, root, env),
            max_image_bytes=s.integer("max_image_bytes", low=1),
            max_image_side=s.integer("max_image_side", low=16),
            max_batch_size=s.integer("max_batch_size", low=1),
            max_queue=s.integer("max_queue", low=1),
            max_images_per_request=s.integer("max_images_per_request", low=1),
            max_request_bytes=s.integer("max_request_bytes", low=1),
            faces=FaceSettings.from_params(params),
            threads=s.integer("threads", low=0),
            workers=s.integer("workers", low=1),
            timeout_s=s.number("timeout_s", low=1),
            access_log=s.boolean("access_log"),
            stream=StreamSettings.from_params(params),
            min_confidence=s.get("min_confidence", "auto"),
            cors_origins=cors_origins(s.sequence("cors_origins", default=[])),
        )

    def cors_options(self) -> dict[str, Any] | None:
        """Starlette ``CORSMiddleware`` options for :attr:`cors_origins`; None when there are none.

        Only what the web app needs crosses: ``POST`` of a form, the answer and its
        ``Server-Timing``; no credentials."""
        if not self.cors_origins:
            return None
        return {"allow_origins": list(self.cors_origins), "allow_methods": ["GET", "POST"],
                "allow_headers": ["content-type"], "allow_credentials": False,
                "expose_headers": ["server-timing"], "max_age": 600}


def cors_origins(values: list[Any]) -> tuple[str, ...]:
    """``serve.cors_origins`` checked: each an origin (``scheme://host[:port]``, no path) or
    ``*``. A path or a trailing slash never matches a browser's ``Origin`` header, so it is
    refused here rather than failing silently in the browser."""
    for value in values:
        if value != "*" and not (isinstance(value, str) and ORIGIN.fullmatch(value)):
            raise ParamsError("serve.cors_origins", "entries must be origins like "
                              "'https://app.example.org' or 'http://127.0.0.1:8080' (no path), "
                              f"or '*'; got {value!r}")
    return tuple(values)


ORIGIN = re.compile(r"https?://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\])(:\d+)?")
