"""Quantize stage: a real INT8 QDQ model, per-channel weights, an ORT-format copy, the report."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from imagesplits import make_split
from onnx import numpy_helper
from stagerun import STAGES, run_python

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.inference import META_CLASSES, META_IMAGE, OnnxClassifier
from emorec.quantize import (
    QuantizeSettings,
    calibration_images,
    cpu_kernels,
    quantize_model,
    run_quantize,
)

# x86 without VNNI sums pairs of uint8 x int8 products in a saturating int16 (VPMADDUBSW).
INT16_MAX = 32767
# qemu's model of a Haswell CPU: AVX2, no AVX-512, no VNNI (the "noTSX" variant runs under TCG).
NO_VNNI_CPU = "Haswell-noTSX"
QEMU = shutil.which("qemu-x86_64")


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


def int8_weights(path: Path) -> dict[str, np.ndarray]:
    """The INT8 weight tensors (conv and gemm initialisers) of a quantized model, as integers."""
    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i).astype(np.int32) for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2}


def test_default_weights_are_7_bit_so_no_cpu_saturates(quantized):
    """params.yaml's default (reduce_range) keeps every weight in [-64, 64].

    Without VNNI, x86 adds two uint8 x int8 products into an int16 that saturates: any pair of
    7-bit weights times the largest activation (255) still fits, 8-bit ones do not.
    """
    assert QuantizeSettings.from_params(quantized["params"]).reduce_range is True
    weights = int8_weights(quantized["int8"])
    assert weights
    for name, w in weights.items():
        assert np.abs(w).max() <= 64, f"{name} uses 8-bit weights"
        assert 255 * 2 * np.abs(w).max() <= INT16_MAX
    meta = json.loads(OnnxClassifier(quantized["int8"]).metadata["emorec.quantization"])
    assert meta["reduce_range"] is True
    assert quantized["report"]["calibration"]["reduce_range"] is True


def test_reduce_range_false_gives_8_bit_weights(quantized, tmp_path):
    """The switch reaches onnxruntime's quantizer: off, per-channel weights use all 8 bits."""
    settings = dataclasses.replace(QuantizeSettings.from_params(quantized["params"]),
                                   reduce_range=False)
    int8 = tmp_path / "model.int8.onnx"
    quantize_model(quantized["fp32"], int8, _calibration(quantized), settings)
    assert max(np.abs(w).max() for w in int8_weights(int8).values()) == 127


@pytest.mark.parametrize("value", [None, "yes", 1])
def test_reduce_range_must_be_a_boolean(params_raw, value):
    params_raw["quantize"]["reduce_range"] = value
    with pytest.raises(ParamsError, match="quantize.reduce_range"):
        QuantizeSettings.from_params(Params(params_raw))


def _calibration(quantized) -> np.ndarray:
    params = quantized["params"]
    return calibration_images(quantized["csvs"]["val"], params.classes,
                              OnnxClassifier(quantized["fp32"]), 16, params.seed,
                              quantized["root"])


_LOGITS_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
x = np.load(sys.argv[1])
out = {}
for i, path in enumerate(sys.argv[3:]):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out[f"m{i}"] = session.run(None, {session.get_inputs()[0].name: x})[0]
np.savez(sys.argv[2], **out)
"""


def _logits(models: list[Path], x: np.ndarray, work: Path, cpu: str | None) -> list[np.ndarray]:
    """Logits of each model from onnxruntime in a subprocess, under qemu emulating ``cpu``."""
    np.save(work / "x.npy", x)
    command = [sys.executable, "-c", _LOGITS_SCRIPT, str(work / "x.npy"), str(work / "out.npz"),
               *map(str, models)]
    if cpu:
        command = [QEMU, "-cpu", cpu, *command]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(work / "out.npz") as out:
        return [out[f"m{i}"] for i in range(len(models))]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or QEMU is None,
                    reason="needs x86_64 and qemu-user (apt-get install qemu-user) to emulate a "
                           "CPU without VNNI")
def test_int8_model_gives_the_same_numbers_on_a_cpu_without_vnni(quantized, tmp_path):
    """The default INT8 model computes the same logits on a Haswell (AVX2, no VNNI) as here.

    onnxruntime picks its int8 kernels from CPUID, so the no-VNNI path can only be forced by
    emulating such a CPU. An 8-bit-weight model run alongside proves the emulated CPU really
    takes the saturating path: its logits move, the 7-bit model's do not.
    """
    settings = dataclasses.replace(QuantizeSettings.from_params(quantized["params"]),
                                   reduce_range=False)
    calib = _calibration(quantized)
    eight_bit = tmp_path / "model.8bit.onnx"
    quantize_model(quantized["fp32"], eight_bit, calib, settings)
    models = [quantized["int8"], eight_bit]
    native = _logits(models, calib, tmp_path, cpu=None)
    emulated = _logits(models, calib, tmp_path, cpu=NO_VNNI_CPU)
    if cpu_kernels()["int8_dot_product"] == "vnni":
        assert np.max(np.abs(native[1] - emulated[1])) > 1e-3, "emulation did not saturate"
    np.testing.assert_allclose(emulated[0], native[0], rtol=0, atol=1e-5)


def test_cpu_kernels_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f\n")
    info = cpu_kernels(cpuinfo)
    assert info["model_name"] == "Test CPU"
    assert info["flags"]["avx2"] and info["flags"]["avx512f"]
    assert not info["flags"]["avx512_vnni"] and not info["flags"]["avx_vnni"]
    assert info["int8_dot_product"] == "vpmaddubsw"
    cpuinfo.write_text("model name\t: V\nflags\t\t: avx2 avx512_vnni\n")
    assert cpu_kernels(cpuinfo)["int8_dot_product"] == "vnni"
    unknown = cpu_kernels(tmp_path / "absent")
    assert unknown["int8_dot_product"] == "unknown" and unknown["flags"]["avx2"] is None


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
    cpu = report["cpu"]
    assert cpu["logical_cores"] >= 1 and cpu["model_name"]
    assert set(cpu["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                 "avx512_bf16"}
    assert cpu["int8_dot_product"] in ("vnni", "vpmaddubsw", "unknown")
    check = report["kernel_check"]
    assert check["n_images"] == 16 and check["top1_agreement"] == 1.0
    assert check["max_abs_prob_diff"] < 0.02
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


def test_cosine_head_at_opset_18_quantizes_without_symbolic_shapes(quantized, tmp_path):
    """LDAM's cosine head exports to opset-18 ReduceL2, which onnxruntime's symbolic shape
    inference cannot read: the quantizer falls back to ONNX's and still gives a faithful model."""
    import timm
    import torch

    from emorec.export import export_with_fallback
    from emorec.losses import use_cosine_classifier

    torch.manual_seed(0)
    model = use_cosine_classifier(timm.create_model("resnet18", num_classes=7, in_chans=1), 30.0)
    fp32, int8 = tmp_path / "cosine.onnx", tmp_path / "cosine.int8.onnx"
    export_with_fallback(model.eval(), torch.randn(1, 1, 32, 32), fp32, [18], dynamo=False)
    assert "ReduceL2" in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    calib = _calibration(quantized)
    quantize_model(fp32, int8, calib, QuantizeSettings.from_params(quantized["params"]))
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert json.loads(props["emorec.quantization"])["symbolic_shape_inference"] is False
    assert {n.op_type for n in onnx.load(str(int8)).graph.node} >= {"QuantizeLinear", "Conv"}
    with torch.no_grad():
        expected = model(torch.from_numpy(calib)).argmax(1).numpy()
    import onnxruntime as ort
    got = ort.InferenceSession(str(int8)).run(None, {"input": calib})[0].argmax(1)
    assert (got == expected).mean() >= 0.8
