"""Shipping a run's model into models/<name>/ and choosing the default on validation data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from emorec.shipping import choose_by_validation, package, run_report


@pytest.fixture
def workspace(tmp_path, tiny_onnx, tiny_checkpoint):
    """A finished run's layout: models, label map and a two-source val split."""
    ws = tmp_path / "ws"
    shutil.copytree(tiny_onnx["root"], ws)
    (ws / "models").mkdir(exist_ok=True)
    shutil.copyfile(tiny_onnx["fp32"], ws / "models" / "model.int8.onnx")
    shutil.copyfile(tiny_checkpoint, ws / "models" / "best.pt")
    classes = torch.load(tiny_checkpoint, weights_only=False)["classes"]
    (ws / "data" / "processed").mkdir(parents=True)
    (ws / "data/processed/label_map.json").write_text(
        json.dumps({c: i for i, c in enumerate(classes)}))
    val = pd.read_csv(tiny_onnx["csvs"]["val"])
    val["source"] = ["big" if k % 4 else "small" for k in range(len(val))]
    val.to_csv(ws / "data/processed/val.csv", index=False)
    return ws


def test_package_holds_model_labels_and_fp16_weights(workspace, tmp_path):
    files = package(workspace, tmp_path / "models" / "shipped")
    assert set(files) == {"model.int8.onnx", "label_map.json", "weights.fp16.safetensors",
                          "weights.fp16.json"}
    weights = load_file(tmp_path / "models/shipped/weights.fp16.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert json.loads((tmp_path / "models/shipped/weights.fp16.json").read_text())[
        "model_name"] == "resnet10t"


def test_choice_averages_balanced_accuracy_over_sources(workspace):
    model = workspace / "models" / "model.int8.onnx"
    choice = choose_by_validation({"a": model, "b": model}, workspace / "data/processed/val.csv",
                                  root=workspace)
    a = choice["candidates"]["a"]
    assert set(a["by_source"]) == {"big", "small"}
    mean = (a["by_source"]["big"]["balanced_accuracy"]
            + a["by_source"]["small"]["balanced_accuracy"]) / 2
    assert a["mean_balanced_accuracy"] == pytest.approx(mean)
    assert choice["chosen"] == "a"  # a tie keeps the first listed


def test_run_report_records_the_training_time_a_fine_tune_builds_on(workspace, repo_params_raw):
    """A later fine-tune from the shipped weights adds this time to its own (two-stage cost)."""
    (workspace / "params.yaml").write_text(yaml.safe_dump(repo_params_raw))
    assert run_report(workspace, "shipped")["train"]["wall_time_s"] is None  # not logged here
    times = workspace / "reports/train/plots/metrics/time/epoch_s.tsv"
    times.parent.mkdir(parents=True, exist_ok=True)
    times.write_text("step\tepoch_s\n0\t60.5\n1\t59.5\n")
    assert run_report(workspace, "shipped")["train"]["wall_time_s"] == pytest.approx(120.0)


def test_package_without_weights_ships_the_model_and_labels_only(workspace, tmp_path):
    files = package(workspace, tmp_path / "lean", weights=False)
    assert set(files) == {"model.int8.onnx", "label_map.json"}
    assert not (tmp_path / "lean/weights.fp16.safetensors").exists()


def test_choose_model_script_records_the_choice_and_sets_the_default(workspace, tmp_path):
    root = Path(__file__).resolve().parents[1]
    cwd = tmp_path / "repo"
    for name in ("first", "second"):
        (cwd / "models" / name).mkdir(parents=True)
        shutil.copyfile(workspace / "models/model.int8.onnx",
                        cwd / "models" / name / "model.int8.onnx")
    shutil.copyfile(root / "params.yaml", cwd / "params.yaml")
    run = subprocess.run([sys.executable, root / "scripts/choose_model.py", "models/first",
                          "models/second", "--workspace", workspace, "--set-default"],
                         cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    choice = json.loads((cwd / "reports/model_choice.json").read_text())
    assert set(choice["candidates"]) == {"first", "second"} and choice["chosen"] == "first"
    assert choice["val_split"] == "data/processed/val.csv"  # no machine-specific path
    assert "chosen: first" in run.stdout
    assert yaml.safe_load((cwd / "params.yaml").read_text())["serve"]["shipped_model"] == (
        "models/first")
    assert "# " in (cwd / "params.yaml").read_text()  # the file's comments are kept
