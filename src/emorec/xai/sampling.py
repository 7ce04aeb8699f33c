"""The fixed, seeded sample of test images that the explain stage explains.

Explanations of correct predictions alone flatter a model; the sample deliberately mixes correct
and misclassified images (``explain.misclassified_fraction``), both drawn with ``explain.seed``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from emorec.errors import DataError, ImageError
from emorec.imageio import open_image
from emorec.models import batched_probabilities
from emorec.transforms import Preprocess


@dataclass(frozen=True)
class LoadedSplit:
    """Preprocessed images of a split plus what could not be read (counted, never dropped)."""

    frame: pd.DataFrame          # rows that loaded, in CSV order
    images: np.ndarray           # float32 [N, 1, S, S]
    rejected: dict[str, int]     # ImageError reason -> count


def load_split_images(frame: pd.DataFrame, preprocess: Preprocess, root: str | Path = "."
                      ) -> LoadedSplit:
    """Open and preprocess every image of ``frame`` (paths relative to ``root``)."""
    rejected: Counter[str] = Counter()
    keep, arrays = [], []
    for i, rel in enumerate(tqdm(frame["path"], desc="load test images", unit="img")):
        try:
            image = open_image(Path(root) / rel)
        except FileNotFoundError:
            rejected["missing"] += 1
            continue
        except ImageError as err:
            rejected[err.reason] += 1
            continue
        arrays.append(preprocess(image))
        keep.append(i)
    if not arrays:
        raise DataError(f"none of the {len(frame)} test images could be read "
                        f"(rejections: {dict(rejected)})")
    return LoadedSplit(frame.iloc[keep].reset_index(drop=True),
                       np.stack(arrays).astype(np.float32), dict(rejected))


@dataclass(frozen=True)
class Sample:
    """Indices into the loaded split with true/predicted classes and the predicted probability."""

    indices: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.true == self.pred

    def __len__(self) -> int:
        return len(self.indices)


def choose_sample(true: np.ndarray, pred: np.ndarray, size: int, misclassified_fraction: float,
                  seed: int) -> np.ndarray:
    """Indices of ``size`` images: about ``misclassified_fraction`` of them misclassified.

    When one group is too small the other fills the gap, so the sample size is kept whenever the
    split is large enough. Result: correct images first, then misclassified, each in split order.
    """
    rng = np.random.default_rng(seed)
    size = min(size, len(true))
    wrong = np.flatnonzero(true != pred)
    right = np.flatnonzero(true == pred)
    n_wrong = min(len(wrong), int(round(size * misclassified_fraction)))
    n_right = min(len(right), size - n_wrong)
    n_wrong = min(len(wrong), size - n_right)
    picked_right = np.sort(rng.choice(right, size=n_right, replace=False))
    picked_wrong = np.sort(rng.choice(wrong, size=n_wrong, replace=False))
    return np.concatenate([picked_right, picked_wrong]).astype(np.int64)


def predict_and_sample(model: nn.Module, split: LoadedSplit, classes: list[str], size: int,
                       misclassified_fraction: float, seed: int, batch_size: int) -> Sample:
    """Predict the whole split, then draw the sample from correct and misclassified images."""
    index = {c: i for i, c in enumerate(classes)}
    true = np.array([index[label] for label in split.frame["label"]], dtype=np.int64)
    probs = batched_probabilities(model, split.images, batch_size)
    pred = probs.argmax(axis=1)
    chosen = choose_sample(true, pred, size, misclassified_fraction, seed)
    return Sample(chosen, true[chosen], pred[chosen], probs[chosen, pred[chosen]])
