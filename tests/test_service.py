"""The BentoML service, really served: ``bentoml serve`` on loopback, real HTTP requests.

One server per module (start-up costs seconds). Answers are compared with onnxruntime run
directly on the same bytes (:class:`emorec.inference.OnnxClassifier`); malformed requests must get
a 4xx with a message naming the problem, and the server must keep answering afterwards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from imagesplits import face_like, make_split
from PIL import Image

from emorec.config import Params
from emorec.faces import crop_largest_face
from emorec.imageio import open_image
from emorec.inference import OnnxClassifier
from emorec.quantize import QuantizeSettings, calibration_images, quantize_model
from emorec.serving import BentoServer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

LIMITS = {"max_image_bytes": 300_000, "max_images_per_request": 4, "max_request_bytes": 2_000_000,
          "max_image_side": 1024}


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, tiny_onnx, repo_params_raw) -> Path:
    """The tiny checkpoint exported and statically quantized, as the pipeline would."""
    raw = json.loads(json.dumps(repo_params_raw))
    raw["image"]["size"] = 32
    params = Params(raw)
    root, fp32 = tiny_onnx["root"], tiny_onnx["fp32"]
    int8 = tmp_path_factory.mktemp("svc_model") / "models" / "model.int8.onnx"
    calib = calibration_images(tiny_onnx["csvs"]["val"], params.classes, OnnxClassifier(fp32),
                               12, 0, root)
    quantize_model(fp32, int8, calib, QuantizeSettings.from_params(params))
    return int8


@pytest.fixture(scope="module")
def server(tmp_path_factory, int8_model, repo_params_raw):
    tmp = tmp_path_factory.mktemp("svc")
    raw = json.loads(json.dumps(repo_params_raw))
    raw["serve"].update(LIMITS)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {"EMOREC_MODEL": str(int8_model), "EMOREC_PARAMS": str(tmp / "params.yaml"),
           "BENTOML_HOME": str(tmp / "bentoml_home")}
    with BentoServer(log_path=tmp / "serve.log", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(int8_model) -> OnnxClassifier:
    return OnnxClassifier(int8_model)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sample_images() -> list[bytes]:
    rng = np.random.default_rng(5)
    images = [face_like(rng, s) for s in (48, 64, 100)]
    images.append(Image.merge("RGB", [face_like(rng, 70)] * 3))  # colour input is converted
    return [png(img) for img in images]


def expected(reference: OnnxClassifier, data: bytes) -> np.ndarray:
    return reference.predict_images([open_image(data)])[0]


def post(server: BentoServer, route: str, files, data=None, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/{route}", files=files, data=data, timeout=30, **kwargs)


def assert_still_serving(server: BentoServer) -> None:
    resp = post(server, "classify", files={"image": ("ok.png", sample_images()[0], "image/png")})
    assert resp.status_code == 200, resp.text


def test_classify_agrees_with_onnxruntime(server, reference):
    for data in sample_images():
        resp = post(server, "classify", files={"image": ("face.png", data, "image/png")})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        want = expected(reference, data)
        got = np.array([body["probabilities"][c] for c in reference.classes])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert body["label"] == reference.classes[int(np.argmax(want))]
        assert body["confidence"] == pytest.approx(float(want.max()), abs=1e-5)
        assert body["face_box"] is None


def test_exif_rotated_photo_is_classified_upright(server, reference):
    """A phone photo stored sideways with EXIF orientation 6 scores like the upright face."""
    upright = face_like(np.random.default_rng(11), 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="PNG", exif=exif)
    resp = post(server, "classify", files={"image": ("phone.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 200, resp.text
    got = np.array([resp.json()["probabilities"][c] for c in reference.classes])
    np.testing.assert_allclose(got, expected(reference, png(upright)), atol=1e-5)


def test_classify_batch_keeps_order(server, reference):
    images = sample_images()
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    resp = post(server, "classify_batch", files=files)
    assert resp.status_code == 200, resp.text
    answers = resp.json()
    assert len(answers) == len(images)
    for data, answer in zip(images, answers, strict=True):
        got = np.array([answer["probabilities"][c] for c in reference.classes])
        np.testing.assert_allclose(got, expected(reference, data), atol=1e-5)


def test_concurrent_requests_share_batches_correctly(server, reference):
    """Adaptive batching merges these; every client must still get its own answer."""
    rng = np.random.default_rng(11)
    images = [png(face_like(rng, 56)) for _ in range(16)]

    def one(data: bytes) -> np.ndarray:
        resp = post(server, "classify", files={"image": ("c.png", data, "image/png")})
        assert resp.status_code == 200, resp.text
        return np.array([resp.json()["probabilities"][c] for c in reference.classes])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, images))
    for data, got in zip(images, results, strict=True):
        np.testing.assert_allclose(got, expected(reference, data), atol=1e-5)


def test_face_crop_flag(server, reference):
    from emorec.demo_faces import render_face

    canvas = Image.new("L", (220, 180), 30)
    canvas.paste(Image.fromarray(render_face("happy", np.random.default_rng(0), size=96)),
                 (80, 40))
    data = png(canvas)
    crop, box = crop_largest_face(open_image(data), margin=0.15)
    assert box is not None, "the demo face must be detectable for this test"
    resp = post(server, "classify", files={"image": ("f.png", data, "image/png")},
                data={"face_crop": "true"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["face_box"] == list(box)
    got = np.array([body["probabilities"][c] for c in reference.classes])
    np.testing.assert_allclose(got, reference.predict_images([crop])[0], atol=1e-5)
    # without the flag the whole picture is classified
    whole = post(server, "classify", files={"image": ("f.png", data, "image/png")}).json()
    assert whole["face_box"] is None
    np.testing.assert_allclose([whole["probabilities"][c] for c in reference.classes],
                               expected(reference, data), atol=1e-5)


def _truncated() -> bytes:
    data = sample_images()[2]
    return data[: len(data) // 2]


def _noise_png(side: int) -> bytes:
    """Incompressible pixels, so the file is big in bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    return png(Image.fromarray(pixels, mode="L"))


BAD_REQUESTS = {
    "not_an_image": ("classify", {"files": {"image": ("x.png", b"hello, not a png", "image/png")}},
                     400, "corrupt"),
    "truncated": ("classify", {"files": {"image": ("t.png", _truncated(), "image/png")}},
                  400, "truncated"),
    "empty_file": ("classify", {"files": {"image": ("e.png", b"", "image/png")}}, 400, "empty"),
    "empty_body": ("classify", {}, 400, "image"),
    "huge_dimensions": ("classify", {"files": {"image": ("w.png", png(Image.new("L", (2000, 8))),
                                                         "image/png")}}, 413, "too_large"),
    "huge_bytes": ("classify", {"files": {"image": ("n.png", _noise_png(600), "image/png")}},
                   413, "too_large"),
    "wrong_field": ("classify", {"files": {"file": ("x.png", sample_images()[0], "image/png")}},
                    400, "image"),
    "text_instead_of_file": ("classify", {"data": {"image": "face.png"}}, 400,
                             "expected an uploaded image file"),
    "json_body": ("classify", {"json": {"image": "aGVsbG8="}}, 400, "image"),
    "batch_with_bad_image": (
        "classify_batch",
        {"files": [("images", ("a.png", sample_images()[0], "image/png")),
                   ("images", ("b.png", b"GIF89a broken", "image/gif"))]},
        400, "images[1]: corrupt"),
    "batch_too_many": ("classify_batch",
                       {"files": [("images", (f"{i}.png", sample_images()[0], "image/png"))
                                  for i in range(5)]}, 413, "max_images_per_request"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_input_gets_4xx_and_server_keeps_serving(server, case):
    route, kwargs, status, message = BAD_REQUESTS[case]
    resp = requests.post(f"{server.url}/{route}", timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    assert message in resp.text
    assert_still_serving(server)


def test_health_and_info(server, int8_model):
    for probe in ("readyz", "livez"):
        assert requests.get(f"{server.url}/{probe}", timeout=5).status_code == 200
    health = requests.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = requests.post(f"{server.url}/info", json={}, timeout=5).json()
    assert info["model_path"] == str(int8_model)
    assert info["classes"] == ["angry", "fearful", "happy", "neutral", "sad", "surprised"]
    assert info["image"]["size"] == 32
    assert json.loads(info["metadata"]["emorec.quantization"])["format"] == "QDQ"
    assert info["limits"]["max_images_per_request"] == LIMITS["max_images_per_request"]


def test_bentoml_build_produces_a_servable_bento(tmp_path, int8_model):
    """``bentoml build`` from a repo-shaped context, then ``bentoml serve`` of the built bento."""
    ctx = tmp_path / "ctx"
    for rel in ("bento", "src/emorec", "params.yaml"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, ctx / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / rel)
    (ctx / "models").mkdir()
    shutil.copy2(int8_model, ctx / "models" / "model.int8.onnx")
    home = tmp_path / "bentoml_home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("EMOREC_MODEL", None)
    env.pop("EMOREC_PARAMS", None)
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    proc = subprocess.run([bentoml_cli, "build", "-f", "bento/bentofile.yaml", "-o", "tag", "."],
                          cwd=ctx, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert name == "emotion_classifier" and (bento / "bento.yaml").is_file()
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert {s["name"] for s in manifest["services"]} == {"emotion_classifier", "emotion_model"}
    assert (bento / "src" / "models" / "model.int8.onnx").is_file()
    assert not (bento / "src" / "src" / "emorec" / "models.py").exists()  # no torch code

    # The built bento serves on its own: model and params from inside the bento.
    with BentoServer(target=tag, working_dir=tmp_path, log_path=tmp_path / "bento.log",
                     env={"BENTOML_HOME": str(home)}) as srv:
        resp = post(srv, "classify", files={"image": ("f.png", sample_images()[0], "image/png")})
        assert resp.status_code == 200, resp.text
        info = requests.post(f"{srv.url}/info", json={}, timeout=5).json()
        assert Path(info["model_path"]).is_relative_to(bento)


def test_serve_load_benchmark_cli(server, tmp_path, repo_params_raw):
    """benchmarks/serve_load.py against the running server: 50 clients, zero errors expected.

    Well over 100 calls also cross BentoML's inter-service session recycling, which drops
    in-flight calls unless the service retries them (see ``EmotionClassifier._call_backend``).
    """
    make_split(tmp_path, repo_params_raw["classes"], {"test": 12}, seed=9)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params_raw))
    out = tmp_path / "bench" / "serve_load.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--url", server.url,
         "--images", "test.csv", "--duration", "4", "--warmup", "0.5", "--out", str(out),
         "--fail-on-errors"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["clients"] == repo_params_raw["serve"]["load_test"]["clients"] == 50
    assert report["errors"] == 0 and report["zero_errors"], report["error_samples"]
    assert report["requests"] > 100
    assert report["requests_per_s"] == pytest.approx(report["requests"] / 4)
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert report["status_counts"] == {"200": report["requests"]}
