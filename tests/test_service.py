"""The BentoML service, really served: ``bentoml serve`` on loopback, real HTTP requests.

One server per module (start-up costs seconds). Answers are compared with onnxruntime run
directly on the same bytes (:class:`emorec.inference.OnnxClassifier`); malformed requests must get
a 4xx with a message naming the problem, and the server must keep answering afterwards.

Faces: real photos shipped by packages (scikit-image's astronaut, matplotlib's Grace Hopper, with
the hand-drawn boxes of ``benchmarks/face_detectors.py``) must give one answer per face; blank
uploads must never get an emotion. The random ``face_like`` images are sent in mode ``cropped``
(tight crops, classified whole), which is what the comparisons with onnxruntime need.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from facephotos import BENCH, PHOTOS, TRUTH
from imagesplits import face_like
from PIL import Image

from emorec.config import Params
from emorec.faces import FaceSettings
from emorec.imageio import open_image
from emorec.inference import OnnxClassifier
from emorec.quantize import QuantizeSettings, calibration_images, quantize_model
from emorec.serving import NO_FACE, BentoServer, find_faces

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

LIMITS = {"max_image_bytes": 300_000, "max_images_per_request": 4, "max_request_bytes": 2_000_000,
          "max_image_side": 1024, "workers": 1}


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
def server_params(repo_params_raw) -> Params:
    raw = json.loads(json.dumps(repo_params_raw))
    raw["serve"].update(LIMITS)
    return Params(raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory, int8_model, server_params):
    tmp = tmp_path_factory.mktemp("svc")
    (tmp / "params.yaml").write_text(yaml.safe_dump(server_params.to_dict()))
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


def jpeg(rgb: np.ndarray) -> bytes:
    """Real photos travel as JPEG (small enough for the test's byte limit)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


CROPPED = {"mode": "cropped"}


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
    resp = post(server, "classify", files={"image": ("ok.png", sample_images()[0], "image/png")},
                data=CROPPED)
    assert resp.status_code == 200, resp.text
    assert resp.json()["faces"]


def probabilities(answer: dict, classes: list[str]) -> np.ndarray:
    return np.array([answer["probabilities"][c] for c in classes])


def test_cropped_mode_agrees_with_onnxruntime(server, reference):
    for data in sample_images():
        resp = post(server, "classify", files={"image": ("face.png", data, "image/png")},
                    data=CROPPED)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        (face,) = body["faces"]
        width, height = open_image(data).size
        assert face["box"] == [0, 0, width, height] and face["landmarks"] is None
        want = expected(reference, data)
        np.testing.assert_allclose(probabilities(face, reference.classes), want, atol=1e-5)
        assert face["label"] == reference.classes[int(np.argmax(want))]
        assert face["confidence"] == pytest.approx(float(want.max()), abs=1e-5)
        # the single-face API's fields repeat the (only) face
        assert (body["label"], body["face_box"]) == (face["label"], face["box"])
        assert "message" not in body


def test_exif_rotated_photo_is_classified_upright(server, reference):
    """A phone photo stored sideways with EXIF orientation 6 scores like the upright face."""
    upright = face_like(np.random.default_rng(11), 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="PNG", exif=exif)
    resp = post(server, "classify", files={"image": ("phone.png", buf.getvalue(), "image/png")},
                data=CROPPED)
    assert resp.status_code == 200, resp.text
    got = probabilities(resp.json()["faces"][0], reference.classes)
    np.testing.assert_allclose(got, expected(reference, png(upright)), atol=1e-5)


def test_classify_batch_keeps_order(server, reference):
    images = sample_images()
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    resp = post(server, "classify_batch", files=files, data=CROPPED)
    assert resp.status_code == 200, resp.text
    answers = resp.json()
    assert len(answers) == len(images)
    for data, answer in zip(images, answers, strict=True):
        got = probabilities(answer["faces"][0], reference.classes)
        np.testing.assert_allclose(got, expected(reference, data), atol=1e-5)


def test_concurrent_requests_share_batches_correctly(server, reference):
    """Adaptive batching merges these; every client must still get its own answer."""
    rng = np.random.default_rng(11)
    images = [png(face_like(rng, 56)) for _ in range(16)]

    def one(data: bytes) -> np.ndarray:
        resp = post(server, "classify", files={"image": ("c.png", data, "image/png")},
                    data=CROPPED)
        assert resp.status_code == 200, resp.text
        return probabilities(resp.json()["faces"][0], reference.classes)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, images))
    for data, got in zip(images, results, strict=True):
        np.testing.assert_allclose(got, expected(reference, data), atol=1e-5)


@pytest.fixture(scope="module")
def face_settings(server_params) -> FaceSettings:
    return FaceSettings.from_params(server_params)


def expected_faces(reference: OnnxClassifier, data: bytes, settings: FaceSettings):
    """What the server should answer in mode ``faces``: the same detection, crops and model,
    run here in-process."""
    found = find_faces(open_image(data), "faces", settings, reference.preprocess)
    return found.faces, reference.probabilities(np.stack(found.inputs))


def test_real_photo_gets_one_face_with_its_emotion(server, reference, face_settings):
    data = jpeg(PHOTOS["astronaut"])
    resp = post(server, "classify", files={"image": ("astronaut.jpg", data, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    (face,) = body["faces"]
    assert BENCH.iou(tuple(face["box"]), TRUTH["astronaut"]) > 0.5
    assert {"left_eye", "right_eye", "nose"} <= set(face["landmarks"])
    assert face["detection_score"] >= face_settings.score_threshold
    faces, want = expected_faces(reference, data, face_settings)
    assert face["box"] == list(faces[0].box)
    np.testing.assert_allclose(probabilities(face, reference.classes), want[0], atol=1e-5)
    assert body["label"] == face["label"] and body["face_box"] == face["box"]


def test_group_photo_gets_one_entry_per_face(server, reference, face_settings):
    rgb, boxes = BENCH.tile_row([(PHOTOS[n], (TRUTH[n],)) for n in ("astronaut", "grace_hopper")])
    data = jpeg(rgb)
    resp = post(server, "classify", files={"image": ("group.jpg", data, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    faces = resp.json()["faces"]
    assert len(faces) == 2
    for truth in boxes:  # every real face is answered once
        assert sum(BENCH.iou(tuple(f["box"]), truth) > 0.5 for f in faces) == 1
    _, want = expected_faces(reference, data, face_settings)
    for face, row in zip(faces, want, strict=True):
        np.testing.assert_allclose(probabilities(face, reference.classes), row, atol=1e-5)


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (160, 120), (0, 0, 0, 90)).save(buf, format="JPEG")
    return buf.getvalue()


NO_FACE_UPLOADS = {
    "flat_grey_png": png(Image.new("L", (160, 120), 128)),
    "flat_16bit_png": png(Image.fromarray(np.full((120, 160), 30000, dtype=np.uint16))),
    "flat_cmyk_jpeg": _cmyk_jpeg(),
}


@pytest.mark.parametrize("case", list(NO_FACE_UPLOADS))
@pytest.mark.parametrize("mode", ["faces", "cropped"])
def test_blank_upload_never_gets_an_emotion(server, case, mode):
    resp = post(server, "classify", files={"image": ("blank", NO_FACE_UPLOADS[case])},
                data={"mode": mode})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"faces": [], "message": NO_FACE}


def test_faceless_photo_has_no_face(server):
    from skimage import data

    resp = post(server, "classify", files={"image": ("cat.jpg", jpeg(data.chelsea()))})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"faces": [], "message": NO_FACE}


def test_batch_mixes_faces_and_no_face(server):
    files = [("images", ("a.jpg", jpeg(PHOTOS["astronaut"]), "image/jpeg")),
             ("images", ("b.png", NO_FACE_UPLOADS["flat_grey_png"], "image/png")),
             ("images", ("c.jpg", jpeg(PHOTOS["grace_hopper"]), "image/jpeg"))]
    resp = post(server, "classify_batch", files=files)
    assert resp.status_code == 200, resp.text
    counts = [len(a["faces"]) for a in resp.json()]
    assert counts == [1, 0, 1]
    assert resp.json()[1]["message"] == NO_FACE


def test_legacy_face_crop_flag_maps_to_modes(server, reference):
    """``face_crop=false`` (the old default) classifies the whole upload, ``true`` detects."""
    data = sample_images()[1]
    whole = post(server, "classify", files={"image": ("f.png", data)},
                 data={"face_crop": "false"}).json()
    assert whole == post(server, "classify", files={"image": ("f.png", data)},
                         data=CROPPED).json()
    photo = jpeg(PHOTOS["astronaut"])
    detected = post(server, "classify", files={"image": ("a.jpg", photo)},
                    data={"face_crop": "true"}).json()
    assert detected == post(server, "classify", files={"image": ("a.jpg", photo)}).json()


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
    "unknown_mode": ("classify", {"files": {"image": ("x.png", sample_images()[0], "image/png")},
                                  "data": {"mode": "everything"}}, 400, "mode"),
    "contradicting_mode": ("classify",
                           {"files": {"image": ("x.png", sample_images()[0], "image/png")},
                            "data": {"mode": "faces", "face_crop": "false"}}, 400, "contradicts"),
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
    model = health.json()["model"]  # which model answers, and why this one
    assert model["kind"] == "env" and model["setting"] == f"EMOREC_MODEL={int8_model}"
    assert model["sha256"] == hashlib.sha256(int8_model.read_bytes()).hexdigest()
    info = requests.post(f"{server.url}/info", json={}, timeout=5).json()
    assert info["model_path"] == str(int8_model) and info["model"] == model
    assert info["classes"] == ["angry", "fearful", "happy", "neutral", "sad", "surprised"]
    assert info["image"]["size"] == 32
    assert json.loads(info["metadata"]["emorec.quantization"])["format"] == "QDQ"
    assert info["limits"]["max_images_per_request"] == LIMITS["max_images_per_request"]


def _emorec_imports(path: Path) -> set[str]:
    """Files (relative to ``src/emorec``) of the emorec modules ``path`` imports at module level,
    and those they import, transitively, with the ``__init__.py`` of every subpackage on the way
    (imports inside functions serve the pipeline, not the service)."""
    src = REPO / "src"
    found: set[str] = set()
    todo = [path]
    while todo:
        text = todo.pop().read_text()
        for module in re.findall(r"^from (emorec(?:\.\w+)+) import", text, re.M):
            parts = module.split(".")
            for depth in range(2, len(parts) + 1):
                rel = src.joinpath(*parts[:depth])
                file = rel / "__init__.py" if rel.is_dir() else rel.with_suffix(".py")
                name = file.relative_to(src / "emorec").as_posix()
                if name not in found:
                    found.add(name)
                    todo.append(file)
    return found


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
    real = REPO / yaml.safe_load((REPO / "params.yaml").read_text())["serve"]["shipped_model"]
    shutil.copytree(real, ctx / real.relative_to(REPO))  # the default model (real faces)
    shutil.copy2(int8_model, ctx / "models" / "model.int8.onnx")  # the pipeline's, one param away
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
    assert {s["name"] for s in manifest["services"]} == {"emotion_classifier"}  # model in-process
    assert (bento / "src" / "models" / "model.int8.onnx").is_file()
    in_bento = bento / "src" / real.relative_to(REPO)
    assert {p.name for p in in_bento.iterdir()} >= {"model.int8.onnx", "label_map.json",
                                                    "README.md"}
    assert not (bento / "src" / "src" / "emorec" / "models.py").exists()  # no torch code
    # every emorec module the service needs, directly or not, travels in the bento (here the
    # installed package would hide a missing one; in a container nothing does)
    shipped = bento / "src" / "src" / "emorec"
    needed = _emorec_imports(REPO / "bento" / "service.py")
    assert {"faces/__init__.py", "faces/mtcnn.py", "faces/yunet.py"} <= needed  # packages too
    assert sorted(m for m in needed if not (shipped / m).is_file()) == []
    assert (shipped / "faces" / "weights" / "yunet_s.onnx").is_file()  # the detector's weights

    # The built bento serves on its own: model and params from inside the bento.
    with BentoServer(target=tag, working_dir=tmp_path, log_path=tmp_path / "bento.log",
                     env={"BENTOML_HOME": str(home)}) as srv:
        resp = post(srv, "classify", files={"image": ("f.png", sample_images()[0], "image/png")})
        assert resp.status_code == 200, resp.text
        info = requests.post(f"{srv.url}/info", json={}, timeout=5).json()
        assert Path(info["model_path"]).is_relative_to(bento)
        # with no environment the bento serves the shipped real-face model
        assert info["model"]["kind"] == "shipped"
        assert Path(info["model"]["path"]) == in_bento / "model.int8.onnx"
        assert info["classes"] == list(json.loads((real / "label_map.json").read_text()))


def test_good_and_malformed_uploads_at_once_each_get_their_own_answer(server, reference):
    """Bad uploads are refused before anything is batched, so they never fail good requests
    that run at the same time, and every good request still gets its own probabilities."""
    rng = np.random.default_rng(21)
    good = [png(face_like(rng, 60)) for _ in range(12)]
    bad = [kwargs for route, kwargs, _, _ in BAD_REQUESTS.values() if route == "classify"]

    def send(job):
        kind, payload = job
        if kind == "good":
            return kind, payload, post(server, "classify", files={"image": ("g.png", payload)},
                                       data=CROPPED)
        return kind, payload, requests.post(f"{server.url}/classify", timeout=30, **payload)

    jobs = [("good", g) for g in good] + [("bad", b) for b in bad]
    order = np.random.default_rng(3).permutation(len(jobs))
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(send, [jobs[i] for i in order]))
    for kind, payload, resp in results:
        if kind == "bad":
            assert 400 <= resp.status_code < 500, resp.text
            continue
        assert resp.status_code == 200, resp.text
        got = probabilities(resp.json()["faces"][0], reference.classes)
        np.testing.assert_allclose(got, expected(reference, payload), atol=1e-5)


def test_answers_say_where_the_time_went(server):
    """Server-Timing: decode (cropped) or detect (faces), queue and model, in milliseconds."""
    from emorec.serving import parse_server_timing

    resp = post(server, "classify", files={"image": ("f.png", sample_images()[0])}, data=CROPPED)
    stages = parse_server_timing(resp.headers["server-timing"])
    assert {"decode", "queue", "model", "total"} <= set(stages)
    assert stages["total"] >= stages["decode"] + stages["model"] - 0.01
    photo = post(server, "classify", files={"image": ("a.jpg", jpeg(PHOTOS["astronaut"]))})
    assert "detect" in parse_server_timing(photo.headers["server-timing"])
    info = requests.post(f"{server.url}/info", json={}, timeout=5).json()["batching"]
    assert info["this_worker"]["rows"] >= 2 and "max_queue" in info


def test_serve_load_benchmark_cli(server, tmp_path, int8_model, server_params):
    """benchmarks/serve_load.py (Locust) against the running server: 50 clients and a mix of
    good and malformed uploads; every answer must be right (label from onnxruntime in-process,
    the expected 4xx for bad uploads), none a 5xx."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(server_params.to_dict()))
    out = tmp_path / "bench" / "serve_load.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--url", server.url,
         "--model", str(int8_model), "--params", str(tmp_path / "params.yaml"),
         "--scenarios", "clients_50", "mixed", "--no-stream", "--duration", "3", "--repeats", "2",
         "--warmup", "0.5", "--ceiling-seconds", "0.5", "--out", str(out), "--fail-on-errors"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["tool"].startswith("locust ")
    load, mixed = report["scenarios"]["clients_50"], report["scenarios"]["mixed"]
    assert load["users"] == server_params.get("serve.load_test.clients") == 50
    for scenario in (load, mixed):
        assert scenario["errors"] == 0 and scenario["server_5xx"] == 0, scenario
        assert scenario["requests"] > 20
        lat = scenario["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert load["status_counts"] == {"200": load["requests"]}
    # two runs each: medians reported, counts summed, both runs kept
    assert [len(s["runs"]) for s in (load, mixed)] == [2, 2]
    assert min(r["p50"] for r in load["runs"]) <= load["latency_ms"]["p50"] \
        <= max(r["p50"] for r in load["runs"])
    assert sum(r["errors"] for r in mixed["runs"]) == mixed["errors"] == 0
    assert mixed["bad_uploads"] > 0 and set(mixed["status_counts"]) >= {"200", "400"}
    assert report["ceiling"]["batch_1_img_s"] > 0 and report["clients_50_vs_ceiling"] > 0
    assert report["cpu"]["logical_cores"] >= 1 and report["cpu"]["description"]


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, int8_model, server_params):
    """The same model behind a server whose serve.min_confidence no answer can reach."""
    tmp = tmp_path_factory.mktemp("svc_strict")
    raw = server_params.to_dict()
    raw["serve"]["min_confidence"] = 0.99
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {"EMOREC_MODEL": str(int8_model), "EMOREC_PARAMS": str(tmp / "params.yaml"),
           "BENTOML_HOME": str(tmp / "bentoml_home")}
    with BentoServer(log_path=tmp / "serve.log", env=env) as srv:
        yield srv


def test_below_min_confidence_the_answer_is_uncertain(server, strict_server, reference):
    face = Image.fromarray(PHOTOS["astronaut"]).resize((64, 64))
    files = {"image": ("face.png", png(face), "image/png")}
    sure = post(server, "classify", files=files, data={"mode": "cropped"}).json()["faces"][0]
    assert sure["label"] in reference.classes and sure.get("predicted") is None  # no threshold
    body = post(strict_server, "classify", files=files, data={"mode": "cropped"}).json()
    (unsure,) = body["faces"]
    assert unsure["confidence"] < 0.99  # the tiny random model is never that sure
    assert unsure["label"] == "uncertain" and body["label"] == "uncertain"
    assert unsure["predicted"] == sure["label"] and unsure["min_confidence"] == 0.99
    assert unsure["probabilities"] == pytest.approx(sure["probabilities"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The defaults a new user gets: no EMOREC_MODEL, no EMOREC_PARAMS, the repository's params.yaml.


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """``bentoml serve`` exactly as the README says, with nothing in the environment."""
    tmp = tmp_path_factory.mktemp("svc_default")
    srv = BentoServer(log_path=tmp / "serve.log", env={"BENTOML_HOME": str(tmp / "home")})
    for name in ("EMOREC_MODEL", "EMOREC_PARAMS"):
        srv.env.pop(name, None)
    with srv:
        yield srv


def test_with_no_env_the_shipped_real_face_model_answers_each_face(default_server):
    """The README's promise: clone, (make repro,) serve, and a photo of people is answered per
    face by the real-face model in ``serve.shipped_model``, not by the demo pipeline's model."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["serve"]["model"] == "shipped"
    folder = REPO / params["serve"]["shipped_model"]
    model_file = folder / "model.int8.onnx"
    classes = list(json.loads((folder / "label_map.json").read_text()))
    assert len(classes) == 7  # FER2013's classes, disgust included (the demo model has 6)
    card = yaml.safe_load((folder / "README.md").read_text().split("---")[1])

    health = requests.get(f"{default_server.url}/health", timeout=5).json()
    model = health["model"]
    assert model["kind"] == "shipped" and Path(model["path"]) == model_file
    assert model["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert model["card_name"] == card["model-index"][0]["name"] == "emorec-resnet18"
    assert model["classes"] == health["classes"] == classes

    reference = OnnxClassifier(model_file)
    settings = FaceSettings.from_params(Params(params))
    rgb, boxes = BENCH.tile_row([(PHOTOS[n], (TRUTH[n],)) for n in ("astronaut", "grace_hopper")])
    data = jpeg(rgb)
    resp = post(default_server, "classify", files={"image": ("group.jpg", data, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    faces = resp.json()["faces"]
    assert len(faces) == 2
    for truth in boxes:  # every real face is answered once
        assert sum(BENCH.iou(tuple(f["box"]), truth) > 0.5 for f in faces) == 1
    _, want = expected_faces(reference, data, settings)
    for face, row in zip(faces, want, strict=True):
        assert set(face["probabilities"]) == set(classes)
        np.testing.assert_allclose(probabilities(face, classes), row, atol=1e-5)
    # what the real model sees: Eileen Collins smiles in the astronaut portrait
    astronaut = next(f for f in faces if BENCH.iou(tuple(f["box"]), boxes[0]) > 0.5)
    assert astronaut["predicted"] == "happy" and astronaut["confidence"] > 0.8
