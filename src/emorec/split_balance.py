"""Split + balance: manifest -> train/val/test CSVs, then balancing of train only.

``split.strategy``:

* ``predefined`` - the dataset's own split from the manifest's ``usage`` column (FER2013's
  Training / PublicTest / PrivateTest), mapped by ``split.predefined``. Published results are
  measured on that test split, so it is kept as is; near duplicates that cross it (and those
  whose labels disagree) are counted in the report, not moved.
* ``stratified`` - a seeded split with the class proportions of the data in every part. Images
  within ``eda.near_duplicate_distance`` bits of each other (pHash, ``eda.phash_size``) form one
  group (connected components) and go to one split together, so a re-encoded copy of a test face
  cannot sit in train. So do the faces of one person, where a source names them (the manifest's
  ``person``, from ``person_pattern``): a val split of people the model trained on would reward
  learning those people, not reading faces.
* ``auto`` - ``predefined`` when every manifest row has a ``usage``, else ``stratified``.

Order matters for leakage: the split is made on *original* images first, and only then are
augmented copies made, from train images, into train. Every row carries ``origin`` (the id of the
original image), so "no augmented copy crosses splits" is a checkable property
(:func:`check_no_leakage`), verified on every run.

``balance.strategy``:

* ``none`` - train as split; ``class_weights.json`` holds 1.0 for every class.
* ``oversample_augment`` - minority classes of train are topped up towards the largest class with
  augmented copies (:mod:`emorec.augment`), at most ``balance.aug_per_image_limit`` copies per
  original, spread evenly over the class's images. ``class_weights.json`` then holds the
  inverse-frequency ("balanced") weights of the *balanced* train set: 1.0 where the top-up
  reached the target, above 1 where the per-image limit stopped it short.
* ``class_weights`` - train as split; ``class_weights.json`` holds the balanced inverse-frequency
  weights ``n / (k * n_class)`` for a weighted loss (``train.use_class_weights``).

``balance.source_repeat`` (``{source: k}``, applied before the class strategy) lists each train
image of a source ``k`` times: a small source of faces unlike the large one (a few hundred posed
studio portraits beside tens of thousands of web crops) then weighs ``k`` times as much in every
epoch. The repeats are the same file; the trainer's per-image augmentation makes each view differ.
A source with no train images (held out) repeats nothing; a name no manifest row has is an error.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight
from tqdm import tqdm

from emorec.augment import augment, build_pipeline
from emorec.config import Params
from emorec.errors import DataError, ParamsError
from emorec.imageio import read_gray
from emorec.ingest import png_bytes, read_manifest, sha256_hex
from emorec.labels import write_label_map
from emorec.quality import (
    near_duplicate_groups,
    near_duplicate_pairs,
    pack_hashes,
    perceptual_hash,
)
from emorec.split_csv import COLUMNS, split_columns

SPLITS = ("train", "val", "test")
SPLIT_STRATEGIES = ("auto", "stratified", "predefined")
STRATEGIES = ("none", "oversample_augment", "class_weights")
_RETRIES = 5  # redraws when an augmented copy comes out pixel-identical to its parent


def split_ratios(params: Params) -> dict[str, float]:
    """``split.ratios`` as {train, val, test}, each in (0, 1), summing to 1."""
    raw = params.mapping("split.ratios")
    if set(raw) != set(SPLITS):
        raise ParamsError("split.ratios", f"must have exactly the keys {list(SPLITS)}, "
                                          f"got {sorted(raw)}")
    ratios = {name: params.number(f"split.ratios.{name}", low=0) for name in SPLITS}
    for name, value in ratios.items():
        if not 0 < value < 1:
            raise ParamsError(f"split.ratios.{name}", f"must be between 0 and 1, got {value}")
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ParamsError("split.ratios", f"must sum to 1, got {total:g}")
    return ratios


def to_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows in the split CSV layout; an original is its own origin."""
    rows = manifest.rename(columns={"id": "origin"})
    return rows[split_columns(rows)].reset_index(drop=True)


def usage_column(manifest: pd.DataFrame) -> pd.Series | None:
    """The manifest's ``usage`` as strings ("" where a source gave none), or None if absent."""
    if "usage" not in manifest:
        return None
    usage = manifest["usage"]
    return usage.astype(object).where(usage.notna(), "").astype(str)


def split_strategy(params: Params, manifest: pd.DataFrame) -> str:
    """The strategy in force. ``auto`` becomes ``predefined`` when every row has a usage,
    ``mixed`` when only some do (several sources, some with a split of their own), else
    ``stratified``."""
    strategy = params.choice("split.strategy", SPLIT_STRATEGIES)
    if strategy != "auto":
        return strategy
    usage = usage_column(manifest)
    if usage is None or (usage == "").all():
        return "stratified"
    return "predefined" if (usage != "").all() else "mixed"


def predefined_split(manifest: pd.DataFrame, rows: pd.DataFrame, mapping: dict[str, str],
                     require_all: bool = True) -> dict[str, pd.DataFrame]:
    """The dataset's own split: each row goes where ``mapping[usage]`` says.

    A usage that already is a split name (``train``, ``val``, ``test``: what multi-source ingest
    writes) maps to itself.
    """
    usage = usage_column(manifest)
    if usage is None:
        raise DataError("split.strategy is predefined but the manifest has no usage column "
                        "(this source has no split of its own; use stratified)")
    mapping = {**{name: name for name in SPLITS}, **mapping}
    unmapped = Counter(u for u in usage if u not in mapping)
    if unmapped:
        raise DataError(f"split.predefined maps {sorted(mapping)}, but the manifest has rows with "
                        f"usage {dict(unmapped)} (empty = none given)")
    target = usage.map(mapping).to_numpy()
    splits = {name: rows[target == name].sort_values("origin").reset_index(drop=True)
              for name in SPLITS}
    empty = [name for name, frame in splits.items() if frame.empty]
    if empty and require_all:
        raise DataError(f"predefined split leaves {empty} empty; split.predefined is {mapping}")
    return splits


def person_links(manifest: pd.DataFrame) -> np.ndarray:
    """``[N, 2]`` row pairs joining every face of a person (the manifest's ``person``) to the
    first one: edges that :func:`near_duplicate_groups` turns into one group per person."""
    if "person" not in manifest:
        return np.empty((0, 2), dtype=int)
    person = manifest["person"].astype(object).where(manifest["person"].notna(), "").astype(str)
    first: dict[str, int] = {}
    links = [(first.setdefault(p, k), k) for k, p in enumerate(person) if p]
    return np.array([(a, b) for a, b in links if a != b], dtype=int).reshape(-1, 2)


def people_across_splits(manifest: pd.DataFrame, split_of: np.ndarray) -> dict[str, int]:
    """How many people a source names, and how many of them sit in more than one split."""
    if "person" not in manifest:
        return {"people": 0, "people_across_splits": 0}
    frame = pd.DataFrame({"person": manifest["person"].fillna("").astype(str).to_numpy(),
                          "split": split_of})
    frame = frame[frame["person"] != ""]
    spread = frame.groupby("person")["split"].nunique()
    return {"people": int(len(spread)), "people_across_splits": int((spread > 1).sum())}


def mixed_split(manifest: pd.DataFrame, rows: pd.DataFrame, mapping: dict[str, str],
                ratios: dict[str, float], seed: int, pairs: np.ndarray
                ) -> dict[str, pd.DataFrame]:
    """Rows with a usage keep their split; the others get a stratified one, near-duplicate
    groups (and people, ``pairs`` holds both) kept together."""
    has = (usage_column(manifest) != "").to_numpy()
    fixed = predefined_split(manifest[has], rows[has], mapping, require_all=False)
    free = rows[~has].reset_index(drop=True)
    position = np.full(len(rows), -1)
    position[~has] = np.arange(len(free))
    inside = pairs[(~has[pairs[:, 0]]) & (~has[pairs[:, 1]])] if len(pairs) else pairs
    groups = near_duplicate_groups(len(free), position[inside[:, :2]] if len(inside) else inside)
    drawn = stratified_split(free, ratios, seed, groups, people="person" in manifest)
    splits = {name: pd.concat([fixed[name], drawn[name]]).sort_values("origin")
              .reset_index(drop=True) for name in SPLITS}
    empty = [name for name, frame in splits.items() if frame.empty]
    if empty:
        raise DataError(f"the split leaves {empty} empty")
    return splits


def stratified_split(rows: pd.DataFrame, ratios: dict[str, float], seed: int,
                     groups: np.ndarray | None = None, people: bool = False
                     ) -> dict[str, pd.DataFrame]:
    """Train/val/test with the class proportions of ``rows`` in each (two sklearn splits).

    With ``groups`` (one id per row) the split is made on one representative per group and every
    member follows its representative, so a group never straddles two splits. ``people``: some
    groups are people, each with faces of many classes, so a representative's label says little
    of its group; when too few of them share a label to stratify, the groups are split at random.
    """
    groups = np.arange(len(rows)) if groups is None else np.asarray(groups)
    reps = rows.assign(_group=groups).drop_duplicates("_group")
    held_out = ratios["val"] + ratios["test"]
    try:
        train, rest = _split_part(reps, held_out, seed, people)
        val, test = _split_part(rest, ratios["test"] / held_out, seed, people)
    except ValueError as err:
        counts = dict(Counter(rows["label"]))
        raise DataError(f"cannot make a stratified split of {counts} with ratios {ratios}: {err}"
                        " (each class needs enough images for every split)") from err
    owner = {g: name for name, part in zip(SPLITS, (train, val, test), strict=True)
             for g in part["_group"]}
    target = np.array([owner[g] for g in groups])
    return {name: rows[target == name].sort_values("origin").reset_index(drop=True)
            for name in SPLITS}


def _split_part(reps: pd.DataFrame, share: float, seed: int, people: bool
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One sklearn split of ``reps``, ``share`` of them second; stratified by label, or (only
    when groups are people, see :func:`stratified_split`) at random when that cannot be."""
    try:
        return train_test_split(reps, test_size=share, stratify=reps["label"],
                                random_state=seed)
    except ValueError:
        if not people:
            raise
        return train_test_split(reps, test_size=share, random_state=seed)


def hash_rows(rows: pd.DataFrame, hash_size: int, root: Path = Path(".")) -> np.ndarray:
    """Packed pHash words of every row's image (see :func:`emorec.quality.pack_hashes`)."""
    hashes = [perceptual_hash(read_gray(root / path), hash_size)
              for path in tqdm(rows["path"], desc="phash", unit="img", mininterval=2)]
    return pack_hashes(hashes)


def near_duplicate_report(pairs: np.ndarray, labels: np.ndarray, split_of: np.ndarray,
                          distance: int, hash_bits: int) -> dict[str, Any]:
    """How many near-duplicate pairs there are, how many cross splits, how many disagree."""
    i, j = pairs[:, 0], pairs[:, 1]
    crossing = split_of[i] != split_of[j]
    conflict = labels[i] != labels[j]
    by_pair = Counter(f"{a}-{b}" if a <= b else f"{b}-{a}"
                      for a, b in zip(split_of[i][crossing], split_of[j][crossing], strict=True))
    return {"hash_bits": hash_bits, "distance": distance, "pairs": len(pairs),
            "pairs_conflicting_labels": int(conflict.sum()),
            "pairs_crossing_splits": int(crossing.sum()),
            "crossing_by_splits": dict(sorted(by_pair.items())),
            "crossing_conflicting_labels": int((crossing & conflict).sum())}


def copies_per_image(n_images: int, target: int, limit: int, rng: np.random.Generator
                     ) -> np.ndarray:
    """How many augmented copies each of ``n_images`` originals gets to approach ``target``.

    Spread as evenly as possible (counts differ by at most one, the extra ones on randomly chosen
    images) and never more than ``limit`` per image.
    """
    need = min(max(0, target - n_images), n_images * limit)
    copies = np.full(n_images, need // n_images if n_images else 0, dtype=np.int64)
    extra = rng.choice(n_images, size=need - int(copies.sum()), replace=False)
    copies[extra] += 1
    return copies


def oversample_augment(train: pd.DataFrame, pipeline: Any, limit: int, out_dir: Path,
                       seed: int, root: Path = Path(".")) -> pd.DataFrame:
    """Augmented copies of minority-class train images, written under ``out_dir``; their rows."""
    rng = np.random.default_rng(seed)
    target = int(train["label"].value_counts().max())
    plan: list[tuple[pd.Series, int]] = []
    for _, group in train.groupby("label", sort=True):
        copies = copies_per_image(len(group), target, limit, rng)
        plan.extend((row, int(k)) for (_, row), k in zip(group.iterrows(), copies, strict=True)
                    if k)
    rows = []
    for parent, n in tqdm(plan, desc="augment", unit="img", mininterval=2):
        gray = read_gray(root / parent["path"])
        folder = out_dir / parent["label"]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            data, digest = _distinct_copy(pipeline, gray, parent["sha256"])
            path = folder / f"{parent['origin']}-aug{k}.png"
            path.write_bytes(data)
            rows.append({"path": path.as_posix(), "label": parent["label"],
                         "source": "augmented", "origin": parent["origin"], "sha256": digest})
    return pd.DataFrame(rows, columns=COLUMNS)


def _distinct_copy(pipeline: Any, gray: np.ndarray, parent_sha: str) -> tuple[bytes, str]:
    """PNG bytes and sha256 of an augmented copy; redrawn when every transform was skipped."""
    for _ in range(_RETRIES):
        data = png_bytes(Image.fromarray(augment(pipeline, gray)))
        digest = sha256_hex(data)
        if digest != parent_sha:
            break
    return data, digest


def source_repeats(params: Params, sources: set[str]) -> dict[str, int]:
    """``balance.source_repeat``, validated against the manifest's ``sources``."""
    raw = params.get("balance.source_repeat", None) or {}
    if not isinstance(raw, dict):
        raise ParamsError("balance.source_repeat", f"must be a mapping source -> k, got {raw!r}")
    unknown = sorted(set(raw) - sources)
    if unknown:
        raise ParamsError("balance.source_repeat",
                          f"no manifest row comes from {unknown}; sources are {sorted(sources)}")
    bad = {k: v for k, v in raw.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise ParamsError("balance.source_repeat", f"factors must be integers >= 1, got {bad}")
    return {str(k): int(v) for k, v in raw.items()}


def repeat_sources(train: pd.DataFrame, repeats: dict[str, int]) -> tuple[pd.DataFrame,
                                                                           dict[str, Any]]:
    """``train`` with each row of a source in ``repeats`` listed ``k`` times, and a report."""
    extra, report = [], {}
    for name, k in repeats.items():
        mine = train[train["source"] == name]
        extra += [mine] * (k - 1)
        report[name] = {"factor": k, "train_images": len(mine), "added": len(mine) * (k - 1)}
    if not any(len(e) for e in extra):
        return train, report
    return pd.concat([train, *extra], ignore_index=True), report


def class_weights(train: pd.DataFrame, classes: list[str], strategy: str) -> dict[str, float]:
    """Loss weights per class (see the module docstring for what each strategy writes)."""
    if strategy == "none":
        return {c: 1.0 for c in classes}
    weights = compute_class_weight("balanced", classes=np.array(classes),
                                   y=train["label"].to_numpy())
    return {c: round(float(w), 6) for c, w in zip(classes, weights, strict=True)}


def check_no_leakage(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Raise when an origin (original image or its copies) or exact pixels appear in two splits."""
    owner: dict[str, str] = {}
    sha_owner: dict[str, str] = {}
    for name, frame in splits.items():
        for origin, sha in zip(frame["origin"], frame["sha256"], strict=True):
            if owner.setdefault(origin, name) != name:
                raise DataError(f"leakage: origin {origin} is in both {owner[origin]} and {name}")
            if sha_owner.setdefault(sha, name) != name:
                raise DataError(f"leakage: identical image {sha[:12]} is in both "
                                f"{sha_owner[sha]} and {name}")
    return {"shared_origins": 0, "shared_sha256": 0}


def make_splits(params: Params, manifest: pd.DataFrame) -> tuple[dict[str, pd.DataFrame],
                                                                   dict[str, Any]]:
    """Train/val/test by the strategy in force, and the near-duplicate report."""
    rows = to_rows(manifest)
    how = split_strategy(params, manifest)
    ratios = split_ratios(params) if how in ("stratified", "mixed") else None  # before hashing
    hash_size = params.integer("eda.phash_size", low=2)
    distance = params.integer("eda.near_duplicate_distance", low=0, high=hash_size * hash_size)
    pairs = near_duplicate_pairs(hash_rows(rows, hash_size), distance)
    # what must stay together: near copies, and the faces of one person
    links = np.vstack([pairs[:, :2], person_links(manifest)]).astype(int)
    if how in ("predefined", "mixed"):
        mapping = {str(k): v for k, v in params.mapping("split.predefined").items()}
        bad = {k: v for k, v in mapping.items() if v not in SPLITS}
        if bad:
            raise ParamsError("split.predefined", f"values must be one of {list(SPLITS)}, "
                                                  f"got {bad}")
    if how == "predefined":
        splits = predefined_split(manifest, rows, mapping)
        info: dict[str, Any] = {"strategy": "predefined", "mapping": mapping}
    elif how == "mixed":
        splits = mixed_split(manifest, rows, mapping, ratios, params.integer("split.seed"), links)
        info = {"strategy": "mixed", "mapping": mapping, "ratios": ratios}
    else:
        groups = near_duplicate_groups(len(rows), links)
        splits = stratified_split(rows, ratios, params.integer("split.seed"), groups,
                                  people="person" in manifest)
        info = {"strategy": "stratified", "ratios": ratios,
                "near_duplicate_groups": int(len(groups) - len(np.unique(groups)))}
    split_of = np.empty(len(rows), dtype=object)
    index = {origin: k for k, origin in enumerate(rows["origin"])}
    for name, frame in splits.items():
        split_of[[index[o] for o in frame["origin"]]] = name
    info["near_duplicates"] = near_duplicate_report(pairs, rows["label"].to_numpy(), split_of,
                                                    distance, hash_size * hash_size)
    if "person" in manifest:
        info["people"] = people_across_splits(manifest, split_of)
    return splits, info


def run_split(params: Params, manifest: Path, out_dir: Path, report_path: Path) -> dict[str, Any]:
    """Split, balance, check, write the CSVs, label map, class weights and report."""
    classes = params.classes
    seed = params.integer("split.seed")
    if params.choice("split.strategy", SPLIT_STRATEGIES) != "predefined":
        split_ratios(params)  # a bad value stops the stage before any file is read
    strategy = params.choice("balance.strategy", STRATEGIES)
    if strategy == "oversample_augment":  # validated before any file is read or written
        limit = params.integer("balance.aug_per_image_limit", low=0)
        pipeline = build_pipeline(params.sequence("balance.augment"), seed=seed)
    rows = read_manifest(manifest, classes)
    repeats = source_repeats(params, set(rows["source"]))
    splits, split_info = make_splits(params, rows)
    splits["train"], repeated = repeat_sources(splits["train"], repeats)
    before = Counter(splits["train"]["label"])

    aug_dir = out_dir / "augmented"
    if aug_dir.exists():
        shutil.rmtree(aug_dir)
    augmented = pd.DataFrame(columns=COLUMNS)
    if strategy == "oversample_augment":
        augmented = oversample_augment(splits["train"], pipeline, limit, aug_dir, seed)
        if len(augmented):
            splits["train"] = pd.concat([splits["train"], augmented], ignore_index=True)
    leakage = check_no_leakage(splits)
    weights = class_weights(splits["train"], classes, strategy)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame[split_columns(frame)].to_csv(out_dir / f"{name}.csv", index=False)
    write_label_map(classes, out_dir / "label_map.json")
    (out_dir / "class_weights.json").write_text(json.dumps(weights, indent=2) + "\n")

    aug_counts = Counter(augmented["label"])
    report = {
        "seed": seed,
        "split": split_info,
        "strategy": strategy,
        "sizes": {name: len(frame) for name, frame in splits.items()},
        "per_class": {name: {c: int((frame["label"] == c).sum()) for c in classes}
                      for name, frame in splits.items()},
        "train_before_balance": {c: int(before.get(c, 0)) for c in classes},
        "augmented": {"total": len(augmented),
                      "per_class": {c: int(aug_counts.get(c, 0)) for c in classes}},
        "class_weights": weights,
        "source_repeat": repeated,
        "leakage": leakage,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
