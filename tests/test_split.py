"""Stratified split, train-only balancing, class weights and the no-leakage guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emorec.config import Params
from emorec.errors import DataError, ParamsError
from emorec.ingest import run_ingest
from emorec.labels import read_label_map
from emorec.split_balance import (
    check_no_leakage,
    copies_per_image,
    run_split,
    split_ratios,
)
from emorec.split_csv import COLUMNS

N_IMAGES = 120


@pytest.fixture(scope="module")
def interim(tmp_path_factory, repo_params_raw) -> Path:
    """120 demo faces at 32 px, ingested once for the module."""
    root = tmp_path_factory.mktemp("interim")
    raw = json.loads(json.dumps(repo_params_raw))
    raw["image"]["size"] = 32
    raw["data"]["demo"]["n_images"] = N_IMAGES
    run_ingest(Params(raw), root / "data" / "interim", root / "ingest.json")
    return root


def split(params_raw: dict, interim: Path, out: Path, monkeypatch, **balance) -> dict:
    monkeypatch.chdir(interim)  # manifest paths are relative to the repository root
    params_raw["balance"].update(balance)
    return run_split(Params(params_raw), Path("data/interim/manifest.csv"), out,
                     out / "split.json")


def read(out: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(out / f"{name}.csv") for name in ("train", "val", "test")}


def test_oversample_augment_never_leaks_copies_across_splits(params_raw, interim, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "processed"
    report = split(params_raw, interim, out, monkeypatch, strategy="oversample_augment",
                   aug_per_image_limit=2)
    frames = read(out)
    for frame in frames.values():
        assert list(frame.columns) == COLUMNS
    train, val, test = frames["train"], frames["val"], frames["test"]
    augmented = train[train["source"] == "augmented"]
    originals = train[train["source"] != "augmented"]
    assert len(augmented) == report["augmented"]["total"] > 0
    assert set(val["source"]) == set(test["source"]) == {"demo"}  # held-out splits untouched

    # group by origin: every image family lives in exactly one split
    family_splits = pd.concat([f.assign(split=name) for name, f in frames.items()]) \
        .groupby("origin")["split"].nunique()
    assert family_splits.max() == 1
    assert set(augmented["origin"]) <= set(originals["origin"])
    assert not set(train["sha256"]) & (set(val["sha256"]) | set(test["sha256"]))

    # at most `limit` copies per original, each a real, different image on disk
    assert augmented.groupby("origin").size().max() <= 2
    for row in augmented.head(5).itertuples():
        parent = originals.loc[originals["origin"] == row.origin].iloc[0]
        with Image.open(row.path) as a, Image.open(parent["path"]) as b:
            assert a.size == b.size and not np.array_equal(np.asarray(a), np.asarray(b))

    # the largest class is the target; minorities are topped up towards it
    counts = train["label"].value_counts()
    before = report["train_before_balance"]
    for name, n in counts.items():
        assert n == min(max(before.values()), 3 * before[name])
    weights = json.loads((out / "class_weights.json").read_text())
    assert set(weights) == set(params_raw["classes"])
    assert read_label_map(out / "label_map.json") == params_raw["classes"]


def test_split_is_stratified_deterministic_and_seeded(params_raw, interim, tmp_path,
                                                      monkeypatch):
    a = split(params_raw, interim, tmp_path / "a", monkeypatch, strategy="none")
    split(params_raw, interim, tmp_path / "b", monkeypatch, strategy="none")
    params_raw["split"]["seed"] = 7
    c = split(params_raw, interim, tmp_path / "c", monkeypatch, strategy="none")
    assert a["sizes"] == {"train": 84, "val": 18, "test": 18}
    fa, fb, fc = read(tmp_path / "a"), read(tmp_path / "b"), read(tmp_path / "c")
    assert all(fa[s].equals(fb[s]) for s in fa)
    assert not fa["test"]["origin"].equals(fc["test"]["origin"])
    ratios = params_raw["split"]["ratios"]
    for report in (a, c):  # stratified: every split has the class shares of the whole
        per_class = report["per_class"]
        for name in params_raw["classes"]:
            n = sum(per_class[s][name] for s in per_class)
            for s in per_class:
                assert abs(per_class[s][name] - ratios[s] * n) <= 1, (s, name)
    weights = json.loads((tmp_path / "a" / "class_weights.json").read_text())
    assert set(weights.values()) == {1.0}  # strategy none: no reweighting
    assert a["augmented"]["total"] == 0 and not (tmp_path / "a" / "augmented").exists()


def test_class_weights_strategy_is_inverse_frequency(params_raw, interim, tmp_path,
                                                     monkeypatch):
    report = split(params_raw, interim, tmp_path / "w", monkeypatch, strategy="class_weights")
    train = report["per_class"]["train"]
    weights = json.loads((tmp_path / "w" / "class_weights.json").read_text())
    n, k = sum(train.values()), len(train)
    for name, count in train.items():
        assert weights[name] == pytest.approx(n / (k * count), rel=1e-5)
    assert report["augmented"]["total"] == 0
    assert weights["happy"] < 1 < weights["fearful"]


def test_leakage_check_catches_a_shared_origin():
    row = {"path": "p", "label": "happy", "source": "augmented", "origin": "x", "sha256": "s"}
    frames = {"train": pd.DataFrame([row]),
              "test": pd.DataFrame([{**row, "source": "demo", "sha256": "t"}])}
    with pytest.raises(DataError, match="leakage: origin x"):
        check_no_leakage(frames)


def test_copies_are_spread_evenly_and_capped():
    rng = np.random.default_rng(0)
    copies = copies_per_image(10, 25, 2, rng)
    assert copies.sum() == 15 and set(copies) == {1, 2}
    assert copies_per_image(10, 100, 2, rng).tolist() == [2] * 10  # capped
    assert copies_per_image(10, 5, 2, rng).sum() == 0  # already the largest class


@pytest.mark.parametrize("ratios", [{"train": 0.7, "val": 0.2, "test": 0.2},
                                    {"train": 0.9, "val": 0.1}])
def test_bad_ratios_name_the_key(params_raw, ratios):
    params_raw["split"]["ratios"] = ratios
    with pytest.raises(ParamsError, match="'split.ratios'"):
        split_ratios(Params(params_raw))


def test_source_repeat_lists_a_sources_train_images_k_times(params_raw, interim, tmp_path,
                                                            monkeypatch):
    """Only train grows, by exact repeats of that source's rows; val and test are untouched."""
    plain = split(params_raw, interim, tmp_path / "plain", monkeypatch, strategy="none")
    source = pd.read_csv(tmp_path / "plain" / "train.csv")["source"].iloc[0]
    report = split(params_raw, interim, tmp_path / "rep", monkeypatch, strategy="none",
                   source_repeat={source: 3})
    before, after = read(tmp_path / "plain"), read(tmp_path / "rep")
    assert report["sizes"]["train"] == 3 * plain["sizes"]["train"]
    assert report["source_repeat"][source] == {"factor": 3, "train_images": len(before["train"]),
                                               "added": 2 * len(before["train"])}
    assert (after["train"]["path"].value_counts() == 3).all()
    for name in ("val", "test"):
        pd.testing.assert_frame_equal(before[name], after[name])


@pytest.mark.parametrize("repeat, message", [({"nowhere": 2}, "no manifest row comes from"),
                                             ({"demo": 0}, "integers >= 1"),
                                             ([2], "mapping")])
def test_bad_source_repeat_names_the_key(params_raw, interim, tmp_path, monkeypatch, repeat,
                                         message):
    with pytest.raises(ParamsError, match=f"balance.source_repeat.*{message}"):
        split(params_raw, interim, tmp_path / "bad", monkeypatch, source_repeat=repeat)
    assert not (tmp_path / "bad").exists()
