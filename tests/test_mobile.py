"""The on-device web client (mobile/) in a real headless Chromium against onnxruntime in Python.

A tiny random INT8 model is built with the pipeline's own export/quantize code, copied into a
temporary model folder by the real stage script (stages/mobile_assets.py), and served with the
app over loopback HTTP. Chromium (Debian's /usr/bin/chromium, driven by Playwright; set up by
scripts/setup_browser.sh) loads a fixture image through the app's file input; the test then
asserts that the browser fed the model exactly the tensor Python's Preprocess produces and that
its probabilities match onnxruntime's.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import numpy_helper
from PIL import Image
from stagerun import REPO, STAGES, run_python

from emorec.config import Params, load_params
from emorec.faces import FaceSettings
from emorec.inference import OnnxClassifier
from emorec.labels import write_label_map
from emorec.mobile import (
    MobileAssetsError,
    MobileSettings,
    detector_files,
    write_mobile_assets,
)
from emorec.transforms import Preprocess

MOBILE = REPO / "mobile"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
TEST_MODEL_PREFIX = "/__test_model__/"
# INT8 kernels of onnxruntime-web (WASM SIMD) and of native onnxruntime may round a requantised
# activation differently; probabilities of a 6-class softmax then differ in the 4th decimal.
# This holds on every CPU only because weights are 7-bit (quantize.reduce_range): with 8-bit
# weights, x86 CPUs without VNNI saturate int16 pair sums natively while WASM sums exactly, and
# probabilities then differ by several hundredths.
PROB_ATOL = 2e-3
HEAD_GAIN = 40.0

pytestmark = pytest.mark.slow


def build_int8_model(checkpoint: Path, params: Params, out_dir: Path) -> Path:
    """FP32 export + static INT8 quantization with the pipeline's code, on random calibration."""
    from emorec.export import add_metadata, export_with_fallback, model_metadata
    from emorec.models import load_checkpoint
    from emorec.quantize import QuantizeSettings, quantize_model

    model, meta = load_checkpoint(checkpoint)
    with torch.no_grad():  # a random head gives near-uniform softmax; spread it to be telling
        model.get_classifier().weight.mul_(HEAD_GAIN)
    size = params.integer("image.size")
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (8, 1, size, size)).astype(np.float32)
    fp32 = out_dir / "model.onnx"
    result = export_with_fallback(model, torch.from_numpy(calib[:2]), fp32,
                                  params.sequence("export.opsets"), dynamo=False)
    proto = onnx.load(str(fp32))
    add_metadata(proto, model_metadata(meta, result.opset, dynamo=False))
    onnx.save(proto, str(fp32))
    int8 = out_dir / "model.int8.onnx"
    quantize_model(fp32, int8, calib, QuantizeSettings.from_params(params))
    return int8


def max_abs_int8_weight(path: Path) -> int:
    """Largest |w| over the model's INT8 weight tensors (64 when weights are 7-bit)."""
    model = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max())
               for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)


@pytest.fixture(scope="module")
def small_params(repo_params_raw, tmp_path_factory) -> tuple[Params, Path]:
    raw = copy.deepcopy(repo_params_raw)
    raw["image"]["size"] = 32
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Params(raw), path


@pytest.fixture(scope="module")
def model_files(tiny_checkpoint, small_params, tmp_path_factory) -> tuple[Path, Path]:
    params, _ = small_params
    out = tmp_path_factory.mktemp("models")
    int8 = build_int8_model(tiny_checkpoint, params, out)
    label_map = out / "label_map.json"
    write_label_map(params.classes, label_map)
    return int8, label_map


@pytest.fixture(scope="module")
def assets_dir(model_files, small_params, tmp_path_factory) -> Path:
    """mobile/public/model, but in a temp dir, written by the real stage script."""
    int8, label_map = model_files
    _, params_path = small_params
    work = tmp_path_factory.mktemp("assets")
    args = [str(STAGES / "mobile_assets.py"), "--params", str(params_path),
           "--model", str(int8), "--label-map", str(label_map), "--out", str(work / "model"),
           "--report", str(work / "report.json")]
    run = run_python(args, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads((work / "report.json").read_text())
    detector = sorted(detector_files(FaceSettings.from_params(load_params(params_path))))
    assert sorted(report["files"]) == ["config.json", "label_map.json", "model.int8.onnx",
                                       *detector]
    return work / "model"


class _Handler(SimpleHTTPRequestHandler):
    """Serves mobile/, and the test's model folder under TEST_MODEL_PREFIX."""

    model_dir: Path
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm",
                      ".webmanifest": "application/manifest+json",
                      ".onnx": "application/octet-stream"}

    def translate_path(self, path: str) -> str:
        if path.startswith(TEST_MODEL_PREFIX):
            name = Path(path[len(TEST_MODEL_PREFIX):].split("?")[0])
            # the model folder's files and its detector's weights; nothing above the folder
            return str(self.model_dir.joinpath(*[p for p in name.parts if p not in ("..", "/")]))
        return super().translate_path(path)

    def end_headers(self) -> None:
        # Cross-origin isolation, as mobile/serve.mjs sends it: the wasm backends' threads need it.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base
        pass


@contextlib.contextmanager
def serve_app(model_dir: Path) -> Iterator[str]:
    """The app (mobile/) on a loopback port, ``model_dir`` under TEST_MODEL_PREFIX; its URL."""
    if not (MOBILE / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        pytest.fail("mobile/node_modules is missing: run `bash scripts/setup_browser.sh`")
    handler = type("Handler", (_Handler,), {"model_dir": model_dir})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(handler, directory=str(MOBILE)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server(assets_dir) -> Iterator[str]:
    with serve_app(assets_dir) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    """The app in headless Chromium, model loaded from the test folder, centre crop."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup_browser.sh`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{server}/?model={TEST_MODEL_PREFIX}&crop=center")
        page.evaluate("window.emorec.ready.then(() => true)")
        page.errors = errors
        yield page
        browser.close()


def _classify_file(page, path: Path, expected_seq: int) -> dict:
    page.set_input_files("#file", str(path))
    page.wait_for_function(f"window.emorec.last && window.emorec.last.seq >= {expected_seq}",
                           timeout=30_000)
    return page.evaluate("window.emorec.last")


def _center_square(image: Image.Image) -> tuple[int, int, int, int]:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return left, top, left + side, top + side


def _fixture_images(tmp_path: Path) -> list[Path]:
    """A non-square colour PNG (crop, grayscale, downscale) and a small grayscale one (upscale)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:75, 0:101]
    face = ((yy - 37) ** 2 / 30**2 + (xx - 50) ** 2 / 24**2 < 1) * 90
    rgb = np.stack([60 + xx + face, 40 + yy * 2 + face // 2, 200 - xx - face // 3], -1)
    rgb = np.clip(rgb + rng.normal(0, 10, rgb.shape), 0, 255).astype(np.uint8)
    gray = rng.integers(0, 256, (21, 21), dtype=np.uint8)
    paths = [tmp_path / "colour.png", tmp_path / "gray.png"]
    Image.fromarray(rgb, "RGB").save(paths[0])
    Image.fromarray(gray, "L").save(paths[1])
    return paths


def test_browser_prediction_matches_onnxruntime(page, model_files, small_params, tmp_path):
    int8, _ = model_files
    params, _ = small_params
    info = page.evaluate("window.emorec.ready.then(r => ({classes: r.classes, size: r.size}))")
    assert info == {"classes": params.classes, "size": 32}

    # Browser and native CPU compute the same int8 math on any machine only without saturation.
    assert max_abs_int8_weight(int8) <= 64, "8-bit weights saturate on x86 CPUs without VNNI"
    reference = OnnxClassifier(int8, threads=1, execution_providers=["CPUExecutionProvider"])
    for seq, path in enumerate(_fixture_images(tmp_path), start=1):
        result = _classify_file(page, path, seq)
        with Image.open(path) as image:
            box = _center_square(image)
            crop = image.crop(box)
            expected_input = reference.preprocess.batch([crop])
            expected = reference.probabilities(expected_input)[0]

        c = result["crop"]
        assert (c["x"], c["y"], c["x"] + c["width"], c["y"] + c["height"]) == box
        assert c["method"] == "center"
        # Same pixels in: the JS preprocessing is bit-exact with emorec.transforms.Preprocess.
        browser_input = np.asarray(result["input"], dtype=np.float32).reshape(expected_input.shape)
        np.testing.assert_array_equal(browser_input, expected_input)
        # Same answer out.
        probs = np.asarray(result["probs"])
        assert result["label"] == params.classes[int(np.argmax(expected))]
        assert int(np.argmax(probs)) == int(np.argmax(expected))
        np.testing.assert_allclose(probs, expected, atol=PROB_ATOL)
        assert probs.sum() == pytest.approx(1.0, abs=1e-6)

        # The bars on the page show the same numbers, in label-map order.
        bars = page.eval_on_selector_all(
            "#bars li", "rows => rows.map(r => [r.dataset.class, Number(r.dataset.prob)])")
        assert [name for name, _ in bars] == params.classes
        np.testing.assert_allclose([p for _, p in bars], probs, rtol=0, atol=1e-12)
        assert page.text_content("#result").startswith(result["label"])
    assert page.errors == []


def test_preprocess_module_is_bit_exact_with_pillow(page):
    """The ES module alone, on shapes that exercise upscaling, antialiased and exact downscaling."""
    rng = np.random.default_rng(3)
    pre = Preprocess(size=32, mean=0.5, std=0.5)
    cases = []
    for height, width in [(5, 7), (61, 97), (64, 64), (200, 33), (32, 32)]:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], -1)
        cases.append((rgb, rgba.ravel().tolist(), width, height))
    outputs = page.evaluate(
        """async (cases) => {
            const m = await import('./src/preprocess.js');
            return cases.map(([rgba, w, h]) => {
                const r = m.preprocess(Uint8ClampedArray.from(rgba), w, h,
                                       {size: 32, mean: 0.5, std: 0.5});
                return {gray: Array.from(r.gray), data: Array.from(r.data), dims: r.dims};
            });
        }""",
        [[rgba, w, h] for _, rgba, w, h in cases])
    for (rgb, _, width, height), out in zip(cases, outputs, strict=True):
        image = Image.fromarray(rgb, "RGB")
        expected_gray = pre.to_gray(image)
        got_gray = np.asarray(out["gray"], np.uint8).reshape(32, 32)
        assert np.array_equal(got_gray, expected_gray), f"gray differs for {width}x{height}"
        np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(1, 32, 32),
                                      pre(image))
        assert out["dims"] == [1, 1, 32, 32]


def test_pwa_is_installable_and_works_offline(page, server, tmp_path):
    manifest = page.evaluate("""async () => {
        const link = document.querySelector('link[rel=manifest]');
        return (await fetch(link.href)).json();
    }""")
    assert manifest["display"] == "standalone" and manifest["start_url"]
    sizes = {icon["sizes"] for icon in manifest["icons"]}
    assert {"192x192", "512x512"} <= sizes
    for icon in manifest["icons"]:
        status = page.evaluate("(src) => fetch(src).then(r => r.status)", icon["src"])
        assert status == 200, icon["src"]
    scope = page.evaluate("navigator.serviceWorker.ready.then(r => r.active && r.scope)")
    assert scope == f"{server}/"
    # Once the worker controls the page, one online visit caches the runtime and the model ...
    page.reload()
    page.evaluate("window.emorec.ready.then(() => true)")
    cached = page.evaluate("""caches.open('emorec-v2').then(c => c.keys())
                              .then(k => k.map(r => new URL(r.url).pathname))""")
    assert {"/src/preprocess.js", f"{TEST_MODEL_PREFIX}model.int8.onnx"} <= set(cached)
    assert any(path.endswith(".wasm") for path in cached)
    # ... and the app then starts and classifies with no network at all.
    page.context.set_offline(True)
    try:
        page.reload()
        assert page.evaluate("window.emorec.ready.then(r => r.classes.length)") == 6
        result = _classify_file(page, _fixture_images(tmp_path)[1], 1)
        assert len(result["probs"]) == 6
    finally:
        page.context.set_offline(False)


def test_mobile_assets_refuse_a_mismatched_label_map(model_files, small_params, tmp_path):
    int8, _ = model_files
    params, _ = small_params
    swapped = list(params.classes)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    bad = tmp_path / "label_map.json"
    write_label_map(swapped, bad)
    with pytest.raises(MobileAssetsError, match="label map"):
        write_mobile_assets(int8, bad, tmp_path / "out", MobileSettings.from_params(params))
    assert not (tmp_path / "out").exists()


def test_setup_script_is_idempotent():
    script = REPO / "scripts" / "setup_browser.sh"
    for _ in range(2):  # the first run may install; the second must find everything in place
        run = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # no apt-get, no npm
    assert CHROMIUM.exists()
    for package in ("onnxruntime-web", "@vladmandic/face-api", "@tensorflow/tfjs-backend-wasm"):
        assert (MOBILE / "node_modules" / package / "package.json").is_file()
