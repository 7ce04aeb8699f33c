"""Prior-free decisions: the logit-adjusted loss, the post-hoc offset baked into an ONNX graph,
its recalibration, and scoring another decision rule on the same faces."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from emorec.calibration import fit_temperature
from emorec.cross_corpus import NO_FACE, Predictions, redecide
from emorec.decision import (
    META_ADJUSTMENT,
    adjust_onnx,
    class_prior,
    cross_fit,
    fit_class_offsets,
    logit_offset,
    recalibrate,
    tau_left_out,
)
from emorec.inference import META_CLASSES, META_IMAGE, OnnxClassifier, add_metadata
from emorec.losses import LogitAdjustedLoss, build_loss, weighted_soft_ce
from emorec.readers import Candidate

CLASSES = ["angry", "happy", "neutral"]


def tiny_onnx(path, size: int = 4) -> np.ndarray:
    """A linear classifier ``[N, 1, S, S] -> [N, 3]`` with the emorec metadata; its weights."""
    weights = np.random.default_rng(0).normal(size=(size * size, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    add_metadata(model, {META_CLASSES: json.dumps(CLASSES),
                         META_IMAGE: json.dumps({"size": size, "mean": 0.5, "std": 0.5}),
                         "emorec.temperature": "1.5"})
    onnx.save(model, str(path))
    return weights


def test_logit_adjusted_loss_is_ce_on_shifted_logits_and_balanced_at_tau_1():
    counts = [80, 15, 5]
    logits = torch.randn(6, 3)
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    loss = LogitAdjustedLoss(counts, tau=1.0)(logits, target)
    prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    assert loss == pytest.approx(float(weighted_soft_ce(logits + prior.log(), target)))
    # at tau 0 it is the plain loss; build_loss knows it by name
    assert build_loss("logit_adjusted", counts, la_tau=0.0)(logits, target) == pytest.approx(
        float(weighted_soft_ce(logits, target)))
    with pytest.raises(ValueError, match="tau must be >= 0"):
        LogitAdjustedLoss(counts, tau=-1)


def test_offset_lowers_frequent_classes_and_is_centred():
    offset = logit_offset([0.6, 0.3, 0.1], 1.0)
    assert offset[0] < offset[1] < offset[2]
    assert offset.sum() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(offset[2] - offset[0], np.log(6), rtol=1e-6)
    assert np.isfinite(logit_offset([0.5, 0.5, 0.0], 1.0)).all()  # a missing class: floored
    assert not logit_offset([0.6, 0.3, 0.1], 0.0).any()


def test_prior_counts_soft_targets_as_distributions_and_skips_unlabelled():
    def cand(label, soft=None):
        return Candidate(id="x", source="s", where="x", label=label, raw_label=str(label),
                         load=lambda: b"", soft=soft)
    prior = class_prior([cand("angry"), cand("neutral", (0.0, 0.5, 0.5)), cand(None),
                         cand("")], CLASSES)
    np.testing.assert_allclose(prior, [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match="no labelled candidate"):
        class_prior([cand(None)], CLASSES)


def test_adjusted_graph_adds_the_offset_and_keeps_its_interface(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "adjusted.onnx"
    tiny_onnx(src)
    offset = logit_offset([0.2, 0.3, 0.5], 0.75)
    adjust_onnx(src, dst, offset, {"tau": 0.75}, {"emorec.temperature": "0.8"})
    before, after = OnnxClassifier(src), OnnxClassifier(dst)
    batch = np.random.default_rng(1).normal(size=(5, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(after.logits(batch), before.logits(batch) + offset, rtol=1e-5,
                               atol=1e-5)
    assert after.classes == CLASSES and after.output_name == "logits"
    assert after.temperature == pytest.approx(0.8)
    assert json.loads(after.metadata[META_ADJUSTMENT]) == {"tau": 0.75}
    with pytest.raises(ValueError, match="already logit-adjusted"):
        adjust_onnx(dst, tmp_path / "twice.onnx", offset, {})


def test_recalibration_fits_the_temperature_of_the_adjusted_logits():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 4.0 * np.eye(3)[labels]  # confident, often right
    fitted = recalibrate(logits, labels, coverage=0.9)
    assert fitted["temperature"] == pytest.approx(fit_temperature(logits, labels))
    probs = np.exp(logits / fitted["temperature"])
    probs /= probs.sum(1, keepdims=True)
    assert (probs.max(1) >= fitted["min_confidence"]).mean() == pytest.approx(0.9, abs=0.01)


def test_redecide_changes_only_the_service_answers_of_found_faces():
    pred = Predictions(labels=["angry", "neutral", "angry"],
                       service=["neutral", NO_FACE, "neutral"], whole=["neutral"] * 3,
                       skipped=Counter(),
                       service_logits=np.array([[1.0, 0.0, 1.2], [0.0, 0.0, 2.0]]))
    again = redecide(pred, CLASSES, np.array([0.5, 0.0, -0.5]))
    assert again.service == ["angry", NO_FACE, "neutral"]
    assert again.whole == pred.whole and pred.service[0] == "neutral"


def _balanced_accuracy(data: tuple[np.ndarray, np.ndarray], bias: np.ndarray) -> float:
    logits, labels = data
    pred = (logits + bias).argmax(axis=1)
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def test_class_offsets_climb_to_a_better_decision_and_prefer_small_steps():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 100)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), labels] += 1.0
    logits[:, 1] += 2.0  # class 1 swallows the others
    data = (logits, labels)
    start = np.zeros(3)
    fitted = fit_class_offsets(lambda b: _balanced_accuracy(data, b), start,
                               (-3.0, -2.0, -1.0, 0.0, 1.0))
    assert _balanced_accuracy(data, fitted) > _balanced_accuracy(data, start) + 0.15
    assert fitted[1] - max(fitted[0], fitted[2]) < -1.0  # class 1's pull is taken back
    # nothing to gain: the start stays, though every step scores the same
    assert np.array_equal(fit_class_offsets(lambda b: 0.5, start, (-1.0, 0.0, 1.0)), start)


def test_cross_fit_scores_each_set_with_offsets_fitted_on_the_others_only():
    rng = np.random.default_rng(1)

    def make(shift: float) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat([0, 1], 50)
        logits = rng.normal(size=(100, 2))
        logits[np.arange(100), labels] += 2.0
        logits[:, 0] += shift
        return logits, labels

    # a and b share a bias toward class 0 that an offset undoes; c is biased the other way
    sets = {"a": make(2.5), "b": make(2.5), "c": make(-2.5)}
    out = cross_fit(sets, _balanced_accuracy, np.zeros(2), (-3.0, -2.0, 0.0, 2.0, 3.0))
    assert out["a"]["fitted_on"] == ["b", "c"] and set(out) == {"a", "b", "c"}
    # c's opposite bias: fitted on a and b, the offsets make c worse than no offset at all
    assert out["c"]["score"] < out["c"]["score_at_start"]
    assert out["c"]["steps"][0] < out["c"]["steps"][1]


def test_each_set_gets_the_tau_its_neighbours_would_pick():
    # "big" likes tau 1, "small" alone likes tau 0; chosen on all sets, small would be flattered
    scores = {"0": {"big": 0.50, "other": 0.50, "small": 0.90},
              "1": {"big": 0.60, "other": 0.58, "small": 0.40},
              "0.5": {"big": 0.60, "other": 0.58, "small": 0.50}}
    chosen = tau_left_out(scores)
    assert chosen["small"] == "0.5"  # 0.5 and 1 tie on big and other: the smaller tau
    assert chosen["big"] == "0"  # other 0.50 + small 0.90 beat 0.58 + 0.40 and 0.58 + 0.50
    with pytest.raises(ValueError, match="two sets"):
        tau_left_out({"0": {"only": 0.5}})


def test_a_pooled_choice_leaves_the_set_out_of_every_model_it_averages():
    scores = {"0": {"a": 0.9, "b": 0.5}, "1": {"a": 0.5, "b": 0.6}}
    assert tau_left_out(scores) == {"a": "1", "b": "0"}
    # another model: on "a" it likes tau 0; without "a" its "c" likes 1, so "a" still gets 1
    other = {"0": {"a": 0.99, "c": 0.4}, "1": {"a": 0.1, "c": 0.5}}
    assert tau_left_out(scores, [other])["a"] == "1"
    # without "b": a's 0.9 and the other's mean (0.695 at 0, 0.3 at 1) agree on tau 0
    assert tau_left_out(scores, [other])["b"] == "0"
