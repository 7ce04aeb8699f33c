"""The ExpW reader: faces cut from web photos by their listed box, labels from label.lst alone."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from facephotos import PHOTOS
from PIL import Image
from test_sources import sources_params

from emorec.errors import DataError, ParamsError
from emorec.expw import grown_box, read_label_list
from emorec.ingest import run_ingest

EXPW_MAP = {"angry": "angry", "disgust": None, "fear": "fearful", "happy": "happy",
            "sad": "sad", "surprise": "surprised", "neutral": "neutral"}


def expw_tree(root, lines: list[str]) -> None:
    images = root / "Images"
    images.mkdir(parents=True)
    # the search word in the name is not the label: the astronaut is listed as fearful
    Image.fromarray(PHOTOS["astronaut"]).save(images / "happy_astronaut_1.jpg", quality=95)
    Image.fromarray(PHOTOS["grace_hopper"]).save(images / "angry_officer_2.jpg", quality=95)
    (root / "label.lst").write_text("\n".join(lines) + "\n")


def test_each_listed_face_is_read_counted_and_cropped_from_its_own_box(params_raw, tmp_path):
    root = tmp_path / "expw"
    expw_tree(root, [
        "happy_astronaut_1.jpg 0 62 172 272 170 91.5 2",    # her face: fear
        "happy_astronaut_1.jpg 1 400 400 480 480 3.2 2",    # a box on the background
        "angry_officer_2.jpg 0 125 170 370 335 80.0 6",     # his face: neutral
        "gone_3.jpg 0 10 10 60 60 50.0 6",                  # listed, not in Images/
        "happy_astronaut_1.jpg 2 0 0 50 50 5.0 1",          # disgust: the map drops it
        "happy_astronaut_1.jpg 3 600 600 700 700 5.0 2",    # outside the 512 px photo
    ])
    two = {raw: c if c in ("fearful", "neutral") else None for raw, c in EXPW_MAP.items()}
    entry = {"name": "expw", "reader": "expw", "path": str(root), "map": two,
             "box_margin": 0.3, "face_crop": True, "split": "stratified"}
    report = run_ingest(sources_params(params_raw, [entry], ["fearful", "neutral"]),
                        tmp_path / "interim", tmp_path / "ingest.json")
    stats = report["sources"]["expw"]
    assert stats["offered"] == 6 and stats["accepted"] == 2
    assert stats["rejected_by_reason"] == {"no_face": 1, "unreadable": 1, "unknown_label": 1,
                                           "too_small": 1}
    manifest = pd.read_csv(tmp_path / "interim" / "manifest.csv", keep_default_na=False)
    assert sorted(manifest["label"]) == ["fearful", "neutral"]
    fear = Image.open(manifest.loc[manifest["label"] == "fearful", "path"].iloc[0])
    assert fear.size[0] < 200  # her face, found again inside its grown box, not the photo
    rejected = json.loads((tmp_path / "ingest.json").read_text())["rejected_files"]
    assert any("gone_3.jpg face 0 (label.lst:4)" in str(r) for r in rejected)


def test_a_box_grows_by_its_margin_and_stays_inside_the_photo():
    assert grown_box((100, 50, 200, 150), 0.25, (640, 480)) == (75, 25, 225, 175)
    assert grown_box((10, 10, 110, 110), 0.5, (120, 100)) == (0, 0, 120, 100)


def test_a_malformed_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "label.lst"
    path.write_text("a.jpg 0 1 2 30 40 9.0 2\nb.jpg 0 1 2 30\n")
    with pytest.raises(DataError, match=r"label.lst:2: expected 8 fields"):
        list(read_label_list(path))
    path.write_text("a.jpg 0 40 2 30 10 9.0 2\n")
    with pytest.raises(DataError, match=r"label.lst:1: empty face box"):
        list(read_label_list(path))
    with pytest.raises(DataError, match="not found"):
        list(read_label_list(tmp_path / "none.lst"))


def test_box_margin_is_needed_for_expw_and_refused_elsewhere(params_raw, tmp_path):
    root = tmp_path / "expw"
    expw_tree(root, ["happy_astronaut_1.jpg 0 62 172 272 170 91.5 2"])
    entry = {"name": "expw", "reader": "expw", "path": str(root), "map": EXPW_MAP}
    with pytest.raises(ParamsError, match=r"data.sources\[0\].box_margin"):
        run_ingest(sources_params(params_raw, [entry]), tmp_path / "i", tmp_path / "r.json")
    folder = {"name": "f", "reader": "folder", "path": str(tmp_path), "box_margin": 0.3}
    with pytest.raises(ParamsError, match="is for reader expw, not folder"):
        run_ingest(sources_params(params_raw, [folder]), tmp_path / "i", tmp_path / "r.json")
