"""Soak test of the BentoML service: many clients for a long, bounded time on loopback.

A benchmark command, not a test (it takes ten minutes by default). Starts ``bentoml serve``
pinned like ``benchmarks/serve_load.py`` (same model choice, payloads and Locust users),
runs ``--clients`` Locust users for ``--duration`` seconds and meanwhile asks ``/health`` once
a second. Records the resident memory (RSS) of every server process at the start (after a
warm-up) and at the end, and every ``--sample-every`` seconds between, so a leak shows as
growth; every request must get its right answer and ``/health`` must answer during and after
the load. Writes ``reports/bench/serve_soak.json``; exits 1 when a check fails.

    python benchmarks/serve_soak.py                      # 10 minutes, 50 clients
    python benchmarks/serve_soak.py --duration 60        # a short check that it works

Takes --duration plus a minute of warm-up: 11 min by default, on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.hardware import cpu_info, describe
from emorec.inference import OnnxClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402  (model, payloads, core split and Locust runner)

# RSS "at the start" is read after this warm-up (a quarter of a short run): the first seconds
# of load grow every worker by tens of MB (allocator arenas, onnxruntime buffers per batch size)
# and then plateau; growth after that is what a leak would show.
WARMUP_S = 60.0
# RSS may grow a little while allocators and caches settle; a leak grows without end.
MAX_RSS_GROWTH = 0.25


def rss_mb(pids: list[int]) -> dict[str, float]:
    """Resident memory of each process, MB (VmRSS from /proc; gone processes are left out)."""
    out = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[str(pid)] = int(line.split()[1]) / 1024.0
        except OSError:
            continue
    return out


class HealthProbe(threading.Thread):
    """GET /health once a second until stopped: status and latency of each probe."""

    def __init__(self, url: str, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.results: list[tuple[float, int, float]] = []  # time, status (0 = failed), ms
        self.stop_event = threading.Event()

    def probe(self) -> tuple[float, int, float]:
        start = time.perf_counter()
        try:
            status = requests.get(f"{self.url}/health", timeout=10).status_code
        except requests.RequestException:
            status = 0
        return time.time(), status, (time.perf_counter() - start) * 1000.0

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            self.results.append(self.probe())

    def summary(self) -> dict[str, Any]:
        lat = [r[2] for r in self.results] or [float("nan")]
        return {"probes": len(self.results),
                "failures": sum(1 for r in self.results if r[1] != 200),
                "latency_ms": {"p50": float(np.percentile(lat, 50)),
                               "p99": float(np.percentile(lat, 99)), "max": float(max(lat))}}


def main(params: Params, args: argparse.Namespace) -> None:
    timeout = params.number("serve.load_test.request_timeout_s", low=0.1)
    clients = args.clients or params.integer("serve.load_test.clients", low=1)
    server_cpus, client_cpus = serve_load.split_cpus(args.server_cpus, args.client_cpus)
    pinned = server_cpus != client_cpus
    work = Path(tempfile.mkdtemp(prefix="emorec_serve_soak_"))
    model_path, note = serve_load.bench_model(params, args.model, work)
    model = OnnxClassifier(model_path, threads=1)
    items = serve_load.plan_items("cropped", model, None, work)
    server = serve_load.start_server(args, model_path, server_cpus if pinned else None, work)
    samples: list[dict[str, Any]] = []
    try:
        pids = server.pids()
        load: dict[str, Any] = {}
        locust = threading.Thread(target=lambda: load.update(records=serve_load.run_locust(
            server.url, items, clients, clients, args.duration, client_cpus if pinned else None,
            timeout, work, "soak")), daemon=True)
        health = HealthProbe(server.url)
        began = time.time()
        locust.start()
        health.start()
        warmup = min(WARMUP_S, args.duration / 4)
        time.sleep(warmup)
        start_rss = rss_mb(pids)
        while locust.is_alive():
            locust.join(timeout=args.sample_every)
            samples.append({"t_s": round(time.time() - began, 1), "rss_mb": rss_mb(pids)})
        end_rss = rss_mb(pids)
        health.stop_event.set()
        health.join(timeout=15)
        after = health.probe()  # the server still answers once the load is gone
        alive_after = [pid for pid in pids if str(pid) in rss_mb(pids)]
    finally:
        server.stop()
    if "records" not in load:
        raise serve_load.BenchError("the Locust run failed; see the messages above")
    result = serve_load.summarise(load["records"], items, clients, warmup, args.duration)
    growth = {pid: (end_rss.get(pid, float("nan")) - mb) / mb for pid, mb in start_rss.items()}
    checks = {"zero_errors": result["errors"] == 0 and result["server_5xx"] == 0,
              "health_during": health.summary()["failures"] == 0 and health.results != [],
              "health_after": after[1] == 200,
              "processes_alive": len(alive_after) == len(pids),
              "rss_growth_below": all(g <= MAX_RSS_GROWTH for g in growth.values())}
    report = {"duration_s": args.duration, "warmup_s": warmup, "clients": clients,
              "load": result,
              "server_processes": pids,
              "rss_mb": {"start": start_rss, "end": end_rss,
                         "growth": {k: round(v, 4) for k, v in growth.items()},
                         "max_growth_allowed": MAX_RSS_GROWTH, "samples": samples},
              "health": {**health.summary(), "after_load_status": after[1]},
              "checks": checks, "pass": all(checks.values()),
              "model": {"path": str(model_path), "what": note},
              "cpu": {"description": describe(cpu_info()), "server_cpus": server_cpus,
                      "client_cpus": client_cpus if pinned else None}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"soak {args.duration:.0f} s x {clients} clients: {result['requests_per_s']:.0f} req/s, "
          f"errors {result['errors']}, RSS {sum(start_rss.values()):.0f} -> "
          f"{sum(end_rss.values()):.0f} MB, health failures {report['health']['failures']}; "
          f"pass {report['pass']} -> {args.out}", file=sys.stderr)
    if not report["pass"]:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=None,
                        help="Locust users (default: serve.load_test.clients)")
    parser.add_argument("--sample-every", type=float, default=10.0,
                        help="seconds between RSS samples")
    parser.add_argument("--model", type=Path, default=None, help="as in serve_load.py")
    parser.add_argument("--server-cpus", default=None, help="cores for the server")
    parser.add_argument("--client-cpus", default=None, help="cores for Locust")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/serve_soak.json"))
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
