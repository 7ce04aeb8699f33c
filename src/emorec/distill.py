"""Distillation: one student learns from an ensemble of differently trained networks (#25).

Networks trained on different label views or losses each read some unseen faces better; their
averaged probabilities are a softer, better calibrated target than any one label. What ships
must stay one INT8 network, so the ensemble teaches a student of the shipped size
(Hinton et al. 2015):

    target = (1 - weight) * label target + weight * mean_t softmax(z_t / (T_t * temperature))

where ``z_t`` are teacher ``t``'s logits on the student's own training image, ``T_t`` the
teacher's fitted temperature (stored in its ONNX file) and ``temperature`` the recipe's extra
softening. The label target is what training would use anyway (FER+ votes, or the smoothed
one-hot). Teachers are INT8 ONNX files such as ``models/model.int8.onnx`` of earlier runs,
each with its own preprocessing; under the unseen-source protocol they come from runs that left
out the same source as the student (:func:`emorec.unseen.teacher_paths`), so no teacher has seen
a face the student is scored on.

``train.distill`` in params.yaml::

    distill:
      teachers: []        # ONNX files; empty = no distillation
      weight: 0.5         # the teachers' share of the target
      temperature: 1.0    # > 1 softens the teachers further
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.special import softmax
from tqdm import tqdm

from emorec.config import Params
from emorec.data import label_targets
from emorec.errors import DataError, ParamsError
from emorec.inference import OnnxClassifier


@dataclass(frozen=True)
class DistillConfig:
    """``train.distill``, validated; :meth:`from_params` gives None when there are no teachers."""

    teachers: tuple[Path, ...]
    weight: float
    temperature: float
    batch_size: int = 256

    @classmethod
    def from_params(cls, params: Params) -> DistillConfig | None:
        if params.get("train.distill", None) is None:
            return None
        section = params.section("train.distill")
        teachers = section.sequence("teachers", default=[])
        if not teachers:
            return None
        paths = tuple(Path(str(t)) for t in teachers)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ParamsError("train.distill.teachers", f"files not found: {missing}")
        return cls(paths, weight=section.number("weight", low=0.0, high=1.0),
                   temperature=section.number("temperature", low=1e-3))


def ensemble_probabilities(teachers: Sequence[OnnxClassifier], images: Sequence[Path],
                           classes: list[str], temperature: float = 1.0,
                           batch_size: int = 256) -> np.ndarray:
    """``[N, C]`` mean of the teachers' softened probabilities on the images at ``images``.

    Each teacher preprocesses the images its own way (size, normalisation from its metadata).
    Raises :class:`DataError` when a teacher's classes differ from ``classes``.
    """
    for teacher in teachers:
        if list(teacher.classes) != list(classes):
            raise DataError(f"teacher {teacher.path} predicts {teacher.classes}, the student "
                            f"{classes}: a teacher must share the classes")
    total = np.zeros((len(images), len(classes)), dtype=np.float64)
    for start in tqdm(range(0, len(images), batch_size), desc="teachers", unit="batch",
                      mininterval=2):
        chunk = [_open(p) for p in images[start:start + batch_size]]
        for teacher in teachers:
            batch = teacher.preprocess.batch(chunk)
            logits = teacher.logits(batch).astype(np.float64)
            scale = teacher.temperature * temperature
            total[start:start + len(chunk)] += softmax(logits / scale, axis=1)
    return (total / max(1, len(teachers))).astype(np.float32)


def blend(labels: np.ndarray, teachers: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * labels + weight * teachers``, row-normalised: the student's targets."""
    if labels.shape != teachers.shape:
        raise DataError(f"label targets {labels.shape} and teacher targets {teachers.shape} "
                        f"differ in shape")
    mixed = (1.0 - weight) * labels.astype(np.float64) + weight * teachers.astype(np.float64)
    return (mixed / mixed.sum(axis=1, keepdims=True)).astype(np.float32)


def distilled_targets(cfg: DistillConfig, frame: pd.DataFrame, classes: list[str],
                      smoothing: float, root: Path) -> np.ndarray:
    """The student's ``[N, C]`` targets for the rows of a split CSV (module docstring)."""
    teachers = [OnnxClassifier(path) for path in cfg.teachers]
    images = [root / p for p in frame["path"]]
    taught = ensemble_probabilities(teachers, images, classes, cfg.temperature, cfg.batch_size)
    return blend(label_targets(frame, classes, smoothing), taught, cfg.weight)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L")
