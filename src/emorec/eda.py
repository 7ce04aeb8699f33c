"""Exploratory data analysis of the ingested images: numbers in ``reports/eda.json``, PNG plots.

What it answers before any training: is the class balance what we expect, are the images the
size and mode we think, how many are blurry (Laplacian variance, :mod:`emorec.quality`), and how
many are exact or near duplicates (perceptual hash within ``eda.near_duplicate_distance`` bits)?
Near duplicates that carry *different* labels are counted separately: they are label noise, and
near duplicates split across train and test inflate test scores.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from emorec.config import Params
from emorec.imageio import read_gray
from emorec.ingest import read_manifest
from emorec.plots import image_rows_png, save_figure
from emorec.quality import (
    laplacian_variance,
    near_duplicate_pairs,
    pack_hashes,
    perceptual_hash,
)

_PERCENTILES = (0, 5, 25, 50, 75, 95, 100)


def distribution(values: np.ndarray) -> dict[str, float]:
    """Mean, std and percentiles, the shape of a distribution in a few numbers."""
    values = np.asarray(values, dtype=np.float64)
    stats = {"mean": float(values.mean()), "std": float(values.std())}
    stats.update({f"p{q}": float(v) for q, v in zip(_PERCENTILES,
                                                     np.percentile(values, _PERCENTILES),
                                                     strict=True)})
    return stats


def analyse(frame: pd.DataFrame, classes: list[str], near_distance: int, hash_size: int = 8
            ) -> tuple[dict[str, Any], np.ndarray]:
    """The EDA report for a manifest, plus the blur value of every image (for the histogram)."""
    blur = np.empty(len(frame))
    hashes = []
    for k, path in enumerate(tqdm(frame["path"], desc="eda", unit="img", mininterval=2)):
        gray = read_gray(path)
        blur[k] = laplacian_variance(gray)
        hashes.append(perceptual_hash(gray, hash_size))

    counts = Counter(frame["label"])
    total = len(frame)
    pairs = [tuple(int(v) for v in row)
             for row in near_duplicate_pairs(pack_hashes(hashes), near_distance)]
    labels = frame["label"].to_numpy()
    in_pair = {i for i, j, _ in pairs} | {j for i, j, _ in pairs}
    sha_counts = frame["sha256"].value_counts()
    sizes = frame["width"].astype(str) + "x" + frame["height"].astype(str)
    report = {
        "images": total,
        "per_class": {c: {"count": int(counts.get(c, 0)),
                          "percent": round(100.0 * counts.get(c, 0) / total, 2)} for c in classes},
        "imbalance_ratio": round(max(counts.values()) / max(1, min(counts.values())), 3),
        "sources": {k: int(v) for k, v in frame["source"].value_counts().items()},
        "modes": {k: int(v) for k, v in frame["mode"].value_counts().items()},
        "size": {
            "width": distribution(frame["width"].to_numpy()),
            "height": distribution(frame["height"].to_numpy()),
            "most_common": {k: int(v) for k, v in sizes.value_counts().head(10).items()},
        },
        "blur_laplacian_variance": distribution(blur),
        "duplicates": {
            "exact_extra_copies": int((sha_counts - 1).sum()),
            "near_distance": near_distance,
            "hash_bits": hash_size * hash_size,
            "near_pairs": len(pairs),
            "near_images": len(in_pair),
            "near_pairs_cross_label": int(sum(labels[i] != labels[j] for i, j, _ in pairs)),
            "near_examples": [
                {"a": frame["path"].iat[i], "b": frame["path"].iat[j], "hamming": d}
                for i, j, d in pairs[:20]],
        },
    }
    return report, blur


# -- plots (matplotlib's object-oriented API via emorec.plots: no pyplot, no display) ---------
def plot_class_counts(report: dict[str, Any], path: Path) -> None:
    names = list(report["per_class"])
    counts = [report["per_class"][c]["count"] for c in names]
    fig = Figure(figsize=(7, 4), layout="tight")
    ax = fig.add_subplot()
    bars = ax.bar(names, counts, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{report['per_class'][c]['percent']}%" for c in names])
    ax.set_ylabel("images")
    ax.set_title(f"Images per class (n={report['images']})")
    save_figure(fig, path, dpi=100)


def plot_blur_histogram(blur: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(7, 4), layout="tight")
    ax = fig.add_subplot()
    ax.hist(blur, bins=50, color="#55a868")
    ax.set_xlabel("Laplacian variance (low = blurry)")
    ax.set_ylabel("images")
    ax.set_title("Sharpness distribution")
    save_figure(fig, path, dpi=100)


def plot_sample_grid(frame: pd.DataFrame, classes: list[str], per_class: int, seed: int,
                     path: Path) -> None:
    """A row of randomly chosen (seeded) images for every class."""
    rng = np.random.default_rng(seed)
    rows = []
    for name in classes:
        paths = frame.loc[frame["label"] == name, "path"].to_numpy()
        chosen = rng.choice(paths, size=min(per_class, len(paths)), replace=False)
        rows.append((name, [read_gray(p) for p in chosen]))
    image_rows_png(rows, path, ncols=per_class, dpi=100)


def run_eda(params: Params, manifest: Path, plots_dir: Path, report_path: Path) -> dict[str, Any]:
    """Analyse the manifest, write the JSON report and the plots; return the report."""
    classes = params.classes
    eda = params.section("eda")
    hash_size = eda.integer("phash_size", low=4, high=64)
    near = eda.integer("near_duplicate_distance", low=0, high=hash_size * hash_size)
    per_class = eda.integer("samples_per_class", low=1, high=32)
    frame = read_manifest(manifest, classes)
    report, blur = analyse(frame, classes, near, hash_size)

    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_class_counts(report, plots_dir / "class_counts.png")
    plot_sample_grid(frame, classes, per_class, params.seed, plots_dir / "samples.png")
    plot_blur_histogram(blur, plots_dir / "blur_hist.png")
    report["plots"] = sorted(p.as_posix() for p in plots_dir.glob("*.png"))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
