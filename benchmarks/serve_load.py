"""Load test of the BentoML service: N concurrent clients on loopback for a bounded time.

Starts ``bentoml serve`` itself (or uses ``--url`` of a running server), lets ``clients`` threads
POST real images to ``/classify`` back to back for ``duration_s`` seconds after a warm-up, and
writes requests/s, p50/p90/p99 latency and the error count to ``reports/bench/serve_load.json``.
Zero errors are expected: a non-2xx answer or a timeout counts as one and is kept as a sample.

    python benchmarks/serve_load.py                      # params.yaml serve.load_test
    python benchmarks/serve_load.py --duration 5 --clients 10 --url http://127.0.0.1:3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.errors import DataError
from emorec.serving import BentoServer
from emorec.splits import read_split


@dataclass
class Record:
    """What the client threads collect (appends are atomic under the GIL)."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    errors: int = 0


def load_payloads(csv_path: Path, classes: list[str], limit: int) -> list[tuple[str, bytes]]:
    """Up to ``limit`` image files of a split CSV as ``(name, bytes)``."""
    frame = read_split(csv_path, classes).head(limit)
    payloads = []
    for rel in frame["path"]:
        path = Path(rel)
        if not path.is_file():
            raise DataError(f"{csv_path}: image not found: {path}")
        payloads.append((path.name, path.read_bytes()))
    return payloads


def client(url: str, payloads: list[tuple[str, bytes]], offset: int, start_at: float,
           stop_at: float, timeout: float, record: Record) -> None:
    """One client: POST images back to back until ``stop_at``; count those sent after start."""
    session = requests.Session()
    i = offset
    while (now := time.perf_counter()) < stop_at:
        name, data = payloads[i % len(payloads)]
        i += 1
        counted = now >= start_at
        try:
            resp = session.post(f"{url}/classify", files={"image": (name, data, "image/png")},
                                timeout=timeout)
            ok, status, detail = resp.ok, str(resp.status_code), resp.text[:200]
        except requests.RequestException as err:
            ok, status, detail = False, type(err).__name__, str(err)[:200]
        elapsed_ms = (time.perf_counter() - now) * 1000.0
        if not counted or time.perf_counter() > stop_at + timeout:
            continue
        record.statuses[status] += 1
        record.latencies_ms.append(elapsed_ms)
        if not ok:
            record.errors += 1
            if len(record.error_samples) < 5:
                record.error_samples.append(f"{status}: {detail}")
    session.close()


def run_load(url: str, payloads: list[tuple[str, bytes]], clients: int, duration_s: float,
             warmup_s: float, timeout_s: float) -> dict[str, Any]:
    """Drive the load and summarise it."""
    record = Record()
    begin = time.perf_counter()
    start_at, stop_at = begin + warmup_s, begin + warmup_s + duration_s
    threads = [threading.Thread(target=client, daemon=True,
                                args=(url, payloads, k, start_at, stop_at, timeout_s, record))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=warmup_s + duration_s + timeout_s + 30)
    lat = np.array(record.latencies_ms) if record.latencies_ms else np.array([np.nan])
    total = len(record.latencies_ms)
    return {
        "clients": clients,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "requests": total,
        "errors": record.errors,
        "zero_errors": record.errors == 0 and total > 0,
        "requests_per_s": total / duration_s,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                       "p99": float(np.percentile(lat, 99)), "max": float(np.max(lat)),
                       "mean": float(np.mean(lat))},
        "status_counts": dict(record.statuses),
        "error_samples": record.error_samples,
    }


def main(params: Params, args: argparse.Namespace) -> None:
    lt = params.section("serve.load_test")
    clients = args.clients or lt.integer("clients", low=1)
    duration = args.duration or lt.number("duration_s", low=0.1)
    warmup = lt.number("warmup_s", low=0) if args.warmup is None else args.warmup
    timeout = lt.number("request_timeout_s", low=0.1)
    payloads = load_payloads(args.images, params.classes, args.max_images)

    env = {"EMOREC_PARAMS": str(args.params.resolve())}
    if args.model:
        env["EMOREC_MODEL"] = str(args.model.resolve())
    server = None
    url = args.url
    if url is None:
        log_path = Path(tempfile.gettempdir()) / f"emorec_serve_load_{os.getpid()}.log"
        # run from the repository root, like the stages: serve this checkout's bento/service.py
        server = BentoServer(working_dir=Path.cwd(), log_path=log_path, env=env).start()
        url = server.url
    try:
        info = requests.post(f"{url}/info", json={}, timeout=timeout).json()
        print(f"load: {clients} clients x {duration:.0f} s against {url} "
              f"({info.get('model_path')})", file=sys.stderr)
        result = run_load(url, payloads, clients, duration, warmup, timeout)
    finally:
        if server is not None:
            server.stop()
    report = {**result, "url": url, "endpoint": "/classify", "images": len(payloads),
              "model": {k: info.get(k) for k in ("model_path", "model_bytes", "image")},
              "batching": info.get("batching"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lat = report["latency_ms"]
    print(f"{report['requests_per_s']:.1f} req/s, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} "
          f"ms, errors {report['errors']} -> {args.out}", file=sys.stderr)
    if args.fail_on_errors and not report["zero_errors"]:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--url", default=None,
                        help="running server to test; default: start `bentoml serve` on loopback")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file for the started server (default: params serve.model)")
    parser.add_argument("--images", type=Path, default=Path("data/processed/test.csv"),
                        help="split CSV whose images are sent")
    parser.add_argument("--max-images", type=int, default=64, help="distinct images to cycle")
    parser.add_argument("--clients", type=int, default=None,
                        help="concurrent clients (default: serve.load_test.clients)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds (default: serve.load_test.duration_s)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds first (default: serve.load_test.warmup_s)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/serve_load.json"),
                        help="report to write")
    parser.add_argument("--fail-on-errors", action="store_true",
                        help="exit 1 when any request failed")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
