"""Locust users for ``benchmarks/serve_load.py`` (not meant to be run by hand).

``serve_load.py`` writes a plan (``EMOREC_LOCUST_PLAN``, JSON) listing prepared requests: a
multipart body file, its content type, the route and what a right answer is (status and, for
good uploads, the class onnxruntime ranks first in-process). Each user sends them round-robin
back to back (no think time). Every request is recorded with its own wall-clock latency, status and
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

if __name__ == "__main__" or "EMOREC_LOCUST_PLAN" not in os.environ:
    raise SystemExit("serve_locustfile.py: error: not a command; `python benchmarks/serve_load.py "
                     "--help` runs these Locust users (it sets EMOREC_LOCUST_PLAN)")
PLAN: dict[str, Any] = json.loads(Path(os.environ["EMOREC_LOCUST_PLAN"]).read_text())
BODIES = [Path(item["body"]).read_bytes() for item in PLAN["items"]]
# start (s), latency (ms), status, right answer, plan item, user, Server-Timing {stage: ms}
RECORDS: list[tuple[float, float, int, bool, int, int, dict[str, float]]] = []
USERS = itertools.count()
WRONG: list[str] = []  # the first few wrong answers, as sent
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
    faces = body.get("faces") or [{}]
    # "predicted": the top class even where the service answers "uncertain" (serve.min_confidence)
    return (faces[0].get("predicted") or faces[0].get("label")) == item.get("label")


def server_timing(header: str) -> dict[str, float]:
    """``{stage: ms}`` of a Server-Timing header (``name;dur=1.2, ...``)."""
    stages = {}
    for part in header.split(","):
        name, _, ms = part.strip().partition(";dur=")
        if ms:
            stages[name] = float(ms)
    return stages


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
            stages = server_timing(resp.headers.get("server-timing") or "")
            right = verdict(item, status, resp.text or "")
            if right:
                resp.success()
            else:
                resp.failure(f"wrong answer: {status} {(resp.text or '')[:120]}")
                if len(WRONG) < 5:
                    WRONG.append(f"{item['name']}: want {item['status']} {item['label']}, got "
                                 f"{status} {(resp.text or '')[:300]}")
        RECORDS.append((started - T0, latency_ms, status, right, index, self.number, stages))


@events.quitting.add_listener
def dump(environment: Any, **_: Any) -> None:
    """Write every request's record for serve_load.py to summarise."""
    Path(os.environ["EMOREC_LOCUST_OUT"]).write_text(json.dumps({"records": RECORDS,
                                                                 "wrong": WRONG}))
