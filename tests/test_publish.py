"""Model card (stage model_card) and `python -m emorec.publish`, offline: dry runs only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from stagerun import REPO, STAGES, run_python

from emorec.calibration import calibrate
from emorec.config import Params
from emorec.publish import (
    FOLDER_FILES,
    PUBLISHED_FILES,
    CardInputs,
    PublishError,
    main,
    publish,
    write_model_card,
)

TEST_METRICS = {"accuracy": 0.8, "macro_f1": 0.75, "n_images": 40,
                "per_class": {"angry": {"precision": 0.7, "recall": 0.8, "f1": 0.75,
                                        "support": 7}}}
# the shape emorec.real_data.build_report writes (trimmed)
FER2013 = {"dataset": "FER2013", "test_split": "PrivateTest (official Usage)", "commit": "abc123",
           "hardware": {"summary": "2 CPU cores"}, "train": {"wall_time_s": 3600.0},
           "test": {"n": 3589, "accuracy": 0.712, "macro_f1": 0.701,
                    "classes": ["angry", "disgust", "fearful", "happy", "neutral", "sad",
                                "surprised"]},
           "test_6_class": {"n": 3589, "accuracy": 0.72, "macro_f1": 0.705,
                            "classes": ["angry", "fearful", "happy", "neutral", "sad",
                                        "surprised"], "fold": {"disgust": "angry"}},
           "int8": {"accuracy": 0.709, "accuracy_drop_points": 0.3}}


def _calibration_report() -> dict:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 6))
    labels = logits.argmax(1)
    return calibrate(logits, labels, logits, labels).report


@pytest.fixture
def models_dir(tiny_onnx, params, tmp_path) -> Path:
    """Small fake model files: the tiny FP32 model stands in for all three formats."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copyfile(tiny_onnx["fp32"], folder / name)
    (folder / "model.int8.ort").write_bytes(b"ORT fake bytes")
    (folder / "label_map.json").write_text(json.dumps({c: i for i, c in
                                                       enumerate(params.classes)}))
    return folder


def _card(params: Params, folder: Path, fer2013: dict | None = None) -> Path:
    inputs = CardInputs(test=TEST_METRICS, calibration=_calibration_report(), fer2013=fer2013)
    return write_model_card(params, inputs, folder / "README.md", repo_id="me/emorec")


def test_dry_run_assembles_exactly_the_published_files(models_dir, params, tmp_path):
    card = _card(params, models_dir)
    out = publish("me/emorec", models_dir, card, models_dir / "label_map.json",
                  dry_run=tmp_path / "upload", env={})
    assert sorted(p.name for p in out.iterdir()) == sorted(PUBLISHED_FILES)
    for name in PUBLISHED_FILES:
        assert (out / name).read_bytes() == (models_dir / name).read_bytes()

    loaded = ModelCard.load(out / "README.md")  # a local file: no network
    data = loaded.data
    assert data.license == "mit" and data.library_name == "onnx"
    assert data.pipeline_tag == "image-classification" and "onnx" in data.tags
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("emorec-demo", "accuracy"): 0.8, ("emorec-demo", "f1"): 0.75}
    text = loaded.text
    for section in ("## Data", "## Metrics", "## Calibration", "## Intended use",
                    "## Limitations", "## Known biases of FER-style data"):
        assert section in text
    assert "reports/fer2013.json` absent" in text and "T = " in text


def test_card_carries_fer2013_figures_when_the_report_exists(models_dir, params_raw):
    # a demo-trained model: FER2013 figures of a separate run go in the text, not model-index
    loaded = ModelCard.load(_card(Params(params_raw), models_dir, fer2013=FER2013))
    assert {r.dataset_type for r in loaded.data.eval_results} == {"emorec-demo"}
    assert "That is a separate run" in loaded.text and "| 7 classes | 0.712 |" in loaded.text

    params_raw["data"]["source"] = "fer2013"
    loaded = ModelCard.load(_card(Params(params_raw), models_dir, fer2013=FER2013))
    results = {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value
               for r in loaded.data.eval_results}
    assert results[("fer2013", "7 classes", "accuracy")] == 0.712
    assert results[("fer2013", "7 classes", "f1")] == 0.701
    assert results[("fer2013", "6 classes (disgust -> angry)", "accuracy")] == 0.72
    text = loaded.text
    assert "| 7 classes | 0.712 | 0.701 |" in text and "PrivateTest (official Usage)" in text
    assert "INT8 model accuracy 0.709" in text and "commit `abc123`" in text
    assert "absent" not in text and "separate run" not in text
    assert "training 1.0 h (" in text

    # a fine-tune: the card counts the start weights' training too
    two_stage = FER2013 | {"train": {"wall_time_s": 3600.0, "total_wall_time_s": 6480.0}}
    text = ModelCard.load(_card(Params(params_raw), models_dir, fer2013=two_stage)).text
    assert "training 1.8 h including the start weights" in text


def test_publish_refuses_missing_files_bad_ids_and_a_missing_token(models_dir, params):
    card = _card(params, models_dir)
    label_map = models_dir / "label_map.json"
    with pytest.raises(PublishError, match="USER/NAME"):
        publish("no-slash", models_dir, card, label_map, env={})
    with pytest.raises(PublishError, match="HF_TOKEN"):  # checked before any network call
        publish("me/emorec", models_dir, card, label_map, env={})
    (models_dir / "model.int8.ort").unlink()
    with pytest.raises(PublishError, match="missing: .*model.int8.ort"):
        publish("me/emorec", models_dir, card, label_map, dry_run=models_dir / "x", env={})


def test_cli_dry_run_and_clean_error(models_dir, params, tmp_path, capsys):
    card = _card(params, models_dir)
    args = ["--repo-id", "me/emorec", "--models-dir", str(models_dir), "--card", str(card),
            "--label-map", str(models_dir / "label_map.json")]
    assert main([*args, "--dry-run", str(tmp_path / "dry")]) == 0
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == sorted(PUBLISHED_FILES)
    assert main([*args[:1], "bad", *args[2:], "--dry-run", str(tmp_path / "d2")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --repo-id must look like")


def test_model_card_stage_writes_the_card_without_fer2013(params_raw, tmp_path):
    reports = tmp_path / "reports"
    (reports / "metrics").mkdir(parents=True)
    (reports / "metrics" / "test.json").write_text(json.dumps(TEST_METRICS))
    (reports / "metrics" / "calibration.json").write_text(json.dumps(_calibration_report()))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    proc = run_python([str(STAGES / "model_card.py")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    card = ModelCard.load(tmp_path / "models" / "README.md")
    assert card.data.model_name == f"emorec-{params_raw['train']['model']}"
    assert "No FER2013 figures yet" in card.text

    (reports / "metrics" / "test.json").unlink()
    missing = run_python([str(STAGES / "model_card.py")], cwd=tmp_path)
    assert missing.returncode == 2 and "report not found" in missing.stderr


# -- the shipped real-face model folder ---------------------------------------------------------
def test_dry_run_of_the_shipped_model_is_a_complete_repo_loaded_offline(tmp_path, monkeypatch):
    """``python -m emorec.publish --dry-run DIR`` (no other option) publishes the folder
    ``serve.shipped_model`` names: the card parses with huggingface_hub offline, its
    model-index metrics read back, and the usage example runs the model on a real face."""
    import subprocess
    import sys

    import huggingface_hub
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from PIL import Image

    from emorec.inference import OnnxClassifier

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "hf"
    proc = run_python(["-m", "emorec.publish", "--dry-run", str(out)], REPO, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    shipped = REPO / params["serve"]["shipped_model"]
    assert sorted(p.name for p in out.iterdir()) == sorted(FOLDER_FILES)
    assert (out / "model.int8.onnx").read_bytes() == (shipped / "model.int8.onnx").read_bytes()

    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "emorec-resnet18" and card.data.library_name == "onnx"
    name, results = model_index_to_eval_results(metadata_load(out / "README.md")["model-index"])
    assert name == "emorec-resnet18"
    # the shipped folder's own report (reports/fer2013.json, reports/multisource.json, ...)
    report = json.loads((REPO / "reports" / f"{shipped.name}.json").read_text())
    for metric, key in (("accuracy", "accuracy"), ("f1", "macro_f1")):
        values = [r.metric_value for r in results if r.metric_type == metric]
        assert report["test"][key] == pytest.approx(values[0], abs=1e-4), metric
    assert "## How to use" in card.text and "example.py" in card.text
    assert "model.int8.ort" not in card.text.split("## How to use")[1]  # not in this repo

    config = json.loads((out / "config.json").read_text())
    reference = OnnxClassifier(shipped / "model.int8.onnx")
    assert config["classes"] == reference.classes == list(
        json.loads((out / "label_map.json").read_text()))
    assert config["image"] == {**config["image"], "size": 64, "mean": 0.5, "std": 0.5,
                               "grayscale": True}
    assert config["temperature"] == pytest.approx(reference.temperature)
    assert config["face_crop"]["margin"] == params["serve"]["face_margin"]

    # the usage example, run as a user would, on a real face crop (the astronaut's smile)
    from facephotos import PHOTOS, TRUTH

    x, y, w, h = TRUTH["astronaut"]
    face = Image.fromarray(PHOTOS["astronaut"]).crop((x, y, x + w, y + h))
    face.save(tmp_path / "face.png")
    run = subprocess.run([sys.executable, str(out / "example.py"), str(tmp_path / "face.png")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    want = reference.predict_images([face])[0]
    got = np.array([answer["probabilities"][c] for c in reference.classes])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert answer["label"] == reference.classes[int(want.argmax())] == "happy"
