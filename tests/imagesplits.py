"""Tiny structured grayscale images in split-CSV layout, for the export/quantize/service tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def face_like(rng: np.random.Generator, size: int) -> Image.Image:
    """A grayscale image with some structure (a blob on a gradient) plus noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) * rng.uniform(60, 160)
    pixels = 40 + 80 * xx + blob + rng.normal(0, 12, (size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def make_split(root: Path, classes: list[str], counts: dict[str, int], seed: int = 0
               ) -> dict[str, Path]:
    """Tiny PNGs under ``root/images`` and split CSVs (paths relative to ``root``)."""
    rng = np.random.default_rng(seed)
    csvs = {}
    for split, n in counts.items():
        rows = []
        for i in range(n):
            label = classes[i % len(classes)]
            rel = Path("images") / split / f"{split}_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            face_like(rng, int(rng.integers(40, 90))).save(root / rel)
            rows.append({"path": rel.as_posix(), "label": label, "source": "demo",
                         "origin": f"{split}_{i:03d}", "sha256": "0" * 64})
        csvs[split] = root / f"{split}.csv"
        pd.DataFrame(rows).to_csv(csvs[split], index=False)
    return csvs
