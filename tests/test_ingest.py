"""Ingest from every source, with real files, and every way a file can be rejected."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emorec.config import Params
from emorec.errors import DataError
from emorec.ingest import MANIFEST_COLUMNS, REASONS, run_ingest, to_gray8

CLASSES = ["angry", "fearful", "happy", "neutral", "sad", "surprised"]


def face_bytes(fmt: str, seed: int, size: tuple[int, int] = (40, 40), mode: str = "L") -> bytes:
    """A small random image encoded in ``fmt`` (distinct per seed, so never a duplicate)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def folder_params(params_raw: dict, root: Path, **ingest) -> Params:
    params_raw["data"]["source"] = "folder"
    params_raw["data"]["folder"]["root"] = str(root)
    params_raw["ingest"].update(ingest)
    return Params(params_raw)


def populate(root: Path) -> None:
    """Two good images per class, in all four supported formats between them."""
    formats = [("png", "PNG", "L"), ("jpg", "JPEG", "RGB"), ("bmp", "BMP", "RGB"),
               ("webp", "WEBP", "RGB")]
    seed = 0
    for name in CLASSES:
        for k in range(2):
            ext, fmt, mode = formats[seed % 4]
            write(root / name / f"img{k}.{ext}", face_bytes(fmt, seed, (40 + seed, 36), mode))
            seed += 1


def run(params: Params, tmp_path: Path) -> tuple[dict, pd.DataFrame]:
    report = run_ingest(params, tmp_path / "interim", tmp_path / "reports" / "ingest.json")
    assert json.loads((tmp_path / "reports" / "ingest.json").read_text()) == report
    return report, pd.read_csv(tmp_path / "interim" / "manifest.csv")


def test_folder_source_accepts_all_formats_and_records_originals(params_raw, tmp_path):
    root = tmp_path / "raw"
    populate(root)
    report, manifest = run(folder_params(params_raw, root), tmp_path)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert report["accepted"] == 12 and report["rejected"] == 0
    assert report["accepted_per_class"] == {c: 2 for c in CLASSES}
    assert set(manifest["source"]) == {"folder"}
    assert manifest["id"].is_unique
    assert set(manifest["mode"]) == {"L", "RGB"}  # mode of the original file
    assert sorted(set(manifest["width"])) == list(range(40, 52))
    for row in manifest.itertuples():
        with Image.open(row.path) as img:  # normalised: 8-bit grayscale PNG, original size
            assert (img.format, img.mode, img.width) == ("PNG", "L", row.width)
        assert Path(row.path).parent.name == row.label


def test_every_bad_file_is_rejected_and_counted_by_reason(params_raw, tmp_path):
    root = tmp_path / "raw"
    populate(root)
    good_png = (root / "angry" / "img0.png").read_bytes()
    jpeg = face_bytes("JPEG", 100, (64, 64), "RGB")
    png = face_bytes("PNG", 101, (64, 64))
    write(root / "happy" / "corrupt.png", b"this is not an image at all" * 10)
    write(root / "happy" / "truncated.png", png[: len(png) // 2])
    write(root / "sad" / "truncated.jpg", jpeg[: len(jpeg) // 2])
    write(root / "sad" / "zero.png", b"")
    write(root / "disgust" / "face.png", face_bytes("PNG", 102))
    write(root / "neutral" / "copy_of_angry.png", good_png)
    write(root / "neutral" / "tiny.png", face_bytes("PNG", 103, (8, 8)))
    write(root / "neutral" / "huge.png", face_bytes("PNG", 104, (300, 20)))
    write(root / "fearful" / "notes.txt", b"hello")
    os.symlink(root / "nowhere.png", root / "surprised" / "dangling.png")

    report, manifest = run(folder_params(params_raw, root, min_side=16, max_side=256), tmp_path)
    expected = {"corrupt": 1, "truncated": 2, "empty": 1, "unknown_label": 1, "duplicate": 1,
                "too_small": 1, "too_large": 1, "unsupported_extension": 1, "unreadable": 1}
    assert report["rejected_by_reason"] == {r: expected.get(r, 0) for r in REASONS}
    assert report["accepted"] == 12 and len(manifest) == 12
    assert report["offered"] == 12 + sum(expected.values())
    reasons = {Path(r["where"]).name: r["reason"] for r in report["rejected_files"]}
    assert reasons["truncated.jpg"] == "truncated" and reasons["face.png"] == "unknown_label"
    assert reasons["copy_of_angry.png"] == "duplicate" and reasons["zero.png"] == "empty"
    assert all(r["detail"] for r in report["rejected_files"])


def test_empty_class_is_an_error_naming_class_and_folder(params_raw, tmp_path):
    root = tmp_path / "raw"
    populate(root)
    shutil.rmtree(root / "sad")
    for path in (root / "fearful").iterdir():  # fearful: files left, but all bad
        write(path, b"")
    with pytest.raises(DataError, match=r"\['fearful', 'sad'\].*raw/sad"):
        run_ingest(folder_params(params_raw, root), tmp_path / "interim", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())  # still written, to show why
    assert report["accepted_per_class"]["sad"] == 0
    assert report["rejected_by_reason"]["empty"] == 2


def test_folder_aliases_map_legacy_class_names(params_raw, tmp_path):
    root = tmp_path / "raw"
    populate(root)
    write(root / "contempt" / "c.png", face_bytes("PNG", 200))
    write(root / "disgust" / "d.png", face_bytes("PNG", 201))
    params_raw["data"]["folder"]["aliases"] = {"contempt": "angry", "disgust": None}
    report, manifest = run(folder_params(params_raw, root), tmp_path)
    assert report["accepted_per_class"]["angry"] == 3
    assert report["rejected_by_reason"]["unknown_label"] == 1


def fer_csv(path: Path, rows: list[tuple[object, str]]) -> Path:
    frame = pd.DataFrame({"emotion": [e for e, _ in rows], "pixels": [p for _, p in rows],
                          "Usage": "Training"})
    frame.to_csv(path, index=False)
    return path


def pixels(seed: int, side: int = 48) -> str:
    values = np.random.default_rng(seed).integers(0, 256, side * side)
    return " ".join(str(v) for v in values)


def fer_params(params_raw: dict, csv: Path) -> Params:
    params_raw["data"]["source"] = "fer2013"
    params_raw["data"]["fer2013"]["path"] = str(csv)
    return Params(params_raw)


def test_fer2013_maps_codes_and_disgust(params_raw, tmp_path):
    rows = [(code, pixels(code)) for code in range(7)]  # one row per FER code, 1 = disgust
    csv = fer_csv(tmp_path / "fer.csv", rows + [(3, pixels(3))])  # + an exact duplicate
    report, manifest = run(fer_params(params_raw, csv), tmp_path)
    by_id = dict(zip(manifest["id"], manifest["label"], strict=True))
    assert by_id["fer2013-000001"] == "angry"  # disgust -> angry, the default map
    assert report["accepted_per_class"] == {"angry": 2, "fearful": 1, "happy": 1, "neutral": 1,
                                            "sad": 1, "surprised": 1}
    assert report["rejected_by_reason"]["duplicate"] == 1
    assert set(manifest["width"]) == {48} and set(manifest["mode"]) == {"L"}
    assert report["fer2013_map"]["1 disgust"] == "angry"


def test_fer2013_null_mapping_and_bad_rows_are_rejected(params_raw, tmp_path):
    rows = [(code, pixels(code)) for code in range(7)]
    rows += [(1, pixels(50)), (9, pixels(51)), (2, pixels(52)[:-4]), (4, ""), (5, "1 2 x 4"),
             (6, pixels(53, side=10)), (3, " ".join(["300"] * 48 * 48)),
             (0, " ".join(["128"] * 48 * 48))]
    csv = fer_csv(tmp_path / "fer.csv", rows)
    params_raw["data"]["fer2013"]["map"][1] = None
    report, _ = run(fer_params(params_raw, csv), tmp_path)
    counts = report["rejected_by_reason"]
    assert counts["unknown_label"] == 3  # two disgust rows (null), one unknown code 9
    assert counts["bad_pixel_count"] == 1  # not a square
    assert counts["non_numeric"] == 1
    assert counts["out_of_range"] == 1  # 300 > 255
    assert counts["near_blank"] == 1  # a flat grey frame
    assert counts["empty"] == 1
    assert counts["too_small"] == 1  # 10x10 < ingest.min_side
    assert report["rejected"] == sum(counts.values()) == 9
    assert report["accepted"] == 6 and report["accepted_per_class"]["angry"] == 1


def fer_folder(root: Path) -> Path:
    """Kaggle's FER2013 layout: {train,test}/<fer class>/<Usage>_<n>.png."""
    layout = [("train", "happy", "Training_1", 1), ("train", "disgust", "Training_2", 2),
              ("test", "sad", "PublicTest_3", 3), ("test", "fear", "PrivateTest_4", 4),
              ("train", "surprise", "Training_5", 4),  # same pixels as the PrivateTest image
              ("train", "contempt", "Training_6", 6), ("train", "neutral", "Training_7", 7),
              ("train", "surprise", "Training_8", 8)]
    for part, folder, stem, seed in layout:
        path = root / part / folder / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        values = np.random.default_rng(seed).integers(0, 256, (48, 48)).astype(np.uint8)
        Image.fromarray(values).save(path)
    return root


def test_fer2013_folder_layout_keeps_usage_and_the_test_copy(params_raw, tmp_path):
    root = fer_folder(tmp_path / "fer")
    report, manifest = run(fer_params(params_raw, root), tmp_path)
    label_of = dict(zip(manifest["usage"], manifest["label"], strict=False))
    assert label_of["PublicTest"] == "sad" and label_of["PrivateTest"] == "fearful"
    assert set(manifest.loc[manifest["label"] == "angry", "usage"]) == {"Training"}  # disgust
    # The duplicate is rejected from train, not from the official test split.
    assert (manifest["usage"] == "PrivateTest").sum() == 1
    assert report["rejected_by_reason"]["duplicate"] == 1
    assert report["rejected_by_reason"]["unknown_label"] == 1  # contempt is no FER class
    assert report["accepted_per_usage"] == {"PrivateTest": 1, "PublicTest": 1, "Training": 4}


def test_demo_source_is_deterministic(params_raw, tmp_path):
    params_raw["data"]["demo"]["n_images"] = 30
    params = Params(params_raw)
    report, manifest = run(params, tmp_path / "a")
    _, again = run(params, tmp_path / "b")
    assert report["accepted"] == 30 and report["rejected"] == 0
    assert sum(report["accepted_per_class"].values()) == 30
    assert list(manifest["sha256"]) == list(again["sha256"])
    assert set(manifest["width"]) == {32} and set(manifest["source"]) == {"demo"}


def test_16_bit_and_transparent_images_are_rescaled_not_clipped():
    ramp = np.linspace(0, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    gray = np.asarray(to_gray8(Image.fromarray(ramp)))
    assert gray.dtype == np.uint8 and gray.min() == 0 and 200 < gray.max() <= 255
    assert 90 < gray.mean() < 140  # a ramp stays a ramp; clipping would make it mostly white
    rgba = Image.new("RGBA", (20, 20), (255, 255, 255, 0))
    assert np.asarray(to_gray8(rgba)).max() == 0  # fully transparent -> flattened onto black


def test_face_crop_turns_photos_into_training_crops_and_counts_the_rest(params_raw, tmp_path):
    """Real photos shipped by packages: one face, a group, and photos with no face at all."""
    from facephotos import BENCH, PHOTOS  # the detector benchmark's photos and helpers
    from skimage import data as skdata

    root = tmp_path / "photos"
    group, _ = BENCH.tile_row([(PHOTOS[n], (BENCH.PORTRAIT_FACES[n],))
                               for n in ("astronaut", "grace_hopper")])
    photos = {"happy/astronaut.png": PHOTOS["astronaut"], "sad/group.png": group,
              "neutral/coffee.png": skdata.coffee(), "angry/cat.png": skdata.chelsea()}
    for rel, rgb in photos.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / rel)
    params_raw["data"].update(source="folder")
    params_raw["data"]["folder"]["root"] = str(root)
    params_raw["ingest"]["face_crop"] = True
    params_raw["faces"]["multi_face"] = "all"
    with pytest.raises(DataError, match="no accepted images"):  # angry, neutral: no face
        run(Params(params_raw), tmp_path / "all")
    report = json.loads((tmp_path / "all" / "reports" / "ingest.json").read_text())
    assert report["rejected_by_reason"]["no_face"] == 2
    manifest = pd.read_csv(tmp_path / "all" / "interim" / "manifest.csv")
    assert sorted(manifest["id"].str.extract(r"(face\d)$")[0].dropna()) == ["face0", "face1"]
    assert (manifest["label"] == "happy").sum() == 1
    crop = Image.open(manifest.loc[manifest["label"] == "happy", "path"].iat[0])
    assert crop.mode == "L" and abs(crop.width - crop.height) <= 1  # square, like FER crops

    params_raw["faces"]["multi_face"] = "reject"
    with pytest.raises(DataError):
        run(Params(params_raw), tmp_path / "reject")
    report = json.loads((tmp_path / "reject" / "reports" / "ingest.json").read_text())
    assert report["rejected_by_reason"]["multiple_faces"] == 1
