"""The dataset's own split (FER2013 Usage) and near-duplicate-aware stratified splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emorec.config import Params
from emorec.errors import DataError
from emorec.ingest import run_ingest
from emorec.split_balance import run_split

CODES = {"angry": 0, "fearful": 2, "happy": 3, "sad": 4, "surprised": 5, "neutral": 6}


def face(seed: int) -> np.ndarray:
    """A 48x48 random texture, distinct per seed (pHash far apart)."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (12, 12)), np.ones((4, 4))).astype(np.uint8)


def pixels(image: np.ndarray) -> str:
    return " ".join(str(v) for v in image.ravel())


def fer_csv(path: Path, per_usage: dict[str, int], extra: list[tuple[int, str, np.ndarray]]
            ) -> Path:
    """``per_usage[u]`` rows per class for each Usage, plus ``extra`` (code, usage, image)."""
    rows, seed = [], 0
    for usage, n in per_usage.items():
        for code in CODES.values():
            for _ in range(n):
                seed += 1
                rows.append((code, pixels(face(seed)), usage))
    rows += [(code, pixels(image), usage) for code, usage, image in extra]
    pd.DataFrame(rows, columns=["emotion", "pixels", "Usage"]).to_csv(path, index=False)
    return path


def ingest_and_split(params_raw: dict, csv: Path, root: Path, monkeypatch, **split) -> dict:
    monkeypatch.chdir(root)
    params_raw["data"]["source"] = "fer2013"
    params_raw["data"]["fer2013"]["path"] = str(csv)
    params_raw["balance"]["strategy"] = "none"
    params_raw["split"].update(split)
    params = Params(params_raw)
    run_ingest(params, Path("data/interim"), Path("reports/ingest.json"))
    return run_split(params, Path("data/interim/manifest.csv"), Path("data/processed"),
                     Path("reports/split.json"))


def test_predefined_split_follows_usage_and_counts_crossing_near_duplicates(
        params_raw, tmp_path, monkeypatch):
    copy = face(999)
    near = copy.copy()
    near[0, 0] ^= 8  # one pixel changed: a near duplicate, not an exact one
    extra = [(3, "PrivateTest", copy), (4, "Training", near)]  # same face, other label
    csv = fer_csv(tmp_path / "fer.csv", {"Training": 4, "PublicTest": 2, "PrivateTest": 2},
                  extra)
    report = ingest_and_split(params_raw, csv, tmp_path, monkeypatch, strategy="auto")
    assert report["split"]["strategy"] == "predefined"
    assert report["sizes"] == {"train": 25, "val": 12, "test": 13}
    manifest = pd.read_csv(tmp_path / "data/interim/manifest.csv")
    usage = dict(zip(manifest["path"], manifest["usage"], strict=True))
    wanted = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    for name, expected in wanted.items():
        frame = pd.read_csv(tmp_path / "data/processed" / f"{name}.csv")
        assert {usage[p] for p in frame["path"]} == {expected}
    near_report = report["split"]["near_duplicates"]
    assert near_report["pairs_crossing_splits"] >= 1
    assert near_report["crossing_by_splits"].get("test-train", 0) >= 1
    assert near_report["crossing_conflicting_labels"] >= 1


def test_predefined_split_refuses_rows_without_usage(params_raw, tmp_path, monkeypatch):
    csv = fer_csv(tmp_path / "fer.csv", {"Training": 2, "PublicTest": 1, "": 1}, [])
    with pytest.raises(DataError, match="usage"):
        ingest_and_split(params_raw, csv, tmp_path, monkeypatch, strategy="predefined")


def test_stratified_split_keeps_near_duplicate_groups_together(params_raw, tmp_path,
                                                                monkeypatch):
    base = [face(500 + k) for k in range(6)]
    extra = []
    for k, image in enumerate(base):  # each face three times, slightly re-noised
        for j in range(3):
            variant = image.copy()
            variant[j, j] ^= 4
            extra.append((list(CODES.values())[k], "", variant))
    csv = fer_csv(tmp_path / "fer.csv", {"": 10}, extra)
    report = ingest_and_split(params_raw, csv, tmp_path, monkeypatch, strategy="auto")
    assert report["split"]["strategy"] == "stratified"
    assert report["split"]["near_duplicate_groups"] >= 6
    assert report["split"]["near_duplicates"]["pairs_crossing_splits"] == 0
    owner = {}
    for name in ("train", "val", "test"):
        for path in pd.read_csv(tmp_path / "data/processed" / f"{name}.csv")["path"]:
            owner[path] = name
    gray = {p: np.asarray(Image.open(tmp_path / p)) for p in owner}
    for image in base:  # all copies of one face sit in one split
        homes = {owner[p] for p, g in gray.items() if (g != image).sum() <= 3}
        assert len(homes) == 1
    assert json.loads((tmp_path / "reports/split.json").read_text())["sizes"]["test"] > 0
