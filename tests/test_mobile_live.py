"""The PWA's live mode in headless Chromium, fed a fake camera made from real photos.

Chromium reads its camera from a ``.y4m`` file written here from scikit-image's astronaut and
matplotlib's Grace Hopper (two faces side by side, drifting a few pixels per frame). The app
must find both faces with the Tiny Face Detector whose weights come from the npm package and are
served by the app itself (no other origin is contacted), classify each, keep each face's track
across frames (so its probabilities are smoothed) and report a frame rate. The page is
cross-origin isolated (COOP/COEP, as mobile/serve.mjs serves it), the detector's TensorFlow.js
backend is the fastest one the app timed at start, and the wasm binaries come from the app too.

``EMOREC_LIVE_REPORT=reports/faces/live_mode.json`` also writes the measured frame rate, the
per-frame detection and model times, the backend choice, the CPU and the browser there.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from facephotos import BENCH
from test_mobile import (  # noqa: F401 - fixtures shared with the photo-mode browser test
    CHROMIUM,
    CHROMIUM_ARGS,
    MOBILE,
    TEST_MODEL_PREFIX,
    assets_dir,
    model_files,
    server,
    small_params,
)

REPO = Path(__file__).resolve().parents[1]
# A 30 fps camera, so the camera is not what limits live mode's frame rate.
WIDTH, HEIGHT, FPS, FRAMES = 640, 480, 30, 30
# Frames over which the report's frame rate and per-frame times are averaged.
MEASURED_FRAMES = 60
pytestmark = pytest.mark.slow


def head_and_shoulders(rgb: np.ndarray, box: tuple[int, int, int, int], side: int
                       ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A square around a face (2.2x its size), resized to ``side``; the face box moved along."""
    x, y, w, h = box
    half = int(max(w, h) * 1.1)
    cx, cy = x + w // 2, y + h // 2
    left, top = max(0, cx - half), max(0, cy - half)
    crop = rgb[top:cy + half, left:cx + half]
    f = side / crop.shape[0]
    resized = cv2.resize(crop, (round(crop.shape[1] * f), side), interpolation=cv2.INTER_AREA)
    return resized, (round((x - left) * f), round((y - top) * f), round(w * f), round(h * f))


def camera_frames() -> tuple[list[np.ndarray], list[list[tuple[int, int, int, int]]]]:
    """RGB frames with two real faces that drift right and down, and their true boxes."""
    bench = BENCH
    photos = bench.portraits()
    parts = [head_and_shoulders(photos[n], bench.PORTRAIT_FACES[n], 280)
             for n in ("astronaut", "grace_hopper")]
    frames, truths = [], []
    for i in range(FRAMES):
        canvas = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
        dx, dy = 20 + i, 60 + i // 2
        boxes = []
        for image, (x, y, w, h) in parts:
            ih, iw = image.shape[:2]
            iw = min(iw, WIDTH - dx)
            canvas[dy:dy + ih, dx:dx + iw] = image[:, :iw]
            boxes.append((dx + x, dy + y, w, h))
            dx += iw + 10
        frames.append(canvas)
        truths.append(boxes)
    return frames, truths


def write_y4m(path: Path, frames: list[np.ndarray]) -> None:
    """YUV 4:2:0 (BT.601, what Chromium's fake capture reads) at FPS frames per second."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
            out.write(b"FRAME\n" + yuv.tobytes())


def iou(a, b) -> float:
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


@pytest.fixture(scope="module")
def live_page(server, tmp_path_factory):  # noqa: F811 - the imported fixture
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup_browser.sh`")
    for package in ("@vladmandic/face-api/model", "@tensorflow/tfjs-backend-wasm/dist"):
        if not (MOBILE / "node_modules" / package).is_dir():
            pytest.fail(f"mobile/node_modules lacks {package}: run `npm ci` in mobile/")
    from playwright.sync_api import sync_playwright

    frames, truths = camera_frames()
    video = tmp_path_factory.mktemp("camera") / "faces.y4m"
    write_y4m(video, frames)
    args = CHROMIUM_ARGS + ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                            f"--use-file-for-fake-video-capture={video}"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        page = browser.new_page()
        page.errors, page.requests = [], []
        page.on("pageerror", lambda err: page.errors.append(str(err)))
        page.on("request", lambda req: page.requests.append(req.url))
        # EMOREC_LIVE_BUNDLED=1: the app's own bundled model (mobile/public/model, the shipped
        # one after `make repro`) instead of the tiny stand-in, to measure what users run
        model = "" if os.environ.get("EMOREC_LIVE_BUNDLED") else f"model={TEST_MODEL_PREFIX}&"
        page.goto(f"{server}/?{model}sw=0"
                  + (f"&tfjs={os.environ['EMOREC_TFJS']}" if os.environ.get("EMOREC_TFJS") else ""))
        page.evaluate("window.emorec.ready.then(() => true)")
        page.truths = truths
        page.browser_name = f"{pw.chromium.name} {browser.version}"
        yield page
        browser.close()


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def test_live_mode_boxes_and_classifies_every_face(live_page, server):  # noqa: F811
    page = live_page
    page.evaluate("window.emorec.live.start()")
    page.wait_for_function("window.emorec.live.stats().frames >= 12", timeout=240_000,
                           polling=500)
    first = page.evaluate("window.emorec.live.stats()")
    page.wait_for_function(
        f"window.emorec.live.stats().frames >= {first['frames'] + MEASURED_FRAMES}",
        timeout=240_000, polling=500)
    stats = page.evaluate("window.emorec.live.stats()")
    page.evaluate("window.emorec.live.stop()")

    assert (stats["width"], stats["height"]) == (WIDTH, HEIGHT)
    assert stats["fps"] > 0
    # Isolated, so the wasm backend may use threads; it loaded its binary from the app (the
    # SIMD + threads build, which this Chromium supports), and live mode runs on whichever
    # backend was fastest on the first camera frame.
    assert page.evaluate("crossOriginIsolated") is True
    wasm_binaries = [url for url in page.requests if "tfjs-backend-wasm" in url]
    assert [url.rsplit("/", 1)[1] for url in wasm_binaries] == [
        "tfjs-backend-wasm-threaded-simd.wasm"]
    bench = stats["benchmark"]
    assert "wasm" in bench and all(ms > 0 for ms in bench.values())
    assert stats["backend"] == min(bench, key=bench.get)
    if stats["backend"] == "wasm":
        assert stats["wasm"]["simd"] is True and stats["wasm"]["threads"] >= 1
    assert stats["backend"] in page.text_content("#status")
    assert stats["faces"] == 2, stats["tracks"]
    # Each real face is boxed (the camera's frame is somewhere in the looping clip, so compare
    # with the truth of every frame and take the best).
    for track in stats["tracks"]:
        box = track["box"]
        b = (box["x"], box["y"], box["width"], box["height"])
        best = max(iou(b, t) for boxes in page.truths for t in boxes)
        assert best > 0.3, (b, best)
        crop = track["crop"]  # the margin is added around the detection
        assert crop["width"] > box["width"] and crop["x"] <= box["x"]
        assert sum(track["probs"]) == pytest.approx(1.0, abs=1e-5)
        assert sum(track["raw"]) == pytest.approx(1.0, abs=1e-5)
    # The same two faces were followed from frame to frame (their probabilities are smoothed).
    assert {t["id"] for t in stats["tracks"]} == {t["id"] for t in first["tracks"]}
    bars = page.eval_on_selector_all("#bars li", "rows => rows.map(r => r.dataset.class)")
    assert len(bars) == page.evaluate("window.emorec.ready.then((r) => r.classes.length)")
    assert "fps" in page.text_content("#fps")
    # blob: URLs are the wasm backend's thread workers, made by the page itself.
    elsewhere = [url for url in page.requests if not url.startswith((server, "blob:"))]
    assert elsewhere == [], "live mode left its origin"
    assert any("tiny_face_detector_model" in url for url in page.requests)
    assert page.errors == []

    report = os.environ.get("EMOREC_LIVE_REPORT")
    if report:  # averages over the last MEASURED_FRAMES frames, timed by the page's clock
        frames = stats["frames"] - first["frames"]
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps({
            "fps": round(frames * 1000 / (stats["time"] - first["time"]), 2),
            "ms_detect_per_frame": round(
                (stats["msDetectTotal"] - first["msDetectTotal"]) / frames, 1),
            "ms_model_per_frame": round(
                (stats["msModelTotal"] - first["msModelTotal"]) / frames, 1),
            "measured_frames": frames, "faces": stats["faces"], "frame": [WIDTH, HEIGHT],
            "camera_fps": FPS,
            "emotion_model": ("the app's bundled INT8 model (mobile/public/model), "
                              if os.environ.get("EMOREC_LIVE_BUNDLED") else
                              "the test's tiny INT8 stand-in, ")
            + f"{page.evaluate('window.emorec.ready.then((r) => r.size)')} px input, "
            f"{page.evaluate('window.emorec.ready.then((r) => r.classes.length)')} classes",
            "detector": "face-api TinyFaceDetector (inputSize "
            f"{page.evaluate('window.emorec.live.options.inputSize')})",
            "tfjs_backend": stats["backend"],
            "backend_benchmark_ms": {k: round(v, 1) for k, v in stats["benchmark"].items()},
            "ms_backend_choice": round(stats["msChoice"]),
            "wasm": stats["wasm"],
            "cross_origin_isolated": page.evaluate("crossOriginIsolated"),
            "browser": f"headless {page.browser_name}, --disable-gpu (no GPU), "
            "fake camera from a .y4m",
            "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
        }, indent=2) + "\n")


def test_live_helpers(live_page):
    """Smoothing and the fps meter as modules, without a camera."""
    out = live_page.evaluate("""async () => {
        const m = await import('./src/live.js');
        let id = 0;
        const next = () => ++id;
        const box = {x: 0, y: 0, width: 10, height: 10};
        const moved = {x: 1, y: 1, width: 10, height: 10};
        const far = {x: 50, y: 50, width: 10, height: 10};
        const t1 = m.smoothTracks([{box, probs: [1, 0]}], [], 0.5, 0.3, next);
        const t2 = m.smoothTracks([{box: moved, probs: [0, 1]}, {box: far, probs: [0, 1]}],
                                  t1, 0.5, 0.3, next);
        const meter = new m.FpsMeter(2000);
        [0, 100, 200, 300].forEach((t) => meter.tick(t));
        return {t1, t2, fps: meter.fps(), iou: m.iou(box, moved)};
    }""")
    assert out["t1"][0]["id"] == 1 and out["t1"][0]["probs"] == [1, 0]
    kept, new = out["t2"]
    assert kept["id"] == 1 and kept["probs"] == [0.5, 0.5] and kept["raw"] == [0, 1]
    assert new["id"] == 2 and new["probs"] == [0, 1]
    assert out["fps"] == pytest.approx(10.0)
    assert out["iou"] == pytest.approx(81 / 119)


CHOICE_KEY = "emorec.tfjs-backend"


def start_live(page, url: str) -> dict:
    """Open ``url``, start live mode, wait for its first frame; its stats, live mode stopped."""
    page.goto(url)
    page.evaluate("window.emorec.ready.then(() => true)")
    page.evaluate("window.emorec.live.start()")
    page.wait_for_function("window.emorec.live.stats().frames >= 1", timeout=240_000,
                           polling=250)
    stats = page.evaluate("window.emorec.live.stats()")
    page.evaluate("window.emorec.live.stop()")
    return stats


@pytest.mark.skipif(bool(os.environ.get("EMOREC_TFJS")), reason="a requested backend is not timed")
def test_live_mode_remembers_the_backend_it_timed(live_page):
    """Timing every backend costs seconds; the next start on this browser reuses the answer."""
    page = live_page
    url = page.url.split("#")[0]
    page.evaluate(f"localStorage.setItem('{CHOICE_KEY}', '{{not json')")  # unreadable: ignored
    first = start_live(page, url)
    assert first["choice"] == "measured" and first["backend"] in first["benchmark"]
    saved = json.loads(page.evaluate(f"localStorage.getItem('{CHOICE_KEY}')"))
    assert saved["backend"] == first["backend"] and saved["benchmark"] == first["benchmark"]

    again = start_live(page, url)
    assert again["choice"] == "remembered" and again["backend"] == first["backend"]
    assert again["benchmark"] == first["benchmark"]
    assert "remembered" in page.text_content("#status")

    remeasured = start_live(page, url + "&tfjs=measure")  # the user asks to time again
    assert remeasured["choice"] == "measured"
    saved = json.loads(page.evaluate(f"localStorage.getItem('{CHOICE_KEY}')"))
    assert saved["benchmark"] == remeasured["benchmark"]  # ... and the new answer is kept
    assert page.errors == []


def test_built_site_vendors_the_wasm_binaries_and_is_isolated(tmp_path):
    """`npm run build` copies the wasm binaries next to the app and points the page at them, and
    `npm start` (serve.mjs) serves the site with the COOP/COEP headers threads need."""
    for name in ("build.mjs", "serve.mjs", "index.html", "src", "icons", "sw.js",
                 "manifest.webmanifest"):
        (tmp_path / name).symlink_to(MOBILE / name)
    (tmp_path / "node_modules").symlink_to(MOBILE / "node_modules")
    build = subprocess.run(["node", "build.mjs"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert build.returncode == 0, build.stderr
    html = (tmp_path / "dist" / "index.html").read_text()
    assert '<meta name="emorec-tfjs-wasm" content="./vendor/tfjs-wasm/">' in html
    assert "./node_modules/" not in html

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve = subprocess.Popen(["node", "serve.mjs", str(port), "dist"], cwd=tmp_path,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert "emorec mobile" in serve.stdout.readline()
        for path in ("/", "/vendor/tfjs-wasm/tfjs-backend-wasm.wasm",
                     "/vendor/tfjs-wasm/tfjs-backend-wasm-simd.wasm",
                     "/vendor/tfjs-wasm/tfjs-backend-wasm-threaded-simd.wasm"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                assert resp.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert resp.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
                body = resp.read()
                if path.endswith(".wasm"):
                    assert resp.headers["Content-Type"] == "application/wasm"
                    assert body[:4] == b"\0asm"
    finally:
        serve.terminate()
        serve.wait(timeout=10)
