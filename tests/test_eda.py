"""EDA numbers and plots on a small real manifest, including planted duplicates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emorec.config import Params
from emorec.eda import run_eda
from emorec.errors import DataError
from emorec.ingest import run_ingest
from emorec.quality import near_duplicate_groups, near_duplicate_pairs, pack_hashes, perceptual_hash


@pytest.fixture
def manifest(params_raw, tmp_path, monkeypatch):
    """36 demo faces ingested into tmp_path; returns the manifest path (cwd = tmp_path)."""
    monkeypatch.chdir(tmp_path)
    params_raw["data"]["demo"]["n_images"] = 36
    run_ingest(Params(params_raw), tmp_path / "interim", tmp_path / "ingest.json")
    return tmp_path / "interim" / "manifest.csv"


def test_report_counts_and_plots(params, manifest, tmp_path):
    report = run_eda(params, manifest, tmp_path / "eda", tmp_path / "eda.json")
    assert json.loads((tmp_path / "eda.json").read_text()) == report
    frame = pd.read_csv(manifest)
    assert report["images"] == 36
    assert {c: v["count"] for c, v in report["per_class"].items()} == \
        frame["label"].value_counts().reindex(params.classes, fill_value=0).to_dict()
    assert sum(v["percent"] for v in report["per_class"].values()) == pytest.approx(100, abs=0.1)
    assert report["modes"] == {"L": 36}
    assert report["size"]["most_common"] == {"32x32": 36}
    blur = report["blur_laplacian_variance"]
    assert 0 < blur["p0"] <= blur["p50"] <= blur["p100"]
    for name in ("class_counts.png", "samples.png", "blur_hist.png"):
        with Image.open(tmp_path / "eda" / name) as img:
            assert img.format == "PNG" and img.width > 300


def test_exact_and_near_duplicates_are_counted(params, manifest, tmp_path):
    frame = pd.read_csv(manifest)
    first = frame.iloc[0]
    with Image.open(first["path"]) as img:
        pixels = np.asarray(img, dtype=np.int16)
    noisy = np.clip(pixels + np.random.default_rng(0).integers(-3, 4, pixels.shape), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "near.png")
    other = "happy" if first["label"] != "happy" else "sad"
    extra = pd.DataFrame([
        {**first.to_dict(), "id": "exact-copy"},  # same file listed twice: exact duplicate
        {**first.to_dict(), "id": "near", "path": str(tmp_path / "near.png"), "sha256": "x",
         "label": other},
    ])
    pd.concat([frame, extra]).to_csv(manifest, index=False)
    report = run_eda(params, manifest, tmp_path / "eda", tmp_path / "eda.json")
    dup = report["duplicates"]
    assert dup["exact_extra_copies"] == 1
    assert dup["near_pairs"] >= 3  # original~copy, original~near, copy~near
    assert dup["near_pairs_cross_label"] >= 2
    assert any(e["b"].endswith("near.png") for e in dup["near_examples"])


def test_vectorised_pairs_match_imagehash_distances():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    images = [base, np.clip(base.astype(int) + 2, 0, 255).astype(np.uint8)]
    images += [rng.integers(0, 256, (32, 32)).astype(np.uint8) for _ in range(30)]
    for size in (8, 16):  # 64 bits: one word; 256 bits: four
        hashes = [perceptual_hash(im, size) for im in images]
        limit = 20 if size == 8 else 90
        expected = {(i, j, hashes[i] - hashes[j]) for i in range(32) for j in range(i + 1, 32)
                    if hashes[i] - hashes[j] <= limit}
        found = near_duplicate_pairs(pack_hashes(hashes), limit, block=7)
        assert {tuple(int(v) for v in row) for row in found} == expected
        assert (0, 1, hashes[0] - hashes[1]) in expected


def test_near_duplicate_groups_join_chains():
    pairs = np.array([[0, 1, 3], [1, 4, 2], [2, 5, 0]])
    groups = near_duplicate_groups(6, pairs)
    assert groups[0] == groups[1] == groups[4] and groups[2] == groups[5]
    assert len({groups[0], groups[2], groups[3]}) == 3


def test_missing_manifest_is_a_clear_error(params, tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        run_eda(params, tmp_path / "nope.csv", tmp_path / "eda", tmp_path / "eda.json")
