"""Distillation targets (emorec.distill): an ensemble's probabilities blended into the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import softmax
from test_decision import CLASSES, tiny_onnx

from emorec.config import Params
from emorec.data import label_targets
from emorec.distill import DistillConfig, blend, distilled_targets, ensemble_probabilities
from emorec.errors import DataError, ParamsError
from emorec.inference import OnnxClassifier


@pytest.fixture
def images(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for k, label in enumerate(["angry", "happy", "neutral", "happy", "angry"]):
        path = tmp_path / f"face{k}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
        rows.append({"path": path.name, "label": label})
    return pd.DataFrame(rows)


def by_hand(weights: np.ndarray, size: int, path, temperature: float) -> np.ndarray:
    """What a tiny linear teacher (temperature 1.5 in its metadata) says of one image."""
    pixels = np.asarray(Image.open(path).convert("L").resize((size, size), Image.BILINEAR),
                        dtype=np.float32) / 255.0
    logits = ((pixels - 0.5) / 0.5).reshape(-1) @ weights
    return softmax(logits / (1.5 * temperature))


def test_the_ensemble_averages_each_teachers_softened_probabilities(tmp_path, images):
    w4, w6 = tiny_onnx(tmp_path / "t4.onnx", 4), tiny_onnx(tmp_path / "t6.onnx", 6)
    teachers = [OnnxClassifier(tmp_path / "t4.onnx"), OnnxClassifier(tmp_path / "t6.onnx")]
    paths = [tmp_path / p for p in images["path"]]
    got = ensemble_probabilities(teachers, paths, CLASSES, temperature=2.0, batch_size=2)
    expected = [(by_hand(w4, 4, p, 2.0) + by_hand(w6, 6, p, 2.0)) / 2 for p in paths]
    np.testing.assert_allclose(got, np.stack(expected), atol=2e-3)  # resize kernels differ
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_students_targets_blend_labels_and_teachers(tmp_path, images):
    tiny_onnx(tmp_path / "t.onnx", 4)
    cfg = DistillConfig((tmp_path / "t.onnx",), weight=0.25, temperature=1.0)
    targets = distilled_targets(cfg, images, CLASSES, smoothing=0.0, root=tmp_path)
    taught = ensemble_probabilities([OnnxClassifier(tmp_path / "t.onnx")],
                                    [tmp_path / p for p in images["path"]], CLASSES)
    onehot = label_targets(images, CLASSES)
    np.testing.assert_allclose(targets, 0.75 * onehot + 0.25 * taught, atol=1e-6)
    assert (targets.argmax(axis=1) == onehot.argmax(axis=1)).all()  # a 3:1 blend keeps labels


def test_blend_keeps_distributions_and_refuses_other_shapes():
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    teachers = np.array([[0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(blend(labels, teachers, 1.0), teachers)
    np.testing.assert_allclose(blend(labels, teachers, 0.0), labels)
    with pytest.raises(DataError, match="differ in shape"):
        blend(labels, teachers[:, :2], 0.5)


def test_params_without_teachers_mean_no_distillation_and_missing_files_are_named(
        params_raw, tmp_path):
    assert DistillConfig.from_params(Params(params_raw)) is None  # the shipped params: none
    params_raw["train"]["distill"] = {"teachers": [str(tmp_path / "gone.onnx")], "weight": 0.5,
                                      "temperature": 1.0}
    with pytest.raises(ParamsError, match="gone.onnx"):
        DistillConfig.from_params(Params(params_raw))
    tiny_onnx(tmp_path / "t.onnx")
    params_raw["train"]["distill"].update(teachers=[str(tmp_path / "t.onnx")], weight=2)
    with pytest.raises(ParamsError, match="train.distill.weight"):
        DistillConfig.from_params(Params(params_raw))


def test_a_teacher_with_other_classes_is_refused(tmp_path, images):
    tiny_onnx(tmp_path / "t.onnx")
    with pytest.raises(DataError, match="must share the classes"):
        ensemble_probabilities([OnnxClassifier(tmp_path / "t.onnx")],
                               [tmp_path / p for p in images["path"]], ["a", "b", "c"])
