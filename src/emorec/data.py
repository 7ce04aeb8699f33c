"""A torch ``Dataset`` over the split CSVs (schema and readers: :mod:`emorec.split_csv`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from emorec.errors import DataError
from emorec.transforms import Preprocess


def soft_targets(frame: pd.DataFrame, classes: list[str], smoothing: float = 0.0
                 ) -> np.ndarray | None:
    """``[N, C]`` training targets when some rows carry label distributions (``soft``).

    Rows with a distribution (FER+ votes) use it as it is: the taggers' disagreement already
    says how sure a label is. Rows with a label alone get the label-smoothed one-hot that a
    hard label gets in training. ``None`` when no row has a distribution.
    """
    if "soft" not in frame.columns:
        return None
    texts = frame["soft"]
    if not any(isinstance(t, str) and t.strip() for t in texts):
        return None
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    out = np.full((len(frame), k), smoothing / k, dtype=np.float32)
    for row, (label, text) in enumerate(zip(frame["label"], texts, strict=True)):
        if isinstance(text, str) and text.strip():
            values = np.array(text.split(), dtype=np.float32)
            if values.size != k or values.min() < 0 or values.sum() <= 0:
                raise DataError(f"row {row + 2}: soft label {text!r} is not a distribution over "
                                f"the {k} classes {classes}")
            out[row] = values / values.sum()
        else:
            out[row, index[label]] += 1.0 - smoothing
    return out


def label_targets(frame: pd.DataFrame, classes: list[str], smoothing: float = 0.0
                  ) -> np.ndarray:
    """``[N, C]`` targets of every row: :func:`soft_targets` when rows carry distributions,
    else the label-smoothed one-hot of each label (what distillation blends with)."""
    soft = soft_targets(frame, classes, smoothing)
    if soft is not None:
        return soft
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    out = np.full((len(frame), k), smoothing / k, dtype=np.float32)
    out[np.arange(len(frame)), [index[label] for label in frame["label"]]] += 1.0 - smoothing
    return out


class FaceDataset(Dataset):
    """Images of one split as ``(tensor [1, S, S], class index)``, or ``(tensor, [C] target)``
    when ``soft`` (see :func:`soft_targets`) is given.

    ``augment`` adds a random horizontal flip: faces are left-right symmetric in expression, and
    a flip costs nothing, unlike the heavier offline augmentation of the balance stage.
    """
    def __init__(self, frame: pd.DataFrame, classes: list[str], preprocess: Preprocess,
                 root: str | Path = ".", augment: bool = False, seed: int = 0,
                 soft: np.ndarray | None = None):
        self.paths = [Path(root) / p for p in frame["path"]]
        index = {c: i for i, c in enumerate(classes)}
        self.targets = np.array([index[label] for label in frame["label"]], dtype=np.int64)
        self.soft = soft
        self.preprocess = preprocess
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        with Image.open(self.paths[i]) as img:
            x = self.preprocess(img)
        if self.augment and self.rng.random() < 0.5:
            x = x[:, :, ::-1]
        target = int(self.targets[i]) if self.soft is None else torch.from_numpy(self.soft[i])
        return torch.from_numpy(np.ascontiguousarray(x)), target
