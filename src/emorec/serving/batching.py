"""The model call: micro-batching without a wait (:class:`MicroBatcher`), and the
``Server-Timing`` header that says where a request's time went."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emorec.errors import EmorecError


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
