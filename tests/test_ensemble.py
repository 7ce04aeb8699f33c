"""Several ONNX classifiers as one (emorec.ensemble): the mean of their calibrated probabilities."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.special import softmax

from emorec.ensemble import Ensemble
from emorec.errors import DataError
from emorec.inference import (
    META_CLASSES,
    META_IMAGE,
    META_TEMPERATURE,
    OnnxClassifier,
    add_metadata,
)

CLASSES = ["angry", "happy", "neutral"]


def linear_onnx(path, seed: int, temperature: float, size: int = 4,
                classes: list[str] = CLASSES) -> OnnxClassifier:
    """A random linear classifier ``[N, 1, S, S] -> [N, C]`` with the emorec metadata."""
    weights = np.random.default_rng(seed).normal(size=(size * size, len(classes)))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                 ["n", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(classes)])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    add_metadata(model, {META_CLASSES: json.dumps(classes),
                         META_IMAGE: json.dumps({"size": size, "mean": 0.5, "std": 0.5}),
                         META_TEMPERATURE: repr(temperature)})
    onnx.save(model, str(path))
    return OnnxClassifier(path)


def test_the_ensemble_answers_the_mean_of_its_members_calibrated_probabilities(tmp_path):
    a = linear_onnx(tmp_path / "a.onnx", seed=0, temperature=1.5)
    b = linear_onnx(tmp_path / "b.onnx", seed=1, temperature=0.8)
    batch = np.random.default_rng(2).normal(size=(5, 1, 4, 4)).astype(np.float32)
    expected = (softmax(a.logits(batch) / 1.5, axis=1) + softmax(b.logits(batch) / 0.8,
                                                                 axis=1)) / 2
    both = Ensemble([a, b])
    got = softmax(both.logits(batch), axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert both.classes == CLASSES and both.preprocess == a.preprocess
    # neither member alone: the mean moves at least one answer or one probability
    assert not np.allclose(got, softmax(a.logits(batch) / 1.5, axis=1))


def test_members_must_share_classes_and_crop(tmp_path):
    a = linear_onnx(tmp_path / "a.onnx", seed=0, temperature=1.0)
    other_classes = linear_onnx(tmp_path / "c.onnx", seed=0, temperature=1.0,
                                classes=["angry", "happy", "sad"])
    other_size = linear_onnx(tmp_path / "s.onnx", seed=0, temperature=1.0, size=6)
    with pytest.raises(DataError, match="share the classes"):
        Ensemble([a, other_classes])
    with pytest.raises(DataError, match="same crop"):
        Ensemble([a, other_size])
    with pytest.raises(DataError, match="two members"):
        Ensemble([a])


def load_unseen_script():
    import importlib.util
    import sys

    from stagerun import REPO

    sys.path.insert(0, str(REPO / "scripts"))  # unseen.py imports run_preset from there
    spec = importlib.util.spec_from_file_location("unseen_script", REPO / "scripts" / "unseen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, REPO


def test_score_writes_an_ensemble_row_with_its_members_left_out_source(tmp_path, monkeypatch,
                                                                      capsys):
    from facephotos import PHOTOS
    from PIL import Image

    unseen, repo = load_unseen_script()
    for folder, photo, label in [("held", "astronaut", "happy"), ("photos", "astronaut", "happy"),
                                 ("photos", "grace_hopper", "neutral")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(PHOTOS[photo]).save(tmp_path / folder / f"{photo}_{label}.png")
    entry = {"reader": "folder", "label_pattern": r"^[a-z_]+?_([a-z]+)\.png$",
             "map": {"happy": "happy", "neutral": "neutral"}}
    protocol = tmp_path / "unseen.yaml"
    protocol.write_text(json.dumps({
        "unseen": [{"name": "photos", "path": str(tmp_path / "photos"), **entry}],
        "recipes": {"r": {"preset": "multisource-cpu", "overrides": {"data.sources": [
            {"name": "held", "path": str(tmp_path / "held"), **entry}]}}}}))
    monkeypatch.chdir(tmp_path)  # the run records go to ./reports/unseen/runs
    members = [str(repo / "models/multisource"), str(repo / "models/fer2013/model.int8.onnx")]
    common = ["--spec", str(protocol), "score", *members, "--params", str(repo / "params.yaml")]
    for extra, message in [(["--holdout", "held", "--recipe", "r"], "scores an ensemble"),
                           (["--ensemble", "--holdout", "held", "--recipe", "r"], "--name"),
                           (["--ensemble", "--name", "two", "--holdout", "held"],
                            "unknown recipe 'yunet'"),  # the default, not in this file
                           (["--ensemble", "--name", "two", "--holdout", "nowhere",
                             "--recipe", "r"], "no source 'nowhere'")]:
        assert unseen.main([*common, *extra]) == 2
        assert message in capsys.readouterr().err
    assert unseen.main([*common, "--ensemble", "--name", "two", "--holdout", "held",
                        "--recipe", "r"]) == 0
    record = json.loads((tmp_path / "reports/unseen/runs/unseen-ensemble-two-lo-held.json")
                        .read_text())
    assert record["recipe"] == "ensemble:two" and record["heldout"] == "held"
    assert len(record["members"]) == 2 and "cores" in record["hardware"]
    assert record["sets"]["held"]["n"] == 1 and record["sets"]["photos"]["n"] == 2
    assert record["sets"]["held"]["service"]["recall"]["happy"] == 1.0  # she smiles
