"""Both label views of the FER2013 faces (emorec.two_view): the content join and mixed targets."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_sources import FER_MAP, save, sources_params, votes

from emorec.errors import ParamsError
from emorec.ingest import run_ingest
from emorec.two_view import join_views, match_faces

CLASSES = ["angry", "fearful", "happy", "neutral", "sad", "surprised"]
FER2013_MAP = {"angry": "angry", "disgust": "angry", "fear": "fearful", "happy": "happy",
               "sad": "sad", "surprise": "surprised", "neutral": "neutral"}


def smooth_face(seed: int) -> np.ndarray:
    """A 48 px face-like image: smooth, as faces are, so JPEG keeps it close."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return np.asarray(coarse.resize((48, 48), Image.BICUBIC))


def as_jpeg(pixels: np.ndarray, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decoded_jpeg(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(as_jpeg(pixels))).convert("L"))


def test_each_face_finds_its_lossy_copy_and_doubtful_ones_keep_no_label():
    ferplus = np.stack([smooth_face(s) for s in range(6)])
    # FER2013's copies: JPEG-compressed, in another order; face 4 twice with two labels (as
    # FER2013 holds some faces twice), face 5 not at all
    order = [3, 0, 4, 2, 1, 4]
    labels = ["sad", "fear", "happy", "angry", "neutral", "surprise"]
    fer2013 = np.stack([decoded_jpeg(ferplus[i]) for i in order])
    found, counts = match_faces(ferplus, fer2013, labels, max_mae=8.0)
    assert found == ["fear", "neutral", "angry", "sad", None, None]
    assert counts == {"matched": 4, "ambiguous": 1, "unmatched": 1}


def test_a_strict_threshold_refuses_lossy_copies():
    ferplus = np.stack([smooth_face(s) for s in range(3)])
    fer2013 = np.stack([decoded_jpeg(f) for f in ferplus])
    found, counts = match_faces(ferplus, fer2013, ["sad", "fear", "happy"], max_mae=0.0)
    assert found == [None, None, None] and counts["unmatched"] == 3


def write_releases(root, faces: dict[int, tuple[list[int], str | None]]) -> None:
    """FER+ (PNG, by row) and Kaggle's FER2013 folders (JPEG, random names) of the same faces:
    ``{seed: (FER+ votes, FER2013 label or None when Kaggle lacks the face)}``."""
    lines, rng = [], np.random.default_rng(0)
    for seed, (vote, label) in faces.items():
        name = f"fer{seed:07d}.png"
        save(Image.fromarray(smooth_face(seed)), root / "ferplus" / "FER2013Train" / name)
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, vote)))
        if label is not None:
            path = root / "fer2013" / "train" / label / f"Training_{rng.integers(10**8)}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(as_jpeg(smooth_face(seed)))
    (root / "ferplus" / "FER2013Train" / "label.csv").write_text("\n".join(lines) + "\n")


#: faces whose views agree, so that every class has an image (ingest refuses empty classes)
AGREEING = {11: (votes(anger=10), "angry"), 12: (votes(sadness=10), "sad"),
            13: (votes(surprise=10), "surprise")}


def view(root, weight: float = 0.5, **extra) -> dict:
    return {"path": str(root / "fer2013"), "weight": weight, "max_mae": 8,
            "map": FER2013_MAP, **extra}


def test_ingest_mixes_fer2013s_label_into_the_votes_and_counts_the_join(params_raw, tmp_path):
    write_releases(tmp_path, {1: (votes(happiness=10), "sad"),      # the views disagree
                              2: (votes(neutral=10), "neutral"),    # they agree
                              3: (votes(fear=10), None),            # Kaggle lacks it
                              **AGREEING})
    params = sources_params(params_raw, [
        {"name": "fer", "reader": "ferplus", "path": str(tmp_path / "ferplus"), "map": FER_MAP,
         "face_crop": False, "fer2013_view": view(tmp_path)}])
    report = run_ingest(params, tmp_path / "interim", tmp_path / "ingest.json")
    manifest = pd.read_csv(tmp_path / "interim" / "manifest.csv", keep_default_na=False)
    soft = {row.label: np.array(row.soft.split(), float) for row in manifest.itertuples()}
    idx = CLASSES.index
    assert soft["happy"][idx("happy")] == pytest.approx(0.5)
    assert soft["happy"][idx("sad")] == pytest.approx(0.5)
    assert soft["neutral"][idx("neutral")] == pytest.approx(1.0)
    assert soft["fearful"][idx("fearful")] == pytest.approx(1.0)  # no second label: votes only
    counts = report["sources"]["fer"]["fer2013_view"]
    assert (counts["matched"], counts["unmatched"], counts["ambiguous"]) == (5, 1, 0)
    assert json.loads((tmp_path / "ingest.json").read_text())["sources"]["fer"][
        "fer2013_view"] == counts


def test_weight_zero_leaves_the_votes_as_they_were(params_raw, tmp_path):
    write_releases(tmp_path, {1: (votes(happiness=10), "sad"), 2: (votes(fear=10), "fear"),
                              3: (votes(neutral=10), "neutral"), **AGREEING})
    params = sources_params(params_raw, [
        {"name": "fer", "reader": "ferplus", "path": str(tmp_path / "ferplus"), "map": FER_MAP,
         "face_crop": False, "fer2013_view": view(tmp_path, weight=0.0)}])
    run_ingest(params, tmp_path / "interim", tmp_path / "ingest.json")
    manifest = pd.read_csv(tmp_path / "interim" / "manifest.csv", keep_default_na=False)
    happy = manifest[manifest["label"] == "happy"]
    assert happy["soft"].iloc[0].split() == ["0", "0", "1", "0", "0", "0"]


def test_join_matches_within_usage_only(tmp_path):
    write_releases(tmp_path, {1: (votes(happiness=10), "sad")})
    # the same face under PublicTest must not give a FER2013Train face its label
    kaggle = tmp_path / "fer2013"
    (kaggle / "train" / "sad").rename(kaggle / "train" / "sad_")
    (kaggle / "test" / "sad").mkdir(parents=True)
    for jpg in (kaggle / "train" / "sad_").iterdir():
        jpg.rename(kaggle / "test" / "sad" / jpg.name.replace("Training", "PublicTest"))
    join = join_views(kaggle, tmp_path / "ferplus", ["FER2013Train"], 8.0)
    assert join.labels == {} and join.report()["unmatched"] == 1


@pytest.mark.parametrize("entry, key", [
    ({"reader": "folder"}, "fer2013_view"),
    ({"fer2013_view": "data/raw/fer2013"}, "fer2013_view"),
    ({"weight": 1.5}, "fer2013_view.weight"),
    ({"map": {"fear": "terror"}}, "fer2013_view.map.fear"),
])
def test_bad_second_views_name_the_key(params_raw, tmp_path, entry, key):
    write_releases(tmp_path, {1: (votes(happiness=10), "sad")})
    good = view(tmp_path)
    source = {"name": "fer", "reader": "ferplus", "path": str(tmp_path / "ferplus"),
              "map": FER_MAP, "fer2013_view": good}
    if "reader" in entry or "fer2013_view" in entry:
        source.update(entry)
    else:
        source["fer2013_view"] = {**good, **entry}
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        run_ingest(sources_params(params_raw, [source]), tmp_path / "i", tmp_path / "r.json")
