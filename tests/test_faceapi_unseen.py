"""scripts/faceapi_unseen.py: face-api's own pipeline in real headless Chromium, scored as a row
of the unseen-source table."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import yaml
from facephotos import PHOTOS
from PIL import Image
from stagerun import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("faceapi_unseen",
                                                  REPO / "scripts" / "faceapi_unseen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_faceapi_answers_real_faces_and_counts_a_faceless_picture_as_wrong(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(PHOTOS["astronaut"]).save(photos / "1_happy.png")  # she smiles
    Image.fromarray(PHOTOS["grace_hopper"]).save(photos / "2_neutral.png")
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(photos / "3_sad.png")
    protocol = tmp_path / "unseen.yaml"
    protocol.write_text(yaml.safe_dump({
        "unseen": [{"name": "photos", "reader": "folder", "path": str(photos),
                    "label_pattern": r"^\d_([a-z]+)\.png$",
                    "map": {"happy": "happy", "neutral": "neutral", "sad": "sad"}}],
        "recipes": {"default": {"preset": "multisource-cpu"}}}))
    out = tmp_path / "faceapi.json"
    assert load_script().main(["--protocol", str(protocol), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    entry = record["sets"]["photos"]
    assert entry["n"] == 3 and entry["found_rate"] == 2 / 3  # the grey picture has no face
    assert entry["service"]["recall"]["happy"] == 1.0
    assert entry["service"]["recall"]["sad"] == 0.0  # no face found counts as wrong
    assert record["name"] == "shipped-faceapi" and "Chromium" in record["about"]
    assert "cores" in record["hardware"]
