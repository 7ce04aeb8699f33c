"""Where one request's time goes in the BentoML service, before and after issue #14.

One client sends requests one after another (no concurrency, so every millisecond belongs to
one request) to two servers started in turn on the same cores and model:

* ``before``: the two-service design of ``--before-rev`` (``EmotionClassifier`` -> HTTP ->
  ``EmotionModel`` behind BentoML adaptive batching), served from that commit's
  ``bento/service.py`` and ``params.yaml``;
* ``after``: this checkout (model in-process behind :class:`emorec.serving.MicroBatcher`).

Then 50 Locust clients for ``--load-seconds`` against each, with the same medians per service.

For each, in mode ``cropped`` (a 64 px face) and ``faces`` (a 640x480 photo, face detection),
the median of: the client's round trip, the time BentoML's access log gives each service, the
``Server-Timing`` stages of the new service, and the same work done in-process here (decode,
detection, one model run). The differences are the serving overheads: the batching wait, the
hop between the services, HTTP and framework. Written to ``reports/bench/serve_profile.json``.

    python benchmarks/serve_profile.py
    python benchmarks/serve_profile.py --requests 50 --only after

Writes reports/bench/serve_profile.json. Takes about 3 min on 2 cores (AMD EPYC).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.faces import FaceSettings
from emorec.hardware import cpu_info, describe
from emorec.inference import OnnxClassifier
from emorec.serving import BentoServer, find_faces, parse_server_timing

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402  (the same model, payloads and core split as the load test)

# The last commit with the two-service design (adaptive batching in a second service).
BEFORE_REV = "27cdbc2"
ACCESS = re.compile(r"\[(?P<kind>entry_service|service):(?P<svc>[\w]+):\d+\].*path=(?P<path>/\w+)"
                    r".*\(status=(?P<status>\d+).*?\) (?P<ms>[\d.]+)ms")


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def old_service_dir(rev: str, work: Path) -> Path:
    """``bento/service.py`` and ``params.yaml`` of ``rev`` in a folder to serve from."""
    folder = work / f"rev_{rev}"
    (folder / "bento").mkdir(parents=True, exist_ok=True)
    for rel in ("bento/service.py", "params.yaml"):
        text = subprocess.run(["git", "show", f"{rev}:{rel}"], capture_output=True, text=True,
                              check=True).stdout
        (folder / rel).write_text(text)
    return folder


def in_process(model: OnnxClassifier, params: Params, crop: bytes, photo: bytes,
               repeats: int = 30) -> dict[str, float]:
    """The service's own work without a server, medians in ms."""
    settings = FaceSettings.from_params(params)

    def timed(fn: Any, count: int = repeats) -> float:
        fn()
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000.0)
        return round(statistics.median(samples), 3)

    one = model.preprocess.batch([Image.open(io.BytesIO(crop))])
    return {
        "decode_preprocess_cropped": timed(lambda: find_faces(
            Image.open(io.BytesIO(crop)), "cropped", settings, model.preprocess)),
        "decode_detect_align_faces": timed(lambda: find_faces(
            Image.open(io.BytesIO(photo)), "faces", settings, model.preprocess), 10),
        "model_batch_1": timed(lambda: model.probabilities(one)),
    }


def drive(url: str, body: bytes, ctype: str, count: int) -> tuple[list[float], list[dict]]:
    """``count`` sequential POSTs on one keep-alive connection: round trips (ms) and the
    Server-Timing stages of each answer (empty when the server sends none)."""
    session = requests.Session()
    headers = {"Content-Type": ctype}
    for _ in range(3):  # warm-up: first runs allocate
        session.post(f"{url}/classify", data=body, headers=headers, timeout=60).raise_for_status()
    totals, stages = [], []
    for _ in range(count):
        start = time.perf_counter()
        resp = session.post(f"{url}/classify", data=body, headers=headers, timeout=60)
        totals.append((time.perf_counter() - start) * 1000.0)
        resp.raise_for_status()
        stages.append(parse_server_timing(resp.headers.get("server-timing", "")))
    return totals, stages


def http_floor(url: str, count: int = 100) -> float | None:
    """Median round trip of GET /livez: HTTP and BentoML's middleware with no work."""
    session = requests.Session()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        session.get(f"{url}/livez", timeout=10)
        samples.append((time.perf_counter() - start) * 1000.0)
    return median(samples)


def access_times(log: Path, since: int) -> dict[str, list[float]]:
    """Per ``service path`` the latencies BentoML's access log gives, after byte ``since``."""
    out: dict[str, list[float]] = {}
    with open(log, "rb") as fh:
        fh.seek(since)
        for line in fh.read().decode(errors="replace").splitlines():
            m = ACCESS.search(line)
            if m and m["path"] in ("/classify", "/predict") and m["status"] == "200":
                out.setdefault(f"{m['svc']}{m['path']}", []).append(float(m["ms"]))
    return out


def profile_server(server: BentoServer, payloads: dict[str, tuple[bytes, str, int]],
                   local: dict[str, float]) -> dict[str, Any]:
    """One client: round trips, access-log and Server-Timing medians per mode, and the
    derived breakdown."""
    result: dict[str, Any] = {"http_floor_livez_ms": http_floor(server.url)}
    for mode, (body, ctype, count) in payloads.items():
        since = Path(server.log_path).stat().st_size
        totals, stages = drive(server.url, body, ctype, count)
        time.sleep(0.5)  # let the access log flush
        logged = {k: v[-count:] for k, v in access_times(Path(server.log_path), since).items()}
        timing = {k: median([s[k] for s in stages if k in s]) for k in
                  sorted({k for s in stages for k in s})}
        work = local["decode_preprocess_cropped" if mode == "cropped"
                     else "decode_detect_align_faces"]
        result[mode] = {"requests": count, "client_round_trip_ms": median(totals),
                        "client_p90_ms": round(float(np.percentile(totals, 90)), 3),
                        "access_log_ms": {k: median(v) for k, v in logged.items()},
                        "server_timing_ms": timing,
                        "breakdown_ms": breakdown(median(totals), logged, timing, work,
                                                  local["model_batch_1"])}
    return result


def under_load(server: BentoServer, items: list[dict[str, Any]], seconds: float, work: Path,
               name: str) -> dict[str, Any]:
    """50 Locust clients for ``seconds``: throughput, latency and the per-service medians
    (access log of the old design, Server-Timing of the new one)."""
    since = Path(server.log_path).stat().st_size
    warmup = 2.0
    records = serve_load.run_locust(server.url, items, 50, 50, seconds + warmup, None, 10.0,
                                    work, f"profile_{name}")
    summary = serve_load.summarise(records, items, 50, warmup, seconds + warmup)
    time.sleep(0.5)
    logged = access_times(Path(server.log_path), since)
    front = median(logged.get("emotion_classifier/classify", []))
    backend = median(logged.get("emotion_model/predict", []))
    client = round(summary["latency_ms"]["p50"], 3)
    stages = summary["server_timing_p50_ms"]
    if backend is not None:
        split = {"client_p50": client, "outside_the_front_service": round(client - front, 3),
                 "front_service": front,
                 "model_service_call (queueing for a batch + the batch's run)": backend,
                 "front_minus_model_service (decode, hop)": round(front - backend, 3)}
    else:
        split = {"client_p50": client,
                 "outside_the_handler (HTTP, framework, event loop queue)":
                     round(client - stages.get("total", 0.0), 3),
                 **{f"handler_{k}": round(v, 3) for k, v in stages.items()}}
    return {"clients": 50, "seconds": seconds, "requests_per_s": summary["requests_per_s"],
            "latency_ms": summary["latency_ms"], "errors": summary["errors"],
            "access_log_p50_ms": {k: median(v) for k, v in logged.items()},
            "breakdown_p50_ms": split}


def breakdown(total: float, logged: dict[str, list[float]], timing: dict[str, float],
              work: float, model: float) -> dict[str, float | None]:
    """Split a round trip into named parts (medians, so the parts add up only roughly)."""
    front = median(logged.get("emotion_classifier/classify", []))
    backend = median(logged.get("emotion_model/predict", []))
    if backend is not None:  # before: two services
        return {"total": total,
                "http_and_framework_front": round(total - front, 3),
                "decode_or_detect (in-process)": work,
                "hop_to_model_service": round(front - work - backend, 3),
                "adaptive_batching_wait_and_dispatch": round(backend - model, 3),
                "model (in-process)": model}
    handler = timing.get("total")
    parts = {"total": total,
             "http_and_framework": None if handler is None else round(total - handler, 3)}
    parts.update({k: v for k, v in timing.items() if k != "total"})
    return parts


def main(params: Params, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="emorec_serve_profile_"))
    server_cpus, _ = serve_load.split_cpus(args.server_cpus, None)
    model_path, note = serve_load.bench_model(params, args.model, work)
    model = OnnxClassifier(model_path, threads=params.integer("serve.threads", low=0))
    crop = serve_load.face_crops(64, 1)[0]
    photo = serve_load.jpeg(serve_load.photo_frame())
    payloads = {"cropped": (*serve_load.multipart([("image", "f.png", crop),
                                                   ("mode", None, b"cropped")]), args.requests),
                "faces": (*serve_load.multipart([("image", "p.jpg", photo)]),
                          max(10, args.requests // 5))}
    with serve_load.pinned(server_cpus):
        local = in_process(model, params, crop, photo)
    report: dict[str, Any] = {"model": {"path": str(model_path), "what": note},
                              "cpu": {"description": describe(cpu_info()), "cores": server_cpus},
                              "in_process_ms": local, "before_rev": args.before_rev}
    versions = {"before": old_service_dir(args.before_rev, work), "after": Path.cwd()}
    for name in args.only or versions:
        folder = versions[name]
        env = {"EMOREC_MODEL": str(model_path), "EMOREC_PARAMS": str(folder / "params.yaml"),
               "BENTOML_HOME": str(work / "bentoml_home")}
        with BentoServer(working_dir=folder, log_path=work / f"{name}.log", env=env,
                         cpus=server_cpus) as server:
            report[name] = profile_server(server, payloads, local)
            if args.load_seconds > 0:
                items = serve_load.plan_items("cropped", model, None, work)
                report[name]["clients_50"] = under_load(server, items, args.load_seconds, work,
                                                        name)
        print(f"{name}: cropped {report[name]['cropped']['client_round_trip_ms']} ms, faces "
              f"{report[name]['faces']['client_round_trip_ms']} ms", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", type=Path, default=None, help="as in serve_load.py")
    parser.add_argument("--before-rev", default=BEFORE_REV,
                        help="commit with the service to compare against")
    parser.add_argument("--only", nargs="+", choices=("before", "after"), default=None)
    parser.add_argument("--requests", type=int, default=200,
                        help="sequential requests in mode cropped (faces: a fifth)")
    parser.add_argument("--load-seconds", type=float, default=10.0,
                        help="seconds of 50 Locust clients per version (0: skip)")
    parser.add_argument("--server-cpus", default=None, help="cores for the server (default as "
                        "serve_load.py: all but the last)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/serve_profile.json"))
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
