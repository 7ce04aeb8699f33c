"""Fixtures shared across the test suite: the repo's params, a tiny random model checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from emorec.config import Params
from emorec.models import create_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Tests run on 2-core CI machines next to each other; one thread each keeps them predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_params_raw() -> dict:
    """The committed params.yaml as a dict (copy before mutating)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def params_raw(repo_params_raw) -> dict:
    """A private, mutable copy of params.yaml with a small image size for fast tests."""
    raw = copy.deepcopy(repo_params_raw)
    raw["image"]["size"] = 32
    return raw


@pytest.fixture
def params(params_raw) -> Params:
    return Params(params_raw)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, repo_params_raw) -> Path:
    """A randomly initialised resnet10t checkpoint on 32 px input, in the train stage's format."""
    torch.manual_seed(0)
    classes = list(repo_params_raw["classes"])
    model = create_model("resnet10t", num_classes=len(classes))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    raw = copy.deepcopy(repo_params_raw)
    raw["image"]["size"] = 32
    save_checkpoint(path, model, model_name="resnet10t", classes=classes, image=raw["image"],
                    params=raw, data_version={}, epoch=0, metrics={})
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, repo_params_raw) -> dict:
    """``tiny_checkpoint`` exported to FP32 ONNX by the pipeline's code, once per session.

    Returns ``root`` (the folder), ``csvs`` (a 12-image ``val`` split under it, from
    :func:`imagesplits.make_split`, used for the parity batch) and ``fp32`` (the model path).
    """
    from imagesplits import make_split

    from emorec.export import ExportSettings, export_model

    root = tmp_path_factory.mktemp("tiny_onnx")
    raw = copy.deepcopy(repo_params_raw)
    raw["image"]["size"] = 32
    params = Params(raw)
    csvs = make_split(root, params.classes, {"val": 12})
    fp32 = root / "models" / "model.onnx"
    export_model(tiny_checkpoint, csvs["val"], fp32, ExportSettings.from_params(params),
                 params.classes, root=root)
    return {"root": root, "csvs": csvs, "fp32": fp32}
