"""A request timeout for the BentoML service that forgets a request once it has been answered.

BentoML (1.4) wraps every app in ``bentoml._internal.server.http.traffic.TimeoutMiddleware``,
which arms ``loop.call_later(timeout, ...)`` per request and never cancels it. Each timer keeps
its request's future and ``contextvars`` context (with the request's OpenTelemetry span) alive
for the whole ``traffic.timeout``: at 700 requests/s and a 30 s timeout that is ~200,000 extra
objects per worker, and every full garbage collection walked them, pausing the event loop for
~190 ms a few times a second (seen once while diagnosing, 2 AMD EPYC cores, with
``benchmarks/serve_load.py``: 50-client p99 150 -> 290 ms within a minute of load).
:class:`RequestTimeout` has the same contract, 504 when no answer has started within the
timeout, with the timer gone as soon as the answer starts.
:func:`install_in_bentoml` puts it in the place BentoML builds its middleware from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestTimeout:
    """ASGI middleware: a request whose answer has not started within ``timeout`` seconds is
    cancelled and answered 504; a WebSocket counts as answered once accepted (or refused)."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        async def send_and_mark(message: Message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
        # asyncio.wait cancels its own timer when it returns: nothing outlives the request
        await asyncio.wait({started, task}, timeout=self.timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if started.done() or task.done():
            await task
            return
        task.cancel()
        if scope["type"] == "http":
            body = (b'{"error":"Not able to process the request in %g seconds"}'
                    % self.timeout)
            await send({"type": "http.response.start", "status": 504,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


def install_in_bentoml() -> None:
    """Make BentoML build :class:`RequestTimeout` where it builds its own TimeoutMiddleware.

    BentoML looks the class up in ``bentoml._internal.server.http.traffic`` each time it makes
    an app, so this must run before the app is made: at the import of the service module.
    """
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = RequestTimeout
