"""fp16 safetensors weights (``python -m emorec.weights export``) as a fine-tune start point.

A tiny timm model trained for other classes is exported by the real command, then the train
stage fine-tunes from it (``train.pretrained: X.safetensors``) for one epoch on the tiny bar
dataset with a different class count: the feature layers must start from the file's weights
(cast to fp32), the head must be re-initialised for the new classes, and the log must say so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from stagerun import STAGES, run_python
from tinydata import CLASSES, make_dataset, tiny_params, write_params

from emorec.models import create_model, save_checkpoint
from emorec.weights import WeightsError, load_safetensors_into

SOURCE_CLASSES = ["angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"]
MODEL = "test_resnet"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A 7-class checkpoint in the train stage's format, exported by the command line."""
    tmp = tmp_path_factory.mktemp("weights")
    torch.manual_seed(11)
    model = create_model(MODEL, num_classes=len(SOURCE_CLASSES))
    save_checkpoint(tmp / "best.pt", model, model_name=MODEL, classes=SOURCE_CLASSES,
                    image={"size": 32, "mean": 0.5, "std": 0.5}, epoch=3)
    out = tmp / "start" / "weights.fp16.safetensors"
    proc = run_python(["-m", "emorec.weights", "export", str(tmp / "best.pt"), str(out)])
    assert proc.returncode == 0, proc.stderr
    return out


def test_export_writes_fp16_safetensors_and_a_sidecar(exported):
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["model_name"] == MODEL and sidecar["classes"] == SOURCE_CLASSES
    assert sidecar["image"]["size"] == 32 and sidecar["dtype"] == "float16"
    with safe_open(str(exported), "pt") as f:
        assert json.loads(f.metadata()["model_name"]) == MODEL
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if "num_batches" not in k}
    assert dtypes == {torch.float16}


def test_fine_tune_from_safetensors_with_other_classes(exported, tmp_path, repo_params_raw):
    make_dataset(tmp_path)
    assert len(CLASSES) != len(SOURCE_CLASSES)
    # epoch 1 of a pretrained start trains the head only (train.freeze_backbone_epochs), so the
    # backbone in best.pt must be the file's weights exactly
    params = write_params(tmp_path / "params.yaml",
                          tiny_params(repo_params_raw, model=MODEL, epochs=1,
                                      freeze_backbone_epochs=1, pretrained=str(exported)))
    proc = run_python([str(STAGES / "train.py"), "--params", str(params), "--no-progress"],
                      tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"{exported.name} has {len(SOURCE_CLASSES)} classes, train has {len(CLASSES)}: "
            "classifier head fc re-initialised") in proc.stderr

    saved = torch.load(tmp_path / "models/best.pt", weights_only=False)["state_dict"]
    assert saved["fc.weight"].shape[0] == len(CLASSES)
    with safe_open(str(exported), "pt") as f:
        start = f.get_tensor("conv1.0.weight")
    assert start.dtype == torch.float16 and saved["conv1.0.weight"].dtype == torch.float32
    torch.testing.assert_close(saved["conv1.0.weight"], start.float())


def test_same_classes_keep_the_trained_head(exported):
    model = create_model(MODEL, num_classes=len(SOURCE_CLASSES), pretrained=str(exported))
    with safe_open(str(exported), "pt") as f:
        head = f.get_tensor("fc.weight").float()
    torch.testing.assert_close(model.state_dict()["fc.weight"], head)


def test_weights_of_another_model_fail_with_one_clear_error(exported, tmp_path):
    other = tmp_path / exported.name
    shutil.copy(exported, other)
    with pytest.raises(WeightsError, match="holds test_resnet weights, but train.model is "
                                           "resnet10t"):
        shutil.copy(exported.with_suffix(".json"), other.with_suffix(".json"))
        create_model("resnet10t", num_classes=3, pretrained=str(other))
    other.with_suffix(".json").unlink()  # without the sidecar the layers themselves disagree
    with pytest.raises(WeightsError, match="does not fit resnet10t"):
        load_safetensors_into(create_model("resnet10t", num_classes=3), other, "resnet10t")


def test_checkpoint_turns_shipped_weights_back_into_a_train_stage_checkpoint(exported, tmp_path):
    from emorec.models import load_checkpoint

    out = tmp_path / "ws" / "models" / "best.pt"
    proc = run_python(["-m", "emorec.weights", "checkpoint", str(exported), str(out)])
    assert proc.returncode == 0, proc.stderr
    model, meta = load_checkpoint(out)
    assert meta["model_name"] == MODEL and meta["classes"] == SOURCE_CLASSES
    assert meta["image"] == {"size": 32, "mean": 0.5, "std": 0.5} and meta["epoch"] == 3
    torch.manual_seed(11)  # the exported fixture's model, rebuilt
    original = create_model(MODEL, num_classes=len(SOURCE_CLASSES)).eval()
    batch = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), original(batch), atol=2e-2, rtol=2e-2)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values()
               if v.is_floating_point())


def test_checkpoint_needs_the_sidecar(exported, tmp_path):
    bare = tmp_path / exported.name
    shutil.copy(exported, bare)
    proc = run_python(["-m", "emorec.weights", "checkpoint", str(bare), str(tmp_path / "b.pt")])
    assert proc.returncode == 2 and "no sidecar" in proc.stderr
    assert not (tmp_path / "b.pt").exists()
