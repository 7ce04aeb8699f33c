"""Cross-corpus evaluation through the service path, on real photos and a faceless image."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from facephotos import PHOTOS
from PIL import Image
from stagerun import REPO, run_python

from emorec.config import Params
from emorec.cross_corpus import NO_FACE, Predictions, metrics, score_set
from emorec.errors import ParamsError


def test_metrics_count_missing_faces_as_wrong_and_fold_classes():
    pred = Predictions(labels=["happy", "happy", "disgust", "sad"],
                       service=["happy", NO_FACE, "angry", "sad"],
                       whole=["happy", "happy", "angry", "angry"], skipped={})
    entry = score_set(pred, {"disgust": "angry"})
    assert entry["found_rate"] == 0.75
    assert entry["service"]["accuracy"] == 0.5
    # recall: happy 1/2, disgust 0/1, sad 1/1 -> balanced (0.5 + 0 + 1) / 3
    assert entry["service"]["balanced_accuracy"] == pytest.approx(0.5)
    assert entry["whole"]["accuracy"] == 0.5
    folded = entry["folded"]["service"]  # disgust -> angry makes the third answer right
    assert folded["accuracy"] == 0.75 and set(folded["recall"]) == {"angry", "happy", "sad"}
    assert entry["service"]["confusion"] == {"disgust": {"angry": 1}, "sad": {"sad": 1},
                                             "happy": {"happy": 1, NO_FACE: 1}}
    assert folded["confusion"]["angry"] == {"angry": 1}


def test_macro_scores_use_only_the_classes_a_set_has():
    got = metrics(["happy", "sad"], ["happy", "angry"])
    assert got["balanced_accuracy"] == 0.5 and set(got["recall"]) == {"happy", "sad"}


@pytest.fixture
def photo_set(tmp_path):
    """A labelled folder of real portraits plus one faceless image, as a user would lay it out."""
    root = tmp_path / "raw" / "portraits"
    for k, (name, pixels) in enumerate(PHOTOS.items()):
        folder = root / ("happy" if k % 2 == 0 else "neutral")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels)).save(folder / f"{name}.png")
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(root / "neutral" / "grey.png")
    (root / "unlabelled").mkdir()
    Image.fromarray(np.full((50, 50), 90, np.uint8)).save(root / "unlabelled" / "x.png")
    return root


def test_stage_scores_every_set_through_the_service_path(tmp_path, photo_set, tiny_onnx,
                                                         repo_params_raw):
    raw = copy.deepcopy(repo_params_raw)
    raw["evaluate"]["external"] = [{"name": "portraits", "reader": "folder",
                                    "path": str(photo_set), "split": "stratified"}]
    (tmp_path / "params.yaml").write_text(json.dumps(raw))
    out = tmp_path / "cross_corpus.json"
    proc = run_python([str(REPO / "stages" / "cross_corpus.py"), "--params",
                       str(tmp_path / "params.yaml"), "--model", str(tiny_onnx["fp32"]),
                       "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    entry = report["sets"]["portraits"]
    assert entry["n"] == len(PHOTOS) + 1 and entry["skipped"] == {"not_in_set": 1}
    assert entry["found_rate"] == pytest.approx(len(PHOTOS) / (len(PHOTOS) + 1))
    assert 0 <= entry["service"]["accuracy"] <= len(PHOTOS) / (len(PHOTOS) + 1)
    assert report["mean"]["found_rate"] == entry["found_rate"]
    assert "cores" in report["hardware"]


def test_bad_external_entries_name_the_key(repo_params_raw, tmp_path):
    from emorec.cross_corpus import external_sets

    raw = copy.deepcopy(repo_params_raw)
    raw["evaluate"]["external"] = [{"name": "x", "reader": "folder", "path": str(tmp_path),
                                    "map": {"a": "joy"}}]
    with pytest.raises(ParamsError, match=r"evaluate.external\[0\].map.a"):
        external_sets(Params(raw), raw["classes"])


def test_service_takes_a_small_faceless_crop_whole_but_not_a_large_photo(params_raw):
    """A tight face crop (too little head for the detector) is classified whole, score 0."""
    from emorec.faces import FaceSettings
    from emorec.serving.answers import find_faces

    settings = FaceSettings.from_params(Params(params_raw))
    assert settings.whole_image_max_side == 256
    face = np.asarray(Image.fromarray(PHOTOS["astronaut"]).crop((185, 90, 245, 150)))
    crop = Image.fromarray(face).resize((48, 48))  # eyes to mouth, no forehead or chin

    def preprocess(image):
        return np.zeros((1, 8, 8), np.float32)

    found = find_faces(crop, "faces", settings, preprocess)
    assert [f.box for f in found.faces] == [(0, 0, 48, 48)] and found.faces[0].score == 0.0
    off = FaceSettings(**{**settings.__dict__, "whole_image_max_side": 0})
    assert find_faces(crop, "faces", off, preprocess).faces == []
    scene = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    assert find_faces(scene, "faces", settings, preprocess).faces == []  # too large to be a crop
