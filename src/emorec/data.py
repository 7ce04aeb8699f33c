"""A torch ``Dataset`` over the split CSVs (schema and readers: :mod:`emorec.splits`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from emorec.transforms import Preprocess


class FaceDataset(Dataset):
    """Images of one split as ``(tensor [1, S, S], class index)``.

    ``augment`` adds a random horizontal flip: faces are left-right symmetric in expression, and
    a flip costs nothing, unlike the heavier offline augmentation of the balance stage.
    """
    def __init__(self, frame: pd.DataFrame, classes: list[str], preprocess: Preprocess,
                 root: str | Path = ".", augment: bool = False, seed: int = 0):
        self.paths = [Path(root) / p for p in frame["path"]]
        index = {c: i for i, c in enumerate(classes)}
        self.targets = np.array([index[label] for label in frame["label"]], dtype=np.int64)
        self.preprocess = preprocess
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            x = self.preprocess(img)
        if self.augment and self.rng.random() < 0.5:
            x = x[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(x)), int(self.targets[i])
