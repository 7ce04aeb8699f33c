"""Export stage: ONNX file, metadata, dynamic batch, opset fallback and the parity gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from imagesplits import make_split
from stagerun import STAGES, run_python

from emorec.errors import ParamsError
from emorec.export import ExportError, ExportSettings, check_parity, export_model
from emorec.inference import (
    META_CLASSES,
    META_IMAGE,
    META_MIN_CONFIDENCE,
    META_TEMPERATURE,
    UNCERTAIN,
    OnnxClassifier,
    describe_row,
    label_or_uncertain,
    resolve_min_confidence,
)
from emorec.models import load_checkpoint, with_tta


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory, repo_params_raw) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("data")
    return root, make_split(root, repo_params_raw["classes"], {"val": 12, "test": 12})


def test_export_writes_checked_self_describing_model(tiny_checkpoint, split_dir, params,
                                                     tmp_path):
    root, csvs = split_dir
    out = tmp_path / "model.onnx"
    report = export_model(tiny_checkpoint, csvs["val"], out,
                          ExportSettings.from_params(params), params.classes, root=root)

    onnx.checker.check_model(str(out), full_check=True)
    assert report["opset"] == params.get("export.opsets")[0]
    assert report["parity"]["passed"] and report["parity"]["n_images"] == 12
    assert report["parity"]["max_abs_diff"] < 1e-4
    assert report["parity"]["top1_agreement"] == 1.0

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[META_CLASSES]) == params.classes
    assert json.loads(meta[META_IMAGE]) == {"size": 32, "mean": 0.5, "std": 0.5}

    # Dynamic batch axis, and the same numbers as PyTorch for any batch size.
    clf = OnnxClassifier(out)
    model, _ = load_checkpoint(tiny_checkpoint)
    model = with_tta(model, params.get("export.tta"))  # the mirror-average is in the graph
    assert report["tta"] == "flip"
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, 1, 32, 32)).astype(np.float32)
        with torch.inference_mode():
            ref = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
        assert clf.probabilities(x).shape == (n, len(params.classes))
        np.testing.assert_allclose(clf.probabilities(x), ref, atol=1e-5)


def test_opset_fallback_skips_unusable_opsets(tiny_checkpoint, split_dir, params_raw, tmp_path):
    from emorec.config import Params

    params_raw["export"]["opsets"] = [99, 17]  # 99 does not exist (yet): must fall back to 17
    params = Params(params_raw)
    root, csvs = split_dir
    out = tmp_path / "model.onnx"
    report = export_model(tiny_checkpoint, csvs["val"], out, ExportSettings.from_params(params),
                          params.classes, root=root)
    assert report["opset"] == 17
    assert [a["ok"] for a in report["opset_attempts"]] == [False, True]
    assert report["opset_attempts"][0]["error"]
    assert onnx.load(str(out)).opset_import[0].version == 17


def test_dynamo_exporter(tiny_checkpoint, split_dir, params_raw, tmp_path):
    from emorec.config import Params

    params_raw["export"].update(dynamo=True, opsets=[18])
    params = Params(params_raw)
    root, csvs = split_dir
    out = tmp_path / "model.onnx"
    report = export_model(tiny_checkpoint, csvs["val"], out, ExportSettings.from_params(params),
                          params.classes, root=root)
    assert report["dynamo"] and report["parity"]["passed"]
    assert not Path(f"{out}.data").exists()  # one self-contained file
    assert OnnxClassifier(out).probabilities(np.zeros((3, 1, 32, 32), np.float32)).shape == (3, 6)


def test_parity_gate_message():
    report = {"parity": {"passed": False, "n_images": 32, "max_abs_diff": 0.2,
                         "batch1_max_abs_diff": 0.1, "atol": 1e-4, "top1_agreement": 0.5,
                         "min_top1_agreement": 0.99}}
    with pytest.raises(ExportError, match=r"parity failed .* max \|dp\| = 0.2 .*parity_atol"):
        check_parity(report)


def test_temperature_from_calibration_goes_into_metadata_and_probabilities(
        tiny_checkpoint, split_dir, params, tmp_path):
    """The evaluate stage's temperature travels in the file; consumers apply it."""
    from emorec.mobile import MobileSettings, client_config

    root, csvs = split_dir
    out = tmp_path / "model.onnx"
    report = export_model(tiny_checkpoint, csvs["val"], out, ExportSettings.from_params(params),
                          params.classes, root=root,
                          calibration={"temperature": 2.5, "min_confidence": 0.42})
    assert report["parity"]["passed"] and report["temperature"] == 2.5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert float(meta[META_TEMPERATURE]) == 2.5 and float(meta[META_MIN_CONFIDENCE]) == 0.42

    clf = OnnxClassifier(out)
    x = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    logits = clf.logits(x).astype(np.float64)
    expected = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    np.testing.assert_allclose(clf.probabilities(x), expected, atol=1e-6)
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(clf.probabilities(x, calibrated=False), raw, atol=1e-6)
    assert clf.info()["temperature"] == 2.5 and clf.suggested_min_confidence == 0.42
    assert resolve_min_confidence("auto", clf.suggested_min_confidence) == 0.42
    # the phone app reads the same temperature from config.json
    assert client_config(clf, MobileSettings.from_params(params))["temperature"] == 2.5


def test_model_without_temperature_uses_plain_softmax(tiny_onnx):
    clf = OnnxClassifier(tiny_onnx["fp32"])
    assert META_TEMPERATURE not in clf.metadata and clf.temperature == 1.0
    assert clf.suggested_min_confidence is None
    assert resolve_min_confidence("auto", clf.suggested_min_confidence) == 0.0  # never abstain


def test_uncertain_below_the_threshold_with_probabilities_still_given():
    classes = ["angry", "happy", "sad"]
    probs = np.array([0.5, 0.3, 0.2])
    assert label_or_uncertain(probs, 0.5, classes) == "angry"
    assert label_or_uncertain(probs, 0.51, classes) == UNCERTAIN == "uncertain"
    row = describe_row(probs, classes, min_confidence=0.6)
    assert row["label"] == "uncertain" and row["predicted"] == "angry"
    assert row["confidence"] == 0.5 and row["probabilities"]["sad"] == pytest.approx(0.2)
    assert set(describe_row(probs, classes)) == {"label", "confidence", "probabilities"}
    assert resolve_min_confidence(0.7, 0.42) == 0.7 and resolve_min_confidence(0, None) == 0.0
    for bad in (1.5, -0.1, "sometimes", True, None):
        with pytest.raises(ParamsError, match="serve.min_confidence"):
            resolve_min_confidence(bad, 0.42)


def _stage_repo(tmp_path: Path, params_raw: dict) -> Path:
    """A working directory laid out like the repo for running stages/export.py."""
    make_split(tmp_path, params_raw["classes"], {"val": 6})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    return tmp_path


def test_stage_script_writes_report_and_fails_clearly_on_parity(tiny_checkpoint, params_raw,
                                                                tmp_path):
    repo = _stage_repo(tmp_path, params_raw)
    args = [str(STAGES / "export.py"), "--checkpoint",
            str(tiny_checkpoint), "--val", "val.csv", "--out", "m/model.onnx",
            "--report", "r/export.json", "--calibration", "calibration.json"]
    missing = run_python(args, cwd=repo)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        "error: calibration report not found: calibration.json (run `dvc repro evaluate`)")

    (repo / "calibration.json").write_text(json.dumps({"temperature": 1.7}))
    ok = run_python(args, cwd=repo)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((repo / "r" / "export.json").read_text())["parity"]["passed"]
    assert OnnxClassifier(repo / "m" / "model.onnx").temperature == 1.7

    # A tolerance no float computation can meet with non-zero differences -> one-line failure.
    params_raw["export"]["parity_atol"] = 0.0
    params_raw["export"]["min_top1_agreement"] = 1.0
    # Random model + random inputs: probability differences of exactly zero everywhere would
    # be a coincidence; if it happens the export is bit-exact and the gate rightly passes.
    (repo / "params.yaml").write_text(yaml.safe_dump(params_raw))
    bad = run_python(args, cwd=repo)
    diff = json.loads((repo / "r" / "export.json").read_text())["parity"]["max_abs_diff"]
    if diff > 0:
        assert bad.returncode == 2
        last = bad.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ONNX/PyTorch parity failed") and "parity_atol" in last
        assert "Traceback" not in bad.stderr


def test_flip_tta_averages_the_mirror_image(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    x = torch.randn(3, 1, 32, 32)
    with torch.inference_mode():
        expected = (model(x) + model(x.flip(3))) / 2
        assert torch.allclose(with_tta(model, "flip")(x), expected, atol=1e-6)
        assert with_tta(model, "none") is model
        # a mirrored input gets the same answer: the average is symmetric by construction
        assert torch.allclose(with_tta(model, "flip")(x.flip(3)), expected, atol=1e-5)
