"""A tiny, learnable dataset in the data stages' layout, for the train/evaluate/DDP tests.

Each class is a bright horizontal bar at its own height on a noisy dark background (position
jittered by a pixel or two), so a small CNN separates the classes within a few epochs and
"the model learns" is a meaningful assertion without the real data stages.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

CLASSES = ["angry", "happy", "sad"]
SIZE = 32


def bar_image(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    img = rng.normal(40, 12, (size, size))
    row = int(size * (label + 1) / (len(CLASSES) + 1)) + int(rng.integers(-1, 2))
    start = int(rng.integers(2, 8))
    img[row - 2:row + 2, start:size - start] = 220
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write images and the split CSVs under ``root``; returns ``root``."""
    per_class = per_class or {"train": 16, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {split: [] for split in per_class}
    for split, n in per_class.items():
        for k, name in enumerate(CLASSES):
            folder = root / "data" / "interim" / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ident = f"{split}-{name}-{i}"
                rel = f"data/interim/images/{name}/{ident}.png"
                Image.fromarray(bar_image(k, rng)).save(root / rel)
                rows[split].append({"path": rel, "label": name, "source": "demo",
                                    "origin": ident, "sha256": ident})
    processed = root / "data" / "processed"
    synth = root / "data" / "synth"
    processed.mkdir(parents=True, exist_ok=True)
    synth.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows["train"]).to_csv(synth / "train.csv", index=False)
    for split in ("val", "test"):
        pd.DataFrame(rows[split]).to_csv(processed / f"{split}.csv", index=False)
    (processed / "label_map.json").write_text(json.dumps({c: i for i, c in enumerate(CLASSES)}))
    (processed / "class_weights.json").write_text(json.dumps({c: 1.0 for c in CLASSES}))
    return root


def tiny_params(repo_params: dict, **train_overrides) -> dict:
    """The repo's params with the tiny data's classes/size and a fast, tiny model."""
    raw = copy.deepcopy(repo_params)
    raw["classes"] = list(CLASSES)
    raw["image"]["size"] = SIZE
    raw["train"].update({
        "model": "test_resnet", "epochs": 3, "batch_size": 16, "freeze_backbone_epochs": 1,
        "lr_head": 1.0e-2, "lr_backbone": 1.0e-2, "warmup_epochs": 0, "ema_decay": 0.9,
        "early_stopping_patience": 0,
    })
    raw["train"].update(train_overrides)
    raw["evaluate"]["worst_k"] = 4
    return raw


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
