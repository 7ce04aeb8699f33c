"""Several sources in one ingest: label maps, splits, cross-source duplicates, FER+ votes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.ferplus import vote_target
from emorec.ingest import run_ingest
from emorec.split_balance import run_split

CLASSES = ["angry", "fearful", "happy", "neutral", "sad", "surprised"]
FER_MAP = {"neutral": "neutral", "happiness": "happy", "surprise": "surprised",
           "sadness": "sad", "anger": "angry", "disgust": "angry", "fear": "fearful",
           "contempt": None}


def face(seed: int, size: int = 48) -> Image.Image:
    """A distinct random grayscale image: no two seeds are near copies of each other."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def ferplus_tree(root: Path, rows: dict[str, list[tuple[int, list[int]]]]) -> None:
    """FER+ folders: ``{folder: [(seed, 10 votes), ...]}`` as images plus label.csv."""
    for folder, entries in rows.items():
        lines = []
        for seed, votes in entries:
            name = f"fer{seed:07d}.png"
            save(face(seed), root / folder / name)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")


def sources_params(params_raw: dict, sources: list[dict], classes: list[str] = CLASSES
                   ) -> Params:
    params_raw["classes"] = classes
    params_raw["data"]["source"] = "sources"
    params_raw["data"]["sources"] = sources
    return Params(params_raw)


def votes(**counts: int) -> list[int]:
    order = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
             "contempt", "unknown", "NF"]
    return [counts.get(name, 0) for name in order]


# -- FER+ votes ----------------------------------------------------------------------------------
def test_votes_become_a_distribution_without_single_outliers():
    label, raw, dist = vote_target(np.array(votes(neutral=6, sadness=3, anger=1)), FER_MAP,
                                   CLASSES)
    assert (label, raw) == ("neutral", "neutral")
    expected = np.zeros(len(CLASSES))
    expected[CLASSES.index("neutral")], expected[CLASSES.index("sad")] = 6 / 9, 3 / 9
    np.testing.assert_allclose(dist, expected)  # the single anger vote is an outlier


def test_disgust_and_anger_votes_add_up_when_mapped_to_one_class():
    label, _, dist = vote_target(np.array(votes(anger=4, disgust=4, fear=2)), FER_MAP, CLASSES)
    assert label == "angry"
    assert dist[CLASSES.index("angry")] == pytest.approx(0.8)


def test_unknown_not_a_face_and_dropped_emotions_are_reported():
    with pytest.raises(Exception, match="ferplus_unknown"):
        vote_target(np.array(votes(unknown=6, happiness=4)), FER_MAP, CLASSES)
    with pytest.raises(Exception, match="ferplus_not_face"):
        vote_target(np.array(votes(NF=10)), FER_MAP, CLASSES)
    label, raw, dist = vote_target(np.array(votes(contempt=8, neutral=2)), FER_MAP, CLASSES)
    assert (label, raw, dist) == (None, "contempt", None)


# -- ingest of several sources --------------------------------------------------------------------
@pytest.fixture
def two_sources(tmp_path, params_raw):
    fer = tmp_path / "ferplus"
    ferplus_tree(fer, {
        "FER2013Train": [(1, votes(happiness=9, surprise=1)), (2, votes(sadness=5, neutral=5)),
                         (3, votes(unknown=7, anger=3)), (4, votes(NF=10)),
                         (5, votes(contempt=10))],
        "FER2013Valid": [(6, votes(fear=8, surprise=2))],
        "FER2013Test": [(7, votes(anger=10))],
    })
    lab = tmp_path / "lab"
    for k, code in enumerate("abcdg" * 4):  # file names carry the label, as in TFEID
        save(face(100 + k, 64), lab / f"01{k:02d}{code}01.png")
    save(face(7), lab / "0199d01.png")  # the FER+ test face again: the test copy must win
    noisy = np.asarray(face(1), dtype=np.int16) + np.random.default_rng(0).integers(-3, 4,
                                                                                     (48, 48))
    save(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), lab / "0198b01.png")  # near copy
    params = sources_params(params_raw, [
        {"name": "fer", "reader": "ferplus", "path": str(fer), "map": FER_MAP,
         "face_crop": False},
        {"name": "lab", "reader": "folder", "path": str(lab), "split": "stratified",
         "label_pattern": r"^\d{4}([a-g])\d{2}", "face_crop": False,
         "map": {"a": "neutral", "b": "happy", "c": "sad", "d": "angry", "e": "angry",
                 "f": "fearful", "g": "surprised"}},
    ])
    return params, tmp_path


def test_ingest_merges_sources_with_their_maps_splits_and_counts(two_sources):
    params, tmp = two_sources
    report = run_ingest(params, tmp / "interim", tmp / "ingest.json")
    manifest = pd.read_csv(tmp / "interim" / "manifest.csv", keep_default_na=False)
    by_source = report["sources"]

    fer = manifest[manifest["source"] == "fer"]
    assert sorted(fer["usage"]) == ["test", "train", "train", "val"]
    assert by_source["fer"]["rejected_by_reason"] == {
        "ferplus_not_face": 1, "ferplus_unknown": 1, "unknown_label": 1}
    assert by_source["fer"]["offered"] == 7
    happy = fer[fer["label"] == "happy"].iloc[0]
    assert happy["soft"].split() == ["0", "0", "1", "0", "0", "0"]  # the single vote dropped

    lab = manifest[manifest["source"] == "lab"]
    assert set(lab["usage"]) == {""}  # stratified: the split stage draws it
    assert by_source["lab"]["rejected_by_reason"] == {"duplicate": 1, "near_duplicate": 1}
    assert by_source["lab"]["accepted"] == 20
    assert (lab["soft"] == "").all()
    assert len(manifest) == report["accepted"] == 24
    assert all(Path(p).is_file() for p in manifest["path"])
    assert json.loads((tmp / "ingest.json").read_text())["sources"] == by_source


def test_split_keeps_source_splits_and_draws_the_rest(two_sources, params_raw):
    params, tmp = two_sources
    run_ingest(params, tmp / "interim", tmp / "ingest.json")
    params_raw["split"]["ratios"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params_raw["balance"]["strategy"] = "none"
    report = run_split(Params(params_raw), tmp / "interim" / "manifest.csv", tmp / "processed",
                       tmp / "split.json")
    assert report["split"]["strategy"] == "mixed"
    test = pd.read_csv(tmp / "processed" / "test.csv", keep_default_na=False)
    assert "fer-fer0000007" in " ".join(test["origin"])
    assert "soft" in test.columns
    total = sum(report["sizes"].values())
    assert total == 24


@pytest.mark.parametrize("named", [True, False])
def test_a_persons_faces_stay_in_one_split(params_raw, tmp_path, named):
    """person_pattern: every face of one person lands in one split (people split at random when
    their first faces' labels are too few to stratify); without it, people straddle splits."""
    lab = tmp_path / "lab"
    for person in range(8):
        for k, code in enumerate("abcdg"[person % 5:] + "abcdg"[:person % 5]):
            save(face(10 * person + k, 64), lab / f"{person:02d}{k:02d}{code}01.png")
    entry = {"name": "lab", "reader": "folder", "path": str(lab), "split": "stratified",
             "label_pattern": r"^\d{4}([a-g])\d{2}", "face_crop": False,
             "map": {"a": "neutral", "b": "happy", "c": "sad", "d": "angry", "g": "surprised"}}
    if named:
        entry["person_pattern"] = r"^(\d{2})"
    params = sources_params(params_raw, [entry],
                            classes=["angry", "happy", "neutral", "sad", "surprised"])
    run_ingest(params, tmp_path / "interim", tmp_path / "ingest.json")
    manifest = pd.read_csv(tmp_path / "interim" / "manifest.csv", keep_default_na=False)
    assert ("person" in manifest.columns) is named
    raw = params.to_dict()
    raw["split"]["ratios"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    raw["balance"]["strategy"] = "none"
    report = run_split(Params(raw), tmp_path / "interim" / "manifest.csv",
                       tmp_path / "processed", tmp_path / "split.json")
    split_of = {}
    for name in ("train", "val", "test"):
        frame = pd.read_csv(tmp_path / "processed" / f"{name}.csv", keep_default_na=False)
        for origin in frame["origin"]:
            split_of[origin] = name
    splits_per_person = {p: {s for o, s in split_of.items() if o.startswith(f"lab-{p:02d}")}
                         for p in range(8)}
    if named:
        assert all(len(s) == 1 for s in splits_per_person.values()), splits_per_person
        assert report["split"]["people"] == {"people": 8, "people_across_splits": 0}
        assert {s for spl in splits_per_person.values() for s in spl} == {"train", "val", "test"}
    else:
        assert any(len(s) > 1 for s in splits_per_person.values())
        assert "people" not in report["split"]


def test_bad_source_entries_name_the_key(params_raw, tmp_path):
    base = {"name": "x", "reader": "folder", "path": str(tmp_path)}
    for entry, key in [({**base, "reader": "zip"}, "data.sources[0].reader"),
                       ({**base, "map": {"a": "joy"}}, "data.sources[0].map.a"),
                       ({**base, "label_pattern": "("}, "data.sources[0].label_pattern"),
                       ({**base, "person_pattern": r"^\d{2}"},
                        "data.sources[0].person_pattern"),
                       ({**base, "split": "predefined"}, "data.sources[0].usage")]:
        with pytest.raises(ParamsError, match=key.replace("[", r"\[").replace("]", r"\]")):
            run_ingest(sources_params(params_raw, [entry]), tmp_path / "i", tmp_path / "r.json")
    with pytest.raises(ParamsError, match="unique"):
        run_ingest(sources_params(params_raw, [base, base]), tmp_path / "i", tmp_path / "r.json")


def test_service_path_crops_with_fallback_to_the_dataset_image(params_raw, tmp_path):
    """face_crop: fallback crops a photo as the service does and keeps a crop it finds no
    face in as it is, counting it; face_crop: true rejects that one as no_face."""
    from facephotos import PHOTOS

    root = tmp_path / "photos"
    save(Image.fromarray(PHOTOS["astronaut"]), root / "happy" / "astronaut.png")
    save(face(11, 64), root / "sad" / "noise.png")  # no face to find: the dataset's own crop
    entry = {"name": "photos", "reader": "folder", "path": str(root), "split": "stratified",
             "face_crop": "fallback"}
    report = run_ingest(sources_params(params_raw, [entry], ["happy", "sad"]), tmp_path / "i",
                        tmp_path / "r.json")
    stats = report["sources"]["photos"]
    assert stats["accepted"] == 2 and stats["face_fallbacks"] == 1
    manifest = pd.read_csv(tmp_path / "i" / "manifest.csv")
    crop = Image.open(manifest.loc[manifest["label"] == "happy", "path"].iloc[0])
    assert crop.size[0] == crop.size[1] < 200  # the face, square, not the 512 px photo
    kept = Image.open(manifest.loc[manifest["label"] == "sad", "path"].iloc[0])
    assert kept.size == (64, 64)

    entry["face_crop"] = True
    with pytest.raises(Exception, match="no accepted images"):  # sad lost its only image
        run_ingest(sources_params(params_raw, [entry], ["happy", "sad"]), tmp_path / "j",
                   tmp_path / "s.json")
    rejected = json.loads((tmp_path / "s.json").read_text())["sources"]["photos"]
    assert rejected["rejected_by_reason"] == {"no_face": 1}


def test_a_fer2013_source_csv_without_its_columns_is_one_clear_error(params_raw, tmp_path):
    from emorec.errors import DataError

    csv = tmp_path / "fer.csv"
    csv.write_text("label,image\n0,1 2 3\n")
    entry = {"name": "fer", "reader": "fer2013", "path": str(csv), "split": "stratified",
             "map": {"angry": "angry"}}
    with pytest.raises(DataError, match="lacks columns"):
        run_ingest(sources_params(params_raw, [entry]), tmp_path / "i", tmp_path / "r.json")
