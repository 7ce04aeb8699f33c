"""Load benchmark of the BentoML service with Locust, next to the in-process ceiling.

Starts ``bentoml serve`` on loopback (or uses ``--url``), pinned to some cores with ``taskset``
while Locust (headless, its own process) runs pinned to the others, and measures, in one run:

* ``ceiling``: onnxruntime in-process on the server's cores, ``serve.threads`` threads, batch 1
  (and batch 32 for reference), on the same model: what serving could reach at best;
* scenarios (``serve.load_test``): ``single_cropped`` (one client, a 64 px face, mode cropped),
  ``single_faces`` (one client, a 640x480 photo, face detection), ``clients_50``, ``burst_200``
  (200 connections opened at once) and ``mixed`` (good and malformed uploads interleaved: every
  good one must get its right label, every bad one its 4xx, none a 5xx);
* ``--stream``: one 640x480 video stream over the ``/stream`` WebSocket (real photos moving
  across the frame), frames per second into ``reports/bench/stream.json``.

Every request's answer is checked (status, label computed in-process by onnxruntime), so a
fast wrong answer counts as an error. Results, the ratio to the ceiling, the targets of issues
#14 and #26, the face step's time per photo size (``detection_by_size``) and the CPU go to
``reports/bench/serve_load.json``. The model is the one the service serves (``serve.model``: by
default the shipped real-face model); for ``serve.model: pipeline`` without a pipeline model, an
untrained resnet10t exported and quantized by the pipeline's own code (same architecture, input
size and graph, so the same speed); the report says which.

    python benchmarks/serve_load.py                        # all scenarios + stream
    python benchmarks/serve_load.py --scenarios single_cropped clients_50 --duration 5

Writes reports/bench/serve_load.json. Takes about 6 min on 2 cores (AMD EPYC): 5 scenarios x 3
runs of 20 s, plus the stream.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
from PIL import Image

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.errors import EmorecError
from emorec.hardware import cpu_info, describe
from emorec.inference import OnnxClassifier
from emorec.served_model import choose_model
from emorec.serving import BentoServer

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "serve_locustfile.py"
# What issues #14 and #26 ask for (2 cores, INT8, one 64 px face; a 640x480 photo, one face).
TARGETS = {"single_cropped_p50_ms": 10.0, "single_faces_p50_ms": 15.0,
           "clients_50_min_ratio": 0.5, "clients_50_p99_ms": 150.0, "stream_min_fps": 25.0}
SCENARIOS = {  # users, spawn rate, payload set
    "single_cropped": (1, 1, "cropped"),
    "single_faces": (1, 1, "photo"),
    "clients_50": (50, 50, "cropped"),
    "burst_200": (200, 200, "cropped"),
    "mixed": (20, 20, "mixed"),
}


class BenchError(EmorecError):
    """The benchmark could not run (Locust missing or failing, server not answering)."""


# ---------------------------------------------------------------------------------------------
# The model


def bench_model(params: Params, requested: Path | None, work: Path) -> tuple[Path, str]:
    """The model to serve (the one ``serve.model`` picks, as the service does) and a sentence
    saying what it is."""
    if requested:
        return requested.resolve(), f"{requested} (given)"
    chosen = choose_model(params, Path.cwd())
    if chosen.path.is_file():  # a copy: a pipeline run may rewrite it during the benchmark
        copy = work / chosen.path.name
        shutil.copy2(chosen.path, copy)
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()[:12]
        return copy, f"{chosen.path.relative_to(Path.cwd())} ({chosen.setting}, sha256 {digest}...)"
    if chosen.kind == "shipped":
        raise BenchError(f"shipped model not found: {chosen.path} (serve.shipped_model)")
    # built once per architecture and export/quantize settings, then reused
    key = hashlib.sha256(json.dumps([params.get(k) for k in ("train.model", "image", "classes",
                                                             "export", "quantize")],
                                    sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / "emorec_bench_model" / key
    if not (cache / "model.int8.onnx").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        random_int8_model(params, cache)
    return cache / "model.int8.onnx", (
        f"untrained {params.get('train.model')} at {params.get('image.size')} px, exported and "
        "INT8-quantized by the pipeline's code (models/model.int8.onnx absent)")


def random_int8_model(params: Params, work: Path) -> Path:
    """The train model architecture with random weights, through export + quantize.

    Speed depends on the graph, not on the weights; calibrating on real face crops keeps the
    INT8 ranges realistic.
    """
    import pandas as pd
    import torch

    from emorec.export import ExportSettings, export_model
    from emorec.models import create_model, save_checkpoint
    from emorec.quantize import QuantizeSettings, quantize_model

    torch.manual_seed(0)
    raw = params.to_dict()
    model = create_model(raw["train"]["model"], num_classes=len(params.classes))
    ckpt = work / "random.pt"
    save_checkpoint(ckpt, model, model_name=raw["train"]["model"], classes=params.classes,
                    image=raw["image"], params=raw, data_version={}, epoch=0, metrics={})
    rows = []
    for i, data in enumerate(face_crops(raw["image"]["size"], 24)):
        path = work / "calib" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append({"path": str(path), "label": params.classes[i % len(params.classes)],
                     "source": "demo", "origin": str(i), "sha256": "0" * 64})
    pd.DataFrame(rows).to_csv(work / "val.csv", index=False)
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    export_model(ckpt, work / "val.csv", fp32, ExportSettings.from_params(params),
                 params.classes, root=Path("/"))
    calib = OnnxClassifier(fp32).preprocess.batch([Image.open(io.BytesIO(d))
                                                   for d in face_crops(raw["image"]["size"], 24)])
    quantize_model(fp32, int8, calib, QuantizeSettings.from_params(params))
    return int8


# ---------------------------------------------------------------------------------------------
# Payloads: real photos shipped with scikit-image and matplotlib


def _portraits() -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Real portraits (uint8 RGB) with a hand-drawn face box each."""
    import matplotlib.cbook
    from skimage import data

    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
                        .convert("RGB"))
    return [(data.astronaut(), (172, 62, 100, 108)), (hopper, (170, 125, 200, 210))]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def face_crops(size: int = 64, count: int = 16) -> list[bytes]:
    """``count`` grey ``size`` px face crops (PNG) cut from real photos, slightly shifted and
    scaled so that they are not all the same bytes."""
    crops = []
    rng = np.random.default_rng(0)
    portraits = _portraits()
    for i in range(count):
        rgb, (x, y, w, h) = portraits[i % len(portraits)]
        grow = rng.uniform(1.0, 1.3)
        cx, cy = x + w / 2 + rng.uniform(-0.08, 0.08) * w, y + h / 2 + rng.uniform(-0.08, 0.08) * h
        half = max(w, h) * grow / 2
        box = tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
        face = Image.fromarray(rgb).crop(box).convert("L").resize((size, size), Image.BILINEAR)
        crops.append(png(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 4 == 3 else face))
    return crops


def photo_frame(offset: float = 0.5, width: int = 640, height: int = 480) -> np.ndarray:
    """A ``width x height`` RGB frame with the astronaut photo placed at ``offset`` (0..1 of the
    free horizontal room) on a grey background: a moving face when ``offset`` changes."""
    rgb = _portraits()[0][0]
    side = height
    photo = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 96, dtype=np.uint8)
    x = int(round((width - side) * offset))
    frame[:, x:x + side] = photo
    return frame


def video_frames(count: int = 30) -> list[bytes]:
    """JPEG frames of a face panning left and right across a 640x480 picture."""
    offsets = 0.5 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, count, endpoint=False))
    return [jpeg(photo_frame(float(o))) for o in offsets]


def multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: ``(name, filename or None for a text field, content)``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                      else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename:
            head += "Content-Type: application/octet-stream\r\n"
        parts.append(head.encode() + b"\r\n" + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def malformed() -> list[tuple[str, list[tuple[str, str | None, bytes]], int, str]]:
    """Bad uploads with the status and message part each must get."""
    crop = face_crops(64, 1)[0]
    return [
        ("not_an_image", [("image", "x.png", b"hello, not a png")], 400, "corrupt"),
        ("truncated", [("image", "t.png", crop[: len(crop) // 2])], 400, "truncated"),
        ("empty_file", [("image", "e.png", b"")], 400, "empty"),
        ("text_instead_of_file", [("image", None, b"face.png")], 400, "expected an uploaded"),
        ("wrong_field", [("file", "x.png", crop)], 400, "unexpected form field"),
        ("huge_dimensions", [("image", "w.png", png(Image.new("L", (6000, 8))))], 413,
         "too_large"),
        ("unknown_mode", [("image", "x.png", crop), ("mode", None, b"everything")], 400, "mode"),
    ]


def plan_items(kind: str, model: OnnxClassifier, photo_label: str | None,
               work: Path) -> list[dict[str, Any]]:
    """The requests one scenario sends, with the right answer of each."""
    def item(name: str, fields: list, status: int, label: str | None = None,
             message: str = "") -> dict[str, Any]:
        body, ctype = multipart(fields)
        path = work / f"body_{kind}_{name}.bin"
        path.write_bytes(body)
        return {"name": name, "route": "/classify", "body": str(path), "content_type": ctype,
                "status": status, "label": label, "message": message}

    size = model.preprocess.size
    good = [item(f"crop{i}", [("image", f"{i}.png", data), ("mode", None, b"cropped")], 200,
                 label_of(model, data))
            for i, data in enumerate(face_crops(size if size >= 48 else 64))]
    if kind == "cropped":
        return good
    if kind == "photo":
        return [item("photo", [("image", "photo.jpg", jpeg(photo_frame()))], 200, photo_label)]
    bad = [item(name, fields, status, message=message)
           for name, fields, status, message in malformed()]
    return [x for pair in zip(good, bad * 3, strict=False) for x in pair] + good[len(bad) * 3:]


def label_of(model: OnnxClassifier, data: bytes) -> str:
    """The label onnxruntime gives in-process to a whole upload (mode cropped)."""
    probs = model.probabilities(model.preprocess.batch([Image.open(io.BytesIO(data))]))
    return model.classes[int(np.argmax(probs[0]))]


# ---------------------------------------------------------------------------------------------
# CPUs, the ceiling


def split_cpus(server: str | None, client: str | None) -> tuple[list[int], list[int]]:
    """Server and client cores. By default Locust gets a quarter of the cores (the last ones)
    and the server the rest, on machines with 4 cores or more; with fewer, taking a core from a
    2-core server would halve it, so both share all cores (same lists: no pinning)."""
    available = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = _cpu_list(server), _cpu_list(client)
    if server_cpus is None and client_cpus is None:
        if len(available) < 4:
            return available, available
        cut = len(available) - max(1, len(available) // 4)
        return available[:cut], available[cut:]
    return server_cpus or available, client_cpus or available


def best_ceiling(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Per batch size the higher of two ceiling measurements, and both batch-1 figures."""
    out = {k: max(first[k], second[k]) if k.endswith("_img_s") else first[k] for k in first}
    out["batch_1_runs_img_s"] = [first["batch_1_img_s"], second["batch_1_img_s"]]
    return out


def _cpu_list(text: str | None) -> list[int] | None:
    return [int(c) for c in text.split(",")] if text else None


@contextlib.contextmanager
def pinned(cpus: list[int] | None) -> Iterator[None]:
    """Run this thread (and threads it starts) on ``cpus`` for a while."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def ceiling(model_path: Path, threads: int, cpus: list[int], seconds: float = 3.0
            ) -> dict[str, Any]:
    """onnxruntime in-process on ``cpus``: images per second at batch 1 and batch 32."""
    with pinned(cpus):
        model = OnnxClassifier(model_path, threads=threads)
        size = model.preprocess.size
        out = {"threads": threads, "cpus": cpus}
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 1, size, size)
                                                        ).astype(np.float32)
            for _ in range(10):
                model.probabilities(x)
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model.probabilities(x)
                runs += 1
            out[f"batch_{batch}_img_s"] = runs * batch / (time.perf_counter() - start)
        return out


# ---------------------------------------------------------------------------------------------
# Locust


def run_locust(url: str, items: list[dict[str, Any]], users: int, spawn_rate: int,
               seconds: float, cpus: list[int] | None, timeout_s: float, work: Path,
               name: str) -> list[tuple]:
    """One headless Locust run; per request ``(start s, latency ms, status, right, item, user,
    Server-Timing stages)``."""
    plan, out = work / f"plan_{name}.json", work / f"out_{name}.json"
    plan.write_text(json.dumps({"items": items, "timeout_s": timeout_s}))
    locust = Path(sys.executable).with_name("locust")
    if not locust.is_file():
        raise BenchError("locust is not installed: pip install -e '.[dev]'")
    cmd = [str(locust), "-f", str(LOCUSTFILE), "--headless", "--host", url,
           "--users", str(users), "--spawn-rate", str(spawn_rate),
           "--run-time", f"{max(1, round(seconds))}s", "--stop-timeout", str(int(timeout_s)),
           "--only-summary", "--loglevel", "ERROR", "--exit-code-on-error", "0"]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    env = {**os.environ, "EMOREC_LOCUST_PLAN": str(plan), "EMOREC_LOCUST_OUT": str(out)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=seconds + timeout_s + 120)
    if proc.returncode != 0 or not out.is_file():
        raise BenchError(f"locust failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(out.read_text())
    for text in result["wrong"]:
        print(f"wrong answer: {text}", file=sys.stderr)
    return [tuple(r) for r in result["records"]]


def summarise(records: list, items: list[dict[str, Any]], users: int, warmup_s: float,
              seconds: float) -> dict[str, Any]:
    """Requests/s, latency percentiles, statuses and wrong answers after the warm-up (counted
    from the first request: Locust itself takes a while to start)."""
    first = min((r[0] for r in records), default=0.0)
    kept = [r for r in records if r[0] - first >= warmup_s]
    window = max(seconds - warmup_s, 1e-9)
    lat = np.array([r[1] for r in kept]) if kept else np.array([np.nan])
    statuses = Counter(str(r[2]) for r in kept)
    wrong = [r for r in kept if not r[3]]
    samples = sorted({f"{items[r[4]]['name']}: got {r[2]}, want {items[r[4]]['status']}"
                      for r in wrong})[:5]
    return {
        "users": users, "duration_s": seconds, "warmup_s": warmup_s, "requests": len(kept),
        "requests_per_s": len(kept) / window,
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")}
        | {"max": float(np.max(lat)), "mean": float(np.mean(lat))},
        "status_counts": dict(statuses),
        "errors": len(wrong),  # anything but the right answer: wrong status, label, timeouts
        "wrong_answers": len(wrong),
        "server_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "bad_uploads": sum(1 for r in kept if items[r[4]]["status"] != 200),
        "error_samples": samples,
        "server_timing_p50_ms": stage_medians([r[6] for r in kept if len(r) > 6]),
    }


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one scenario as one: requests/s, each latency percentile and each
    Server-Timing stage the median over the runs, counts summed, every run kept in ``runs``.

    One run on a shared 2-core machine moves by a few milliseconds from one minute to the
    next; the median of a few runs says what to expect, the runs say how much it moves.
    """
    if len(runs) == 1:
        return {**runs[0], "runs": [_run_digest(runs[0])]}
    first = runs[0]
    counts = ("requests", "errors", "wrong_answers", "server_5xx", "bad_uploads")
    stages = {name for r in runs for name in r["server_timing_p50_ms"]}
    return {
        **first,
        **{key: sum(r[key] for r in runs) for key in counts},
        "requests_per_s": float(np.median([r["requests_per_s"] for r in runs])),
        "latency_ms": {q: float(np.median([r["latency_ms"][q] for r in runs]))
                       for q in first["latency_ms"]},
        "status_counts": dict(sum((Counter(r["status_counts"]) for r in runs), Counter())),
        "error_samples": sorted({e for r in runs for e in r["error_samples"]})[:5],
        "server_timing_p50_ms": {n: float(np.median([r["server_timing_p50_ms"][n] for r in runs
                                                     if n in r["server_timing_p50_ms"]]))
                                 for n in sorted(stages)},
        "runs": [_run_digest(r) for r in runs],
    }


def _run_digest(run: dict[str, Any]) -> dict[str, Any]:
    return {"requests_per_s": run["requests_per_s"], "errors": run["errors"],
            **{q: run["latency_ms"][q] for q in ("p50", "p90", "p99")}}


def stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    """Median of each Server-Timing stage over the answers that carry it."""
    names = sorted({name for t in timings for name in t})
    return {name: float(np.median([t[name] for t in timings if name in t])) for name in names}


# ---------------------------------------------------------------------------------------------
# The video stream


def run_stream(url: str, frames: list[bytes], seconds: float, in_flight: int,
               warmup_s: float = 1.0) -> dict[str, Any]:
    """One WebSocket stream sending frames back to back, ``in_flight`` unanswered at most
    (a camera that never waits more than that for the server). Frames per second answered."""
    from websocket import create_connection

    ws = create_connection(url.replace("http", "ws", 1) + "/stream?mode=faces", timeout=30)
    window = threading.Semaphore(in_flight)
    sent_at: dict[int, float] = {}
    answers: list[tuple[float, float, int, int]] = []  # answered at, latency ms, frame, faces
    stop = threading.Event()
    problems: list[str] = []

    def receive() -> None:
        expected = 0
        while not (stop.is_set() and expected >= len(sent_at)):
            message = json.loads(ws.recv())
            now = time.perf_counter()
            if message.get("frame") != expected or "error" in message:
                problems.append(str(message)[:200])
            answers.append((now, (now - sent_at[expected]) * 1000.0, expected,
                            len(message.get("faces", []))))
            expected += 1
            window.release()

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    begin = time.perf_counter()
    index = 0
    while time.perf_counter() - begin < seconds:
        window.acquire()
        sent_at[index] = time.perf_counter()
        ws.send_binary(frames[index % len(frames)])
        index += 1
    stop.set()
    receiver.join(timeout=30)
    ws.close()
    kept = [a for a in answers if a[0] - begin >= warmup_s]
    span = (kept[-1][0] - kept[0][0]) if len(kept) > 1 else float("nan")
    lat = np.array([a[1] for a in kept]) if kept else np.array([np.nan])
    return {"frames_sent": index, "frames_answered": len(answers),
            "fps": (len(kept) - 1) / span if len(kept) > 1 else 0.0,
            "latency_ms": {"p50": float(np.percentile(lat, 50)),
                           "p99": float(np.percentile(lat, 99))},
            "frames_with_a_face": sum(1 for a in answers if a[3] > 0),
            "in_order_without_errors": not problems and len(answers) == index,
            "problems": problems[:5], "in_flight": in_flight, "duration_s": seconds,
            "warmup_s": warmup_s, "frame": "640x480 JPEG, a real photo moving across it"}


# ---------------------------------------------------------------------------------------------


def targets(scenarios: dict[str, Any], ratio: float | None,
            stream: dict[str, Any] | None) -> dict[str, Any]:
    """Issue #14's targets with the measured values and a verdict each."""
    def check(value: float | None, limit: float, low_is_good: bool = True) -> dict[str, Any]:
        ok = value is not None and (value <= limit if low_is_good else value >= limit)
        return {"value": value, "limit": limit, "pass": bool(ok)}

    def p50(name: str) -> float | None:
        return scenarios[name]["latency_ms"]["p50"] if name in scenarios else None

    out: dict[str, Any] = {}
    out["single_cropped_p50_ms"] = check(p50("single_cropped"), TARGETS["single_cropped_p50_ms"])
    out["single_faces_p50_ms"] = check(p50("single_faces"), TARGETS["single_faces_p50_ms"])
    if "clients_50" in scenarios:
        out["clients_50_ratio"] = check(ratio, TARGETS["clients_50_min_ratio"], False)
        out["clients_50_p99_ms"] = check(scenarios["clients_50"]["latency_ms"]["p99"],
                                         TARGETS["clients_50_p99_ms"])
    out["zero_errors"] = {"value": sum(s["errors"] for s in scenarios.values()), "limit": 0,
                          "pass": all(s["errors"] == 0 and s["server_5xx"] == 0
                                      for s in scenarios.values())}
    if stream is not None:
        out["stream_fps"] = check(stream["fps"], TARGETS["stream_min_fps"], False)
    return out


def start_server(args: argparse.Namespace, model_path: Path, cpus: list[int] | None,
                 work: Path) -> BentoServer:
    env = {"EMOREC_PARAMS": str(args.params.resolve()), "EMOREC_MODEL": str(model_path),
           "BENTOML_HOME": str(work / "bentoml_home")}
    return BentoServer(working_dir=Path.cwd(), log_path=work / "serve.log", env=env,
                       cpus=cpus).start()


def main(params: Params, args: argparse.Namespace) -> None:
    lt = params.section("serve.load_test")
    duration = args.duration or lt.number("duration_s", low=0.5)
    warmup = lt.number("warmup_s", low=0) if args.warmup is None else args.warmup
    timeout = lt.number("request_timeout_s", low=0.1)
    repeats = args.repeats or lt.integer("repeats", low=1)
    server_cpus, client_cpus = split_cpus(args.server_cpus, args.client_cpus)
    pinned = server_cpus != client_cpus
    work = Path(tempfile.mkdtemp(prefix="emorec_serve_load_"))
    model_path, model_note = bench_model(params, args.model, work)
    model = OnnxClassifier(model_path, threads=1)
    print(f"model: {model_note}; server cpus {server_cpus}, locust cpus {client_cpus}",
          file=sys.stderr)
    load_before = os.getloadavg()
    roof = ceiling(model_path, params.integer("serve.threads", low=0), server_cpus,
                   args.ceiling_seconds)
    found = model_faces(params, model)
    by_size = detection_by_size(params, model)

    server = None if args.url else start_server(args, model_path,
                                                server_cpus if pinned else None, work)
    url = args.url or server.url
    scenarios: dict[str, Any] = {}
    stream = None
    try:
        info = requests.post(f"{url}/info", json={}, timeout=timeout).json()
        for name in args.scenarios:
            users, rate, kind = SCENARIOS[name]
            if name == "clients_50":  # the 50, from params (or --clients)
                users = rate = args.clients or lt.integer("clients", low=1)
            items = plan_items(kind, model, found, work)
            seconds = duration + warmup
            runs = []
            for _ in range(repeats):
                records = run_locust(url, items, users, rate, seconds,
                                     client_cpus if pinned else None, timeout, work, name)
                runs.append(summarise(records, items, users, warmup, seconds))
            scenarios[name] = s = combine_runs(runs)
            print(f"{name}: {s['requests_per_s']:.1f} req/s, p50 {s['latency_ms']['p50']:.1f} "
                  f"ms, p99 {s['latency_ms']['p99']:.1f} ms, errors {s['errors']} (median of "
                  f"{repeats}: p50s " + ", ".join(f"{r['p50']:.1f}" for r in s["runs"]) + ")",
                  file=sys.stderr)
        if args.stream:
            stream = stream_bench(url, params, duration, client_cpus if pinned else None)
        batching = requests.post(f"{url}/info", json={}, timeout=timeout).json().get("batching")
    finally:
        if server is not None:
            server.stop()
    # again with the server gone; the better of the two is the ceiling (a ceiling lowered by
    # something else running on the machine would flatter the ratio)
    roof = best_ceiling(roof, ceiling(model_path, roof["threads"], server_cpus,
                                      args.ceiling_seconds))

    base = roof["batch_1_img_s"]
    ratio = scenarios["clients_50"]["requests_per_s"] / base if "clients_50" in scenarios else None
    cpu = cpu_info()
    common = {"model": {"path": str(model_path), "what": model_note,
                        "bytes": model_path.stat().st_size, "image": info.get("image")},
              "cpu": {"description": describe(cpu), **cpu},
              "pinning": {"server_cpus": server_cpus if pinned else None,
                          "client_cpus": client_cpus if pinned else None,
                          "note": "taskset: server and load client on separate cores" if pinned
                          else f"server and load client share cores {server_cpus} (taskset "
                          "splits only from 4 cores on; --server-cpus/--client-cpus force it)"}}
    report = {"tool": f"locust {_locust_version()}", "url": url, "endpoint": "/classify",
              **common, "ceiling": roof, "scenarios": scenarios,
              "clients_50_vs_ceiling": ratio, "batching": batching,
              "detection_by_size": {"what": "find_faces in-process (faces.detector, faces."
                                    "max_side, crops, preprocessing), median ms, on "
                                    "faces.threads threads",
                                    "detector": params.get("faces.detector"),
                                    "max_side": params.get("faces.max_side", 0),
                                    "sizes": by_size},
              # 1-minute load average: other work on the machine skews every figure
              "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
              "targets": targets(scenarios, ratio, stream)}
    report["pass"] = all(t["pass"] for t in report["targets"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if stream is not None:
        stream_report = {**stream, **common,
                         "target_fps": TARGETS["stream_min_fps"],
                         "pass": stream["fps"] >= TARGETS["stream_min_fps"]
                         and stream["in_order_without_errors"]}
        args.stream_out.write_text(json.dumps(stream_report, indent=2) + "\n")
        print(f"stream: {stream['fps']:.1f} fps -> {args.stream_out}", file=sys.stderr)
    print(f"ceiling {base:.0f} img/s (batch 1); clients_50 / ceiling = "
          f"{ratio if ratio is None else round(ratio, 3)}; pass {report['pass']} -> {args.out}",
          file=sys.stderr)
    if args.fail_on_errors and not report["targets"]["zero_errors"]["pass"]:
        raise SystemExit(1)


def stream_bench(url: str, params: Params, seconds: float, cpus: list[int] | None
                 ) -> dict[str, Any]:
    """The stream client in this process, pinned like Locust so it does not take server time."""
    with pinned(cpus):
        in_flight = params.integer("serve.stream.max_in_flight", low=1)
        return run_stream(url, video_frames(), seconds, in_flight)


DETECTION_SIZES = ((320, 240), (640, 480), (1280, 960), (1920, 1080), (4032, 3024))


def detection_by_size(params: Params, model: OnnxClassifier, runs: int = 15
                      ) -> list[dict[str, Any]]:
    """In-process time of the service's face step (find the faces, level and cut them,
    preprocess) on the benchmark photo at phone and camera sizes: median ms and faces found."""
    from emorec.faces import FaceSettings
    from emorec.serving import find_faces

    settings = FaceSettings.from_params(params)
    rows = []
    for width, height in DETECTION_SIZES:
        image = Image.fromarray(cv2.resize(photo_frame(), (width, height),
                                           interpolation=cv2.INTER_AREA if width <= 640
                                           else cv2.INTER_CUBIC))
        found = find_faces(image, "faces", settings, model.preprocess)  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            find_faces(image, "faces", settings, model.preprocess)
            times.append((time.perf_counter() - start) * 1000)
        rows.append({"size": f"{width}x{height}", "faces": len(found.faces),
                     "detect_ms_p50": round(float(np.median(times)), 2)})
        print(f"detection {width}x{height}: {rows[-1]['detect_ms_p50']} ms, "
              f"{len(found.faces)} face(s)", file=sys.stderr)
    return rows


def model_faces(params: Params, model: OnnxClassifier) -> str | None:
    """The label the service should give the photo's (single) face, computed in-process."""
    from emorec.faces import FaceSettings
    from emorec.serving import find_faces

    found = find_faces(Image.fromarray(photo_frame()), "faces", FaceSettings.from_params(params),
                       model.preprocess)
    if len(found.inputs) != 1:
        raise BenchError(f"the benchmark photo should show one face, the detector finds "
                         f"{len(found.inputs)}")
    return model.classes[int(np.argmax(model.probabilities(np.stack(found.inputs))[0]))]


def _locust_version() -> str:
    from importlib.metadata import version

    return version("locust")


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--url", default=None,
                        help="running server to test; default: start `bentoml serve` on loopback")
    parser.add_argument("--model", type=Path, default=None,
                        help="model to serve (default: models/model.int8.onnx, else a random "
                        "resnet10t exported and quantized)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                        help="which load scenarios to run")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure one video stream over /stream")
    parser.add_argument("--clients", type=int, default=None,
                        help="users of the clients_50 scenario (default: serve.load_test.clients)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per scenario (default: serve.load_test.duration_s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per scenario, medians reported (default: "
                             "serve.load_test.repeats)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds first (default: serve.load_test.warmup_s)")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0,
                        help="seconds per in-process ceiling measurement")
    parser.add_argument("--server-cpus", default=None, help="cores for the server, e.g. 0")
    parser.add_argument("--client-cpus", default=None, help="cores for Locust, e.g. 1")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/serve_load.json"),
                        help="report to write")
    parser.add_argument("--stream-out", type=Path, default=Path("reports/bench/stream.json"),
                        help="stream report to write")
    parser.add_argument("--fail-on-errors", action="store_true",
                        help="exit 1 when any request got a wrong answer or a 5xx")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
