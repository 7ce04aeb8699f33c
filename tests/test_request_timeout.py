"""emorec.request_timeout: BentoML's request timeout without its retained timers."""

from __future__ import annotations

import asyncio
import json

import pytest

from emorec.request_timeout import RequestTimeout, install_in_bentoml


def app_answering_after(seconds: float):
    async def app(scope, receive, send):
        await asyncio.sleep(seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


async def call(app, scope_type: str = "http") -> tuple[list[dict], int]:
    """The messages ``app`` sends for one request, and the timers the loop still holds."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": scope_type}, receive, send)
    await asyncio.sleep(0)  # a cancelled app unwinds
    pending = [t for t in asyncio.get_running_loop()._scheduled if not t.cancelled()]
    return sent, len(pending)  # asyncio's live timers


def test_an_answered_request_leaves_no_timer_behind():
    sent, timers = asyncio.run(call(RequestTimeout(app_answering_after(0.01), timeout=30)))
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"
    assert timers == 0  # BentoML's own middleware leaves one per request for 30 s


def test_a_request_past_the_timeout_gets_504_and_is_cancelled():
    cancelled = []

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent, timers = asyncio.run(call(RequestTimeout(slow, timeout=0.05)))
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 "
                                                    "seconds"}
    assert cancelled == [True] and timers == 0


def test_app_errors_surface_at_once_not_after_the_timeout():
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RuntimeError, match="boom"):
            await call(RequestTimeout(broken, timeout=30))
        return loop.time() - start

    assert asyncio.run(timed()) < 1


def test_other_scopes_pass_through_and_bentoml_builds_ours():
    seen = []

    async def lifespan_app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(call(RequestTimeout(lifespan_app, timeout=0.01), "lifespan"))
    assert seen == ["lifespan"]
    from bentoml._internal.server.http import traffic

    original = traffic.TimeoutMiddleware
    try:
        install_in_bentoml()
        assert traffic.TimeoutMiddleware is RequestTimeout
    finally:
        traffic.TimeoutMiddleware = original
