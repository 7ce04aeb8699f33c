"""The ``/stream`` WebSocket protocol: binary frames in, one JSON answer per frame out, in order.

Up to ``serve.stream.max_in_flight`` frames are decoded and detected at once (in threads, their
crops batched with everyone else's), so one stream can use more than one core; the answers still
leave in order, and the per-face smoothing (:class:`emorec.serving.tracking.FaceTracker`) sees the
frames in order. A bad frame gets ``{"frame": i, "error": ...}`` and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from emorec.errors import ImageError
from emorec.serving.answers import FoundFaces, resolve_mode
from emorec.serving.batching import Overloaded
from emorec.serving.tracking import FaceTracker, stream_answer
from emorec.serving.worker import Worker


async def serve_stream(ws: WebSocket, worker: Worker) -> None:
    """One client's stream, ``?mode=faces|cropped``, until it disconnects."""
    await ws.accept()
    try:
        mode = resolve_mode(ws.query_params.get("mode"), None)
    except ValueError as err:
        await ws.close(code=1008, reason=str(err)[:120])
        return
    settings = worker.settings.stream
    tracker = FaceTracker(settings.smoothing, settings.match_iou, settings.max_missed)
    slots = asyncio.Semaphore(settings.max_in_flight)
    pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()
    sender = asyncio.create_task(_send_in_order(ws, pending, slots, tracker, worker))
    index = 0
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            await slots.acquire()
            pending.put_nowait(asyncio.create_task(
                _frame(worker, index, message.get("bytes"), mode)))
            index += 1
    finally:
        pending.put_nowait(None)
        await sender


async def _frame(worker: Worker, index: int, data: bytes | None, mode: str
                 ) -> tuple[int, FoundFaces | None, np.ndarray | str]:
    """Decode, detect and classify one frame: ``(index, faces, probabilities)`` or
    ``(index, None, error text)``."""
    if data is None:
        return index, None, "send each frame as a binary message (JPEG or PNG bytes)"
    limit = worker.settings.stream.max_frame_bytes
    if len(data) > limit:
        return index, None, (f"too_large: {len(data)} bytes, limit "
                             f"{limit} (serve.stream.max_frame_bytes)")
    try:
        found = await asyncio.to_thread(worker.faces_of, data, mode)
        return index, found, await worker.classify_rows(found.inputs, {})
    except (ImageError, Overloaded) as err:
        return index, None, f"frame {index}: {err}"


async def _send_in_order(ws: WebSocket, pending: asyncio.Queue, slots: asyncio.Semaphore,
                         tracker: FaceTracker, worker: Worker) -> None:
    """Answer the frames in the order they came, smoothing each face over its track.

    Once the client is gone the frames still in flight are drained unanswered, so that the
    reader, which may wait for a free slot, always gets one and sees the disconnect."""
    gone = False
    while (task := await pending.get()) is not None:
        try:
            index, found, result = await task
        finally:
            slots.release()
        if gone:
            continue
        if found is None:
            message: dict[str, Any] = {"frame": index, "error": result}
        else:
            message = stream_answer(index, found, result, tracker, worker.model.classes,
                                    worker.min_confidence)
        try:
            await ws.send_text(json.dumps(message))
        except (WebSocketDisconnect, RuntimeError, OSError):
            gone = True
