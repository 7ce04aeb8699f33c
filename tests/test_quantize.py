"""Quantize stage: a real INT8 QDQ model, per-channel weights, an ORT-format copy, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from imagesplits import make_split
from stagerun import STAGES, run_python

from emorec.config import Params
from emorec.inference import META_CLASSES, META_IMAGE, OnnxClassifier
from emorec.quantize import QuantizeSettings, run_quantize


def small_params(raw: dict) -> dict:
    raw["quantize"].update(latency_repeats=3, latency_warmup=1, calibration_images=16,
                           calibration_batch=8)
    return raw


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_checkpoint, tiny_onnx, repo_params_raw):
    """Quantize the exported tiny model once for the whole module."""
    root = tmp_path_factory.mktemp("quant")
    raw = small_params(json.loads(json.dumps(repo_params_raw)))
    raw["image"]["size"] = 32
    params = Params(raw)
    csvs = make_split(root, params.classes, {"val": 20, "test": 18})
    fp32 = tiny_onnx["fp32"]
    int8, ort_path = root / "model.int8.onnx", root / "model.int8.ort"
    report = run_quantize(tiny_checkpoint, fp32, csvs["val"], csvs["test"], int8, ort_path,
                          QuantizeSettings.from_params(params), params.classes, root=root)
    return {"root": root, "fp32": fp32, "int8": int8, "ort": ort_path, "report": report,
            "params": params, "csvs": csvs}


def test_int8_model_is_static_qdq_per_channel(quantized):
    model = onnx.load(str(quantized["int8"]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    inits = {i.name: i for i in model.graph.initializer}
    int8_weights = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8
                    and len(i.dims) == 4]
    assert int8_weights, "conv weights must be stored as INT8"
    # per_channel: the scale of a conv weight is a vector with one entry per output channel
    weight_dq = [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]
    scale = inits[weight_dq[0].input[1]]
    assert list(scale.dims) == [inits[weight_dq[0].input[0]].dims[0]]
    assert quantized["int8"].stat().st_size < 0.4 * quantized["fp32"].stat().st_size


def test_metadata_survives_quantization_and_ort_conversion(quantized):
    for path in (quantized["int8"], quantized["ort"]):
        clf = OnnxClassifier(path)
        assert clf.classes == quantized["params"].classes
        assert clf.preprocess.size == 32
        assert META_CLASSES not in clf.info()["metadata"] and META_IMAGE not in clf.info()[
            "metadata"]
    assert "emorec.quantization" in OnnxClassifier(quantized["int8"]).metadata


def test_int8_and_ort_models_agree_with_fp32(quantized):
    x = np.random.default_rng(1).normal(size=(8, 1, 32, 32)).astype(np.float32)
    fp32 = OnnxClassifier(quantized["fp32"]).probabilities(x)
    int8 = OnnxClassifier(quantized["int8"]).probabilities(x)
    ort_probs = OnnxClassifier(quantized["ort"]).probabilities(x)
    assert not np.allclose(fp32, int8, atol=1e-7), "quantization must change the numbers a bit"
    assert np.max(np.abs(fp32 - int8)) < 0.1
    np.testing.assert_allclose(ort_probs, int8, atol=1e-3)


def test_report_fields(quantized):
    report = quantized["report"]
    assert report["test_images"] == 18
    for name in ("fp32", "int8"):
        test = report[name]["test"]
        assert 0 <= test["accuracy"] <= 1 and 0 <= test["macro_f1"] <= 1
        assert report[name]["bytes"] == Path(report[name]["path"]).stat().st_size
    assert report["calibration"]["images"] == 16 and report["calibration"]["format"] == "QDQ"
    assert report["ort"]["top1_agreement_with_int8"] == 1.0
    for batch in ("batch_1", "batch_32"):
        for backend in ("pytorch_eager", "onnx_fp32", "onnx_int8"):
            timing = report["latency"][batch][backend]
            assert timing["n"] == 3 and 0 < timing["min_ms"] <= timing["median_ms"]
    t = report["targets"]
    b1 = report["latency"]["batch_1"]
    ratio = b1["onnx_int8"]["median_ms"] / b1["pytorch_eager"]["median_ms"]
    assert t["int8_vs_eager_latency_ratio_batch_1"] == pytest.approx(ratio)
    assert t["latency_target_met"] == (ratio <= 0.35)
    drop = report["fp32"]["test"]["macro_f1"] - report["int8"]["test"]["macro_f1"]
    assert t["macro_f1_drop"] == pytest.approx(drop)
    assert t["all_met"] == (t["latency_target_met"] and t["f1_target_met"])


def test_stage_does_not_fail_on_missed_targets(quantized, tiny_checkpoint, tmp_path):
    """Impossible targets are reported as missed, and the stage still succeeds."""
    raw = small_params(quantized["params"].to_dict())
    raw["quantize"].update(max_latency_ratio=0.0, max_f1_drop=0.0,
                           latency_batch_sizes=[1], latency_repeats=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    make_split(tmp_path, raw["classes"], {"val": 8, "test": 8}, seed=3)
    proc = run_python(
        [str(STAGES / "quantize.py"), "--checkpoint",
         str(tiny_checkpoint), "--fp32", str(quantized["fp32"]), "--val", "val.csv",
         "--test", "test.csv", "--out", "m/model.int8.onnx", "--ort", "m/model.int8.ort",
         "--report", "r/quantize.json"],
        cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r" / "quantize.json").read_text())
    assert report["targets"]["latency_target_met"] is False and not report["targets"]["all_met"]
    assert (tmp_path / "m" / "model.int8.ort").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.int8.onnx",
                                                                  "model.int8.ort"]
