"""ASGI middleware in front of the service's upload endpoints (:class:`UploadGuard`): the
413/400 answers BentoML would get wrong, and a fast path for a route it can answer itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class UploadGuard:
    """ASGI middleware in front of the upload endpoints; answers ``POST /classify`` itself.

    Checks: BentoML treats a *text* value in a file field as a URL to download, tries to
    JSON-decode uploads in unknown fields (both end in a 500) and spools uploads of any size to
    disk before the API sees them. The guard answers these cases itself: a body over the byte
    limit gets 413 (from Content-Length when given, before reading it); a missing or unknown
    field, or a text value where a file belongs, gets 400.

    Fast path: having parsed the form already, the guard answers a valid single-image upload
    (``rule.handler``) with the same code and answer as ``EmotionClassifier.classify``. Through
    BentoML's request model each request also paid a second multipart parse, a temporary file
    and a pydantic round trip: about half of the event loop's time under load
    (``reports/bench/serve_profile.json``). BentoML's own middleware (access log, metrics,
    tracing, timeout) still wraps it. Other valid requests pass on untouched (the buffered body
    is replayed to BentoML).
    """

    def __init__(self, app: Any, rules: dict[str, UploadRule]):
        self.app = app
        self.rules = rules  # URL path -> rule

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not headers.get("content-type", "").startswith(FORM_TYPES):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, headers, rule.max_bytes)
        if isinstance(body, Response) or body is None:
            if body is not None:
                await body(scope, receive, send)
            return
        try:
            form = await Request(scope, _replay(body, receive)).form()
        except Exception as err:  # starlette raises MultiPartException, KeyError, ...
            await json_error(400, f"malformed form body: {err}")(scope, receive, send)
            return
        try:
            problem = rule.check(form)
            if problem:
                response: Response | None = json_error(400, problem)
            elif rule.handler is not None:
                response = await rule.handler(form)
            else:
                response = None
        finally:
            await form.close()
        if response is not None:
            await response(scope, receive, send)
        else:
            await self.app(scope, _replay(body, receive), send)


@dataclass(frozen=True)
class UploadRule:
    """What :class:`UploadGuard` accepts on one route, and who answers it."""

    field: str                 # the file field
    options: tuple[str, ...]   # other (text) fields allowed
    max_bytes: int             # largest request body
    handler: Callable[[FormData], Awaitable[Response]] | None = None  # None: BentoML answers

    def check(self, form: FormData) -> str | None:
        """What is wrong with the form's fields, or None."""
        items = form.multi_items()
        unknown = sorted({k for k, _ in items} - {self.field, *self.options})
        if unknown:
            return (f"unexpected form field(s) {unknown}; send the image(s) as field "
                    f"'{self.field}' (options: {list(self.options)})")
        files = [v for k, v in items if k == self.field]
        if not files:
            return f"{self.field}: missing; upload the image as multipart field '{self.field}'"
        if any(not isinstance(v, UploadFile) for v in files):
            return f"{self.field}: expected an uploaded image file, got a text value"
        return None


async def _read_body(receive: Any, headers: Headers, limit: int) -> bytes | Response | None:
    """The whole request body, a 413 answer if it exceeds ``limit``, None if the client left."""
    too_large = json_error(413, f"too_large: request body exceeds {limit} bytes "
                           "(serve.max_image_bytes / serve.max_request_bytes)")
    if int(headers.get("content-length") or 0) > limit:
        return too_large
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return too_large
        if not message.get("more_body", False):
            return bytes(body)


def json_error(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status)


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that returns ``body`` once, then defers to the real one."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
