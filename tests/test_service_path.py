"""emorec.service_path: the service's detect-align-crop path replayed on labelled images."""

from __future__ import annotations

import numpy as np
import pytest
from facephotos import PHOTOS
from PIL import Image

from emorec.faces import FaceSettings
from emorec.inference import OnnxClassifier
from emorec.service_path import accuracy, best_margin, crops, detect_split, score

SETTINGS = FaceSettings(detector="mtcnn", score_threshold=0.9)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two real portraits and a faceless photo saved as files, as a split lists them."""
    from skimage import data

    folder = tmp_path_factory.mktemp("split")
    pictures = {"astronaut": PHOTOS["astronaut"], "grace_hopper": PHOTOS["grace_hopper"],
                "coffee": data.coffee()}
    paths = []
    for name, rgb in pictures.items():
        paths.append(folder / f"{name}.png")
        Image.fromarray(rgb).convert("L").save(paths[-1])  # grey, like FER2013
    return detect_split(paths, ["happy", "neutral", "sad"], SETTINGS)


def test_detect_split_finds_the_faces_and_only_them(labelled):
    assert labelled.found.tolist() == [True, True, False]
    assert all(im.ndim == 3 and im.shape[2] == 3 for im in labelled.images)
    side = [c.shape[0] for c in crops(labelled, 0.0)], [c.shape[0] for c in crops(labelled, 0.3)]
    assert all(wide > tight for tight, wide in zip(*side, strict=True))


def test_accuracy_against_the_model_own_answers(tiny_onnx, labelled):
    model = OnnxClassifier(tiny_onnx["fp32"])
    images = crops(labelled, 0.05)
    rows = np.stack([model.preprocess(Image.fromarray(im)) for im in images])
    own = np.asarray(model.classes)[model.probabilities(rows).argmax(1)]
    assert accuracy(model, images, own, batch_size=1) == 1.0
    wrong = np.array([next(c for c in model.classes if c != label) for label in own])
    assert accuracy(model, images, wrong) == 0.0


def test_score_counts_found_faces_and_every_margin(tiny_onnx, labelled):
    report = score(OnnxClassifier(tiny_onnx["fp32"]), labelled, [0.0, 0.15])
    assert (report["n"], report["faces_found"]) == (3, 2)
    assert report["found_rate"] == pytest.approx(2 / 3)
    assert set(report["accuracy_on_found_by_margin"]) == {"0", "0.15"}
    assert all(value in (0.0, 0.5, 1.0) for value in report["accuracy_on_found_by_margin"].values())


def test_best_margin_is_the_most_accurate_and_the_smaller_on_ties():
    assert best_margin({"accuracy_on_found_by_margin": {"0": 0.6, "0.05": 0.7, "0.1": 0.7}}) == 0.05
    assert best_margin({"accuracy_on_found_by_margin": {"0.3": 0.5, "0.15": 0.4}}) == 0.3


def test_script_says_what_is_missing_without_a_fer2013_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "fer2013_service_path.py"),
                           "--workspace", str(tmp_path), "--params", str(repo / "params.yaml"),
                           "--model", str(repo / "models" / "fer2013" / "model.int8.onnx"),
                           "--out", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "val.csv not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()
