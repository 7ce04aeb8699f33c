"""Locust users for ``benchmarks/serve_load.py`` (not meant to be run by hand).

``serve_load.py`` writes a plan (``EMOREC_LOCUST_PLAN``, JSON) listing prepared requests: a
multipart body file, its content type, the route and what a right answer is (status and, for
good uploads, the label onnxruntime gives in-process). Each user sends them round-robin back to
back (no think time). Every request is recorded with its own wall-clock latency, status and
verdict (right or wrong answer) and dumped to ``EMOREC_LOCUST_OUT`` when Locust stops: Locust's
own percentiles are rounded (whole milliseconds and coarser above 100 ms), too coarse for a
10 ms target.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

PLAN: dict[str, Any] = json.loads(Path(os.environ["EMOREC_LOCUST_PLAN"]).read_text())
BODIES = [Path(item["body"]).read_bytes() for item in PLAN["items"]]
# start (s), latency (ms), status, right answer, plan item, user
RECORDS: list[tuple[float, float, int, bool, int, int]] = []
USERS = itertools.count()
T0 = time.time()


def verdict(item: dict[str, Any], status: int, text: str) -> bool:
    """Whether the answer is the right one for this item (status, then label or message)."""
    if status != item["status"]:
        return False
    if status != 200:
        return item.get("message", "") in text
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return body.get("label") == item.get("label")


class ServiceUser(FastHttpUser):
    """One client: the plan's requests round-robin, starting at a random offset."""

    wait_time = constant(0)
    connection_timeout = PLAN["timeout_s"]
    network_timeout = PLAN["timeout_s"]

    def on_start(self) -> None:
        self.number = next(USERS)
        items = list(range(len(PLAN["items"])))
        start = self.number % len(items)
        self._order = itertools.cycle(items[start:] + items[:start])

    @task
    def post(self) -> None:
        index = next(self._order)
        item = PLAN["items"][index]
        started = time.time()
        tick = time.perf_counter()
        with self.client.post(item["route"], data=BODIES[index], name=item["name"],
                              headers={"Content-Type": item["content_type"]},
                              catch_response=True) as resp:
            latency_ms = (time.perf_counter() - tick) * 1000.0
            status = resp.status_code or 0
            right = verdict(item, status, resp.text or "")
            if right:
                resp.success()
            else:
                resp.failure(f"wrong answer: {status} {(resp.text or '')[:120]}")
        RECORDS.append((started - T0, latency_ms, status, right, index, self.number))


@events.quitting.add_listener
def dump(environment: Any, **_: Any) -> None:
    """Write every request's record for serve_load.py to summarise."""
    Path(os.environ["EMOREC_LOCUST_OUT"]).write_text(json.dumps({"records": RECORDS}))
