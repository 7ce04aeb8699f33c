"""reports/fer2013.json: scores of a real-data run, with the 7-class run folded to six."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emorec.real_data import build_report, fold_labels

REPO = Path(__file__).resolve().parents[1]
CLASSES7 = ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def readme_tool():
    """scripts/readme_metrics.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("readme_metrics",
                                                  REPO / "scripts/readme_metrics.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture
def workspace(tmp_path, repo_params_raw) -> Path:
    """The files a finished FER2013 experiment leaves in its DVC workspace."""
    params = dict(repo_params_raw, classes=CLASSES7)
    write(tmp_path / "params.yaml", yaml.safe_dump(params))
    rows = [("angry", "angry"), ("disgust", "angry"), ("angry", "disgust"), ("happy", "happy"),
            ("sad", "neutral"), ("disgust", "disgust")]
    (tmp_path / "reports/evaluate").mkdir(parents=True)
    pd.DataFrame(rows, columns=["actual", "predicted"]).to_csv(
        tmp_path / "reports/evaluate/confusion.csv", index=False)
    write(tmp_path / "reports/quantize.json", {"fp32": {"test": {"accuracy": 0.5}},
                                               "int8": {"test": {"accuracy": 0.49}}})
    write(tmp_path / "reports/split.json", {"sizes": {"train": 10, "val": 2, "test": 6}})
    write(tmp_path / "reports/train/metrics.json",
          {"precision": "float32", "best": {"epoch": 3, "val_macro_f1": 0.4},
           "train": {"accuracy": 0.7}, "val": {"accuracy": 0.6}})
    write(tmp_path / "reports/train/plots/metrics/time/epoch_s.tsv",
          "step\tepoch_s\n0\t1.5\n1\t2\n")
    write(tmp_path / "reports/ingest.json", {"offered": 7, "accepted": 6,
                                             "rejected_by_reason": {"near_blank": 1, "empty": 0}})
    write(tmp_path / "data/interim/manifest.csv", "id,path\n")
    return tmp_path


def test_report_scores_seven_classes_and_folds_disgust_into_angry(workspace):
    report = build_report(workspace)
    test = report["test"]
    assert test["n"] == 6 and test["accuracy"] == pytest.approx(3 / 6)
    assert np.array(test["confusion"]).sum() == 6
    assert test["confusion"][0][1] == 1  # an angry face called disgust
    six = report["test_6_class"]
    assert "disgust" not in six["classes"] and six["fold"] == {"disgust": "angry"}
    assert six["accuracy"] == pytest.approx(5 / 6)  # every angry/disgust mix-up now counts
    assert report["int8"]["accuracy_drop_points"] == pytest.approx(1.0)
    assert report["train"]["wall_time_s"] == pytest.approx(3.5)
    assert report["train"]["best_epoch"] == 4
    assert report["train"]["last_epoch"] == {"train_accuracy": 0.7, "val_accuracy": 0.6}
    assert report["ingest"]["rejected_by_reason"] == {"near_blank": 1}
    assert report["dataset_fingerprint"].startswith("sha256:")
    assert report["hardware"]["cpu"]["logical_cores"] >= 1


def test_fold_labels_leaves_other_classes_alone():
    assert list(fold_labels(np.array(["disgust", "sad"]), {"disgust": "angry"})) == [
        "angry", "sad"]


def test_script_writes_json_and_fails_cleanly_without_a_run(workspace, tmp_path):
    out = tmp_path / "fer2013.json"
    script = REPO / "scripts/fer2013_report.py"
    ok = subprocess.run([sys.executable, script, "--workspace", workspace, "--out", out],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(out.read_text())["test"]["n"] == 6
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, script, "--workspace", empty, "--out", out],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no complete FER2013 run" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_readme_section_renders_the_record_beside_the_anchors(workspace):
    tool = readme_tool()
    section = tool.render_fer2013(build_report(workspace))
    assert "| emorec, FP32 | 7 | **50.00%** |" in section
    assert "disgust folded into angry | 6 | 83.33%" in section
    assert "73.28%" in section and "60.00%" in section  # best single network, the peer
    readme = "a\n<!-- fer2013:start -->\nSTALE\n<!-- fer2013:end -->\nb\n"
    spliced = tool.splice(readme, section, Path("README.md"), tool.FER_START, tool.FER_END)
    assert "STALE" not in spliced and spliced.startswith("a\n") and spliced.endswith("b\n")


def test_a_fine_tune_counts_the_start_weights_training_time(workspace):
    """Two-stage recipe: the record names the start weights and adds their training time."""
    weights = workspace / "models/multisource/weights.fp16.safetensors"
    write(weights, "not read, only hashed")
    write(workspace / "reports/multisource.json",
          {"commit": "abc", "train": {"epochs": 20, "wall_time_s": 600.0}})
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["pretrained"] = "models/multisource/weights.fp16.safetensors"
    write(workspace / "params.yaml", yaml.safe_dump(params))

    report = build_report(workspace)
    start = report["start_weights"]
    assert start["report"] == "reports/multisource.json" and start["epochs"] == 20
    assert len(start["sha256"]) == 64
    assert report["train"]["total_wall_time_s"] == pytest.approx(603.5)

    tool = readme_tool()
    section = tool.render_fer2013(report)
    assert "from `models/multisource/weights.fp16.safetensors` (20 epochs, 10 min)" in section
    assert "10 min of training in all" in section


def test_the_record_carries_the_fitted_temperature_when_the_run_has_one(workspace):
    assert "calibration" not in build_report(workspace)
    write(workspace / "reports/metrics/calibration.json",
          {"temperature": 0.95, "test": {"before": {"ece": 0.03}, "after": {"ece": 0.036}}})
    report = build_report(workspace)
    assert report["calibration"] == {"temperature": 0.95, "test_ece_before": 0.03,
                                     "test_ece_after": 0.036}
    assert "T = 0.95, test ECE 0.030 before and 0.036 after" in readme_tool().render_fer2013(
        report)


def test_a_run_from_scratch_has_no_start_weights(workspace):
    assert "start_weights" not in build_report(workspace)
