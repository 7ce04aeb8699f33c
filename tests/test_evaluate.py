"""The evaluate stage: test metrics JSON, DVC plot tables and PNGs from a trained checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from stagerun import REPO, STAGES, run_python
from tinydata import CLASSES, make_dataset, tiny_params, write_params

from emorec.config import Params
from emorec.errors import DataError
from emorec.evaluation import evaluate_checkpoint, worst_misclassifications
from emorec.training import TrainPaths, fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_params_raw) -> tuple[Path, dict]:
    """Tiny data plus a model trained on it in-process (2 epochs)."""
    root = make_dataset(tmp_path_factory.mktemp("eval"))
    raw = tiny_params(repo_params_raw, model="test_convnext", epochs=2)
    write_params(root / "params.yaml", raw)
    paths = TrainPaths(
        train_csv=root / "data/synth/train.csv", val_csv=root / "data/processed/val.csv",
        label_map=root / "data/processed/label_map.json",
        class_weights=root / "data/processed/class_weights.json", best=root / "models/best.pt",
        state=root / "models/last.pt", live_dir=root / "reports/train", root=root)
    fit(Params(raw), paths, progress=False)
    return root, raw


def test_evaluate_stage_writes_metrics_and_plots(trained):
    root, _ = trained
    proc = run_python([str(STAGES / "evaluate.py"), "--no-progress"], root)
    assert proc.returncode == 0, proc.stderr

    metrics = json.loads((root / "reports/metrics/test.json").read_text())
    assert metrics["n_images"] == 24 and metrics["model"]["name"] == "test_convnext"
    assert metrics["macro_f1"] > 0.8  # chance is 1/3
    assert set(metrics["per_class"]) == set(CLASSES)
    for row in metrics["per_class"].values():
        assert set(row) == {"precision", "recall", "f1", "support"} and row["support"] == 8
    headline = json.loads((root / "reports/metrics/evaluate.json").read_text())
    assert set(headline) == {"accuracy", "macro_f1", "balanced_accuracy", "ece"}
    assert headline["macro_f1"] == pytest.approx(metrics["macro_f1"], abs=1e-4)

    plots = root / "reports/evaluate"
    confusion = pd.read_csv(plots / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 24
    assert set(confusion["actual"]) == set(CLASSES)
    accuracy = float((confusion["actual"] == confusion["predicted"]).mean())
    assert accuracy == pytest.approx(metrics["accuracy"])
    assert metrics["n_misclassified"] == int((confusion["actual"] != confusion["predicted"]).sum())
    f1 = pd.read_csv(plots / "per_class_f1.csv").set_index("class")["f1"]
    assert f1.to_dict() == pytest.approx({c: metrics["per_class"][c]["f1"] for c in CLASSES})
    for png in ("confusion.png", "worst.png", "reliability.png"):
        with Image.open(plots / png) as img:
            assert img.format == "PNG" and min(img.size) > 100

    calibration = json.loads((root / "reports/metrics/calibration.json").read_text())
    assert calibration["temperature"] > 0 and calibration["bins"] == 15
    assert calibration["fit"] == {**calibration["fit"], "split": "val", "n_images": 24}
    assert calibration["fit"]["nll_after"] <= calibration["fit"]["nll_before"] + 1e-9
    for when in ("before", "after"):
        scores = calibration["test"][when]
        assert set(scores) == {"ece", "nll", "brier", "accuracy", "mean_confidence"}
        assert scores["accuracy"] == pytest.approx(metrics["accuracy"])  # T never flips a label
    reliability = pd.read_csv(plots / "reliability.csv")
    assert len(reliability) == 15
    assert reliability["count_before"].sum() == reliability["count_after"].sum() == 24

    selective = calibration["selective"]
    assert 0 < calibration["min_confidence"] == selective["min_confidence"] <= 1
    assert selective["val_at_min_confidence"]["coverage"] >= 0.9
    for key in ("accuracy_at_80_coverage", "accuracy_at_90_coverage"):
        assert 0 <= selective[key] <= 1
    curve = pd.read_csv(plots / "risk_coverage.csv")
    assert list(curve.columns) == ["threshold", "coverage", "accuracy", "risk", "answered"]
    assert curve["coverage"].is_monotonic_increasing and curve["coverage"].iloc[-1] == 1.0
    assert curve["threshold"].is_monotonic_decreasing
    assert curve["accuracy"].iloc[-1] == pytest.approx(metrics["accuracy"])


def test_evaluate_rejects_a_model_for_other_classes(trained, tmp_path):
    root, raw = trained
    other = {**raw, "classes": ["happy", "sad", "angry"]}
    with pytest.raises(DataError, match="trained for classes"):
        evaluate_checkpoint(Params(other), root / "models/best.pt",
                            root / "data/processed/test.csv", tmp_path / "m.json",
                            tmp_path / "plots", root=root, progress=False)


def test_worst_misclassifications_are_the_most_confident_mistakes():
    probs = np.array([[0.9, 0.1, 0.0],   # correct
                      [0.2, 0.7, 0.1],   # wrong, 0.7
                      [0.1, 0.1, 0.8],   # wrong, 0.8
                      [0.3, 0.6, 0.1],   # wrong, 0.6
                      [0.5, 0.4, 0.1]])  # correct
    y = np.array([0, 0, 1, 2, 0])
    assert worst_misclassifications(probs, y, 2).tolist() == [2, 1]
    assert worst_misclassifications(probs, y, 10).tolist() == [2, 1, 3]
    assert worst_misclassifications(probs, y, 0).tolist() == []


def test_dvc_renders_the_declared_plots_and_metrics(trained, tmp_path):
    """The repo's dvc.yaml declarations: `dvc plots show` renders confusion and F1 bars."""
    root, _ = trained
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")  # dvc.yaml interpolates ${serve.*}
    shutil.copytree(root / "reports", repo / "reports")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args: str) -> str:
        proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q")
    shown = json.loads(dvc("plots", "show", "--json", "reports/evaluate/confusion.csv",
                           "reports/evaluate/per_class_f1.csv", "train_loss", "train_macro_f1",
                           "reports/evaluate/reliability.csv", "calibration_reliability",
                           "reports/evaluate/risk_coverage.csv"))
    assert not shown.get("errors")
    rendered = shown["data"]
    confusion = json.dumps(rendered["reports/evaluate/confusion.csv"][0])
    assert '"mark": "rect"' in confusion and '"field": "actual"' in confusion  # confusion template
    assert "xy_count" in confusion
    for name in ("reports/evaluate/per_class_f1.csv", "train_loss", "train_macro_f1",
                 "reports/evaluate/reliability.csv", "calibration_reliability",
                 "reports/evaluate/risk_coverage.csv"):
        assert rendered[name][0]["type"] == "vega"
        assert rendered[name][0]["content"]["data"]["values"], name
    metrics = json.loads(dvc("metrics", "show", "--json"))
    flat = json.dumps(metrics)
    # the headline file is the metric; the full reports are outputs (emorec.headline)
    assert "reports/metrics/evaluate.json" in flat
    assert all(key in flat for key in ("macro_f1", "balanced_accuracy", "ece"))
    for full in ("reports/metrics/test.json", "reports/metrics/calibration.json",
                 "reports/train/metrics.json"):
        assert full not in flat


def test_readme_metrics_section_is_rendered_from_reports(trained, tmp_path):
    """scripts/readme_metrics.py fills the README section from the evaluate/train reports."""
    import importlib.util

    root, raw = trained
    test_json = tmp_path / "test.json"
    evaluate_checkpoint(Params(raw), root / "models/best.pt", root / "data/processed/test.csv",
                        test_json, tmp_path / "plots", root=root, progress=False)
    spec = importlib.util.spec_from_file_location("readme_metrics",
                                                  REPO / "scripts/readme_metrics.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- metrics:start -->\nold\n<!-- metrics:end -->\n\nmore\n")
    args = ["--readme", str(readme), "--test", str(test_json),
            "--train", str(root / "reports/train/metrics.json"),
            "--bench", str(tmp_path / "absent.json"),
            "--reports", str(tmp_path / "no-optional-reports")]  # not the repo's reports/

    assert tool.main([*args, "--check"]) == 1
    assert tool.main(args) == 0
    assert tool.main([*args, "--check"]) == 0
    text = readme.read_text()
    test = json.loads(test_json.read_text())
    assert f"| Test macro-F1 | {test['macro_f1']:.3f} |" in text
    assert "| angry |" in text and "old" not in text
    assert text.startswith("# Title\n\n<!-- metrics:start -->\n") and text.endswith("\n\nmore\n")


# -- calibration math (emorec.calibration) ------------------------------------------------------


def _sampled(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): true T is known."""
    from emorec.calibration import scaled_probabilities

    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 4))
    probs = scaled_probabilities(logits, temperature)
    labels = np.array([rng.choice(4, p=row) for row in probs])
    return logits, labels


def test_fit_temperature_recovers_the_true_temperature():
    from emorec.calibration import fit_temperature, nll

    logits, labels = _sampled(4000, 2.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    from emorec.calibration import at_search_bound

    assert not at_search_bound(t) and at_search_bound(20.0) and at_search_bound(0.05)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0)
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, int)) == 1.0


def test_calibrate_lowers_ece_and_nll_of_an_overconfident_model():
    from emorec.calibration import calibrate

    val_logits, val_labels = _sampled(3000, 2.5, seed=1)
    test_logits, test_labels = _sampled(3000, 2.5, seed=2)
    result = calibrate(val_logits, val_labels, test_logits, test_labels)
    before, after = result.report["test"]["before"], result.report["test"]["after"]
    assert result.temperature > 1.5
    assert after["ece"] < before["ece"] and after["ece"] < 0.03
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["accuracy"] == before["accuracy"]
    assert list(result.reliability.columns[:5]) == ["bin", "lower", "upper", "center", "ideal"]


def test_ece_and_reliability_bins_by_hand():
    from emorec.calibration import expected_calibration_error, reliability_bins

    # two bins: (0, .5] holds none (top-1 >= 1/2 for 2 classes); (.5, 1] holds all four
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])  # 3 of 4 right, mean confidence 0.75
    table = reliability_bins(probs, labels, n_bins=2)
    assert table["count"].tolist() == [0, 4]
    assert table.loc[1, "accuracy"] == pytest.approx(0.75)
    assert table.loc[1, "confidence"] == pytest.approx(0.75)
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(
        (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6) + abs(1 - 0.7)) / 4)


def test_risk_coverage_and_thresholds_by_hand():
    from emorec.calibration import (
        accuracy_at_coverage,
        risk_coverage,
        selective_at,
        threshold_for_coverage,
    )

    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.7 (right), 0.6 (wrong)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1, 0])
    curve = risk_coverage(probs, labels)
    assert curve["threshold"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])  # ties share a row
    assert curve["coverage"].tolist() == pytest.approx([0.2, 0.4, 0.8, 1.0])
    assert curve["accuracy"].tolist() == pytest.approx([1.0, 0.5, 0.75, 0.6])
    assert threshold_for_coverage(probs, 0.8) == pytest.approx(0.7)
    assert threshold_for_coverage(probs, 0.5) == pytest.approx(0.7)  # 3 of 5 needed
    assert threshold_for_coverage(probs, 1.0) == pytest.approx(0.6)
    assert accuracy_at_coverage(probs, labels, 0.4) == pytest.approx(0.5)
    assert selective_at(probs, labels, 0.7) == pytest.approx(
        {"threshold": 0.7, "coverage": 0.8, "accuracy": 0.75})
    assert selective_at(probs, labels, 0.95)["accuracy"] is None


def test_multi_source_splits_are_scored_per_source_too():
    from emorec.evaluation import metrics_by_source

    sources = np.array(["fer", "fer", "fer", "lab", "lab"])
    y_true = np.array([0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 0, 2, 0])
    got = metrics_by_source(sources, y_true, y_pred, ["a", "b", "c"])
    assert got["fer"]["n"] == 3 and got["fer"]["accuracy"] == pytest.approx(2 / 3)
    assert got["fer"]["balanced_accuracy"] == pytest.approx((1 + 0.5) / 2)
    assert got["lab"] == {"n": 2, "accuracy": 0.5, "balanced_accuracy": 0.5,
                          "macro_f1": pytest.approx(2 / 3), "classes": ["c"]}
