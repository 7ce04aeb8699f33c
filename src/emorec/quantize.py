"""FP32 ONNX -> INT8 static quantization (QDQ), its accuracy cost and its speed-up.

Static rather than dynamic quantization: convolution activations get fixed INT8 ranges computed
once from real validation faces (calibration), so inference needs no per-call range search, which
is what makes small CNNs fast on CPU. ``quant_pre_process`` (shape inference + graph
optimisation) runs first because the quantizer needs known tensor shapes to choose per-channel
axes and fuses Conv+BN patterns better on an optimised graph.

Weights are quantized to 7 bits by default (``quantize.reduce_range``). x86 CPUs without VNNI
multiply uint8 activations by int8 weights with VPMADDUBSW, which adds two products into a
*saturating* int16: 255 * 127 * 2 overflows it, so the same INT8 file gives different, less
accurate answers there than on VNNI CPUs or in onnxruntime-web's WASM kernels, which sum in 32
bits. With weights in [-64, 64] the largest pair sum (255 * 64 * 2 = 32640) fits, so every CPU
and the browser compute the same integers, at the same speed. The report records this machine's
int8 instruction sets (``cpu``) and checks that its fused INT8 kernels agree with onnxruntime's
unfused reference (``kernel_check``).

The report compares FP32 and INT8 on the *test* split and times PyTorch eager, ONNX FP32 and ONNX
INT8 in the same run. The latency/F1 targets are benchmark results recorded as pass/fail fields;
the stage never fails on them (a slow CI box must not break the pipeline).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from emorec.config import Params
from emorec.errors import EmorecError, ParamsError
from emorec.hardware import read_cpuinfo
from emorec.inference import (
    INPUT_NAME,
    OnnxClassifier,
    add_metadata,
    predict_in_batches,
    preprocess_files,
    split_image_paths,
)
from emorec.labels import label_map
from emorec.latency import measure_interleaved
from emorec.metrics import classification_metrics
from emorec.split_csv import read_split

log = logging.getLogger(__name__)

_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}
_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
# /proc/cpuinfo flags that decide which int8 kernels onnxruntime's MLAS picks on x86.
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
# Any of these gives a non-saturating u8*s8 dot product (VPDPBUSD or AMX tiles).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


class QuantizeError(EmorecError):
    """Quantization or the ORT-format conversion failed."""


@dataclass(frozen=True)
class QuantizeSettings:
    """The ``quantize`` section of params.yaml, validated."""

    calibration_images: int
    calibration_batch: int
    calibrate_method: str
    per_channel: bool
    reduce_range: bool
    quant_format: str
    activation_type: str
    weight_type: str
    eval_batch: int
    latency_batch_sizes: list[int]
    latency_repeats: int
    latency_warmup: int
    latency_threads: int
    max_latency_ratio: float
    max_f1_drop: float
    seed: int

    @classmethod
    def from_params(cls, params: Params) -> QuantizeSettings:
        q = params.section("quantize")
        sizes = q.sequence("latency_batch_sizes")
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                for s in sizes):
            raise ParamsError("quantize.latency_batch_sizes",
                              f"must be positive integers, got {sizes}")
        return cls(
            calibration_images=q.integer("calibration_images", low=1),
            calibration_batch=q.integer("calibration_batch", low=1),
            calibrate_method=q.choice("calibrate_method", _METHODS),
            per_channel=q.boolean("per_channel"),
            reduce_range=q.boolean("reduce_range"),
            quant_format=q.choice("format", _FORMATS),
            activation_type=q.choice("activation_type", _TYPES),
            weight_type=q.choice("weight_type", _TYPES),
            eval_batch=q.integer("eval_batch", low=1),
            latency_batch_sizes=list(sizes),
            latency_repeats=q.integer("latency_repeats", low=1),
            latency_warmup=q.integer("latency_warmup", low=0),
            latency_threads=q.integer("latency_threads", low=0),
            max_latency_ratio=q.number("max_latency_ratio", low=0),
            max_f1_drop=q.number("max_f1_drop", low=0),
            seed=params.seed,
        )


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed validation images to the calibrator, ``batch`` images at a time."""

    def __init__(self, images: np.ndarray, batch: int):
        self.images = images
        self.batch = batch
        self._starts = iter(range(0, len(images), batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._starts, None)
        if start is None:
            return None
        return {INPUT_NAME: self.images[start:start + self.batch]}

    def rewind(self) -> None:
        self._starts = iter(range(0, len(self.images), self.batch))


def calibration_images(val_csv: Path, classes: list[str], model: OnnxClassifier, count: int,
                       seed: int, root: Path = Path(".")) -> np.ndarray:
    """A seeded random sample of up to ``count`` validation images, preprocessed."""
    frame = read_split(val_csv, classes)
    if count < len(frame):
        frame = frame.sample(n=count, random_state=seed)
    return preprocess_files(split_image_paths(frame, root, val_csv), model.preprocess)


def copy_metadata(source: Path, target: Path, extra: dict[str, str]) -> None:
    """Carry the export metadata (classes, preprocessing) into the quantized model."""
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False)
            .metadata_props}
    meta.update(extra)
    proto = onnx.load(str(target))
    add_metadata(proto, meta)
    onnx.save(proto, str(target))


def pre_process(fp32_path: Path, prepped: Path) -> bool:
    """``quant_pre_process`` into ``prepped``; returns whether symbolic shape inference ran.

    onnxruntime's symbolic shape inference fails on some valid graphs (e.g. opset-18 ``ReduceL2``
    with its axes as an input, which the cosine head of LDAM runs export to), and its maintainers
    call it prone to fail and not needed for standard ONNX models (onnxruntime PR #21330). ONNX's
    own shape inference is enough for a static-shape CNN, so a failure falls back to it.
    """
    try:
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=False)
        return True
    except Exception as err:  # the symbolic pass raises untyped errors (TypeError, KeyError...)
        log.warning("symbolic shape inference failed on %s (%s: %s); using ONNX shape inference",
                    fp32_path, type(err).__name__, err)
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        return False


def quantize_model(fp32_path: Path, int8_path: Path, calib: np.ndarray,
                   settings: QuantizeSettings) -> None:
    """Pre-process, calibrate and quantize ``fp32_path`` into ``int8_path`` (metadata kept)."""
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        try:
            symbolic = pre_process(fp32_path, prepped)
            quantize_static(
                str(prepped), str(int8_path),
                calibration_data_reader=ImageCalibrationReader(calib, settings.calibration_batch),
                quant_format=_FORMATS[settings.quant_format],
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=_TYPES[settings.activation_type],
                weight_type=_TYPES[settings.weight_type],
                calibrate_method=_METHODS[settings.calibrate_method],
                calibration_providers=["CPUExecutionProvider"],
            )
        except Exception as err:  # onnxruntime's quantizer raises untyped errors
            raise QuantizeError(f"static quantization of {fp32_path} failed: "
                                f"{type(err).__name__}: {err}") from err
    copy_metadata(fp32_path, int8_path, {
        "emorec.quantization": json.dumps({
            "format": settings.quant_format, "per_channel": settings.per_channel,
            "reduce_range": settings.reduce_range, "activation_type": settings.activation_type,
            "weight_type": settings.weight_type,
            "calibrate_method": settings.calibrate_method, "calibration_images": len(calib),
            "symbolic_shape_inference": symbolic}),
    })


def cpu_kernels(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """This CPU's model and int8-relevant instruction sets, for the report.

    INT8 latency, and on x86 without VNNI also INT8 accuracy unless weights are 7-bit, depend on
    which kernels onnxruntime picks, so a report is only comparable with one from a CPU of the
    same kind. Linux's /proc/cpuinfo is read; elsewhere the flags are reported as unknown (None).
    """
    model, flags = read_cpuinfo(cpuinfo)
    return {
        "model_name": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": {f: (f in flags) if flags is not None else None for f in CPU_FLAGS},
        "int8_dot_product": _dot_product_kind(flags),
    }


def _dot_product_kind(flags: set[str] | None) -> str:
    """How u8*s8 products are summed on this CPU: 'vnni' (exact), 'vpmaddubsw' (saturating int16
    pair sums, safe only with 7-bit weights) or 'unknown' (not x86 Linux)."""
    if not flags:
        return "unknown"
    if any(f in flags for f in VNNI_FLAGS):
        return "vnni"
    return "vpmaddubsw" if "avx2" in flags or "avx512bw" in flags else "unknown"


def cpu_probabilities(model_path: Path, images: np.ndarray,
                      level: ort.GraphOptimizationLevel) -> np.ndarray:
    """Softmax of a model run by onnxruntime's CPU provider at one graph optimisation level."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0].astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def kernel_agreement(int8_path: Path, images: np.ndarray) -> dict[str, Any]:
    """This CPU's fused INT8 kernels vs onnxruntime's unfused reference, on the same images.

    With graph optimisations off, onnxruntime runs each QDQ group as DequantizeLinear -> float
    op -> QuantizeLinear: the quantized model's arithmetic without int8 kernels. With them on
    (the default, what serving and the report's metrics use) the groups become int8 kernels of
    this CPU. Requantisation rounding alone moves probabilities by up to about 0.01 (measured on
    a tiny random model); saturating kernels (U8S8 with 8-bit weights on a CPU without VNNI) move
    them several times more and start to change top-1 answers.
    """
    reference = cpu_probabilities(int8_path, images, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fused = cpu_probabilities(int8_path, images, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return {"n_images": int(len(images)),
            "max_abs_prob_diff": float(np.max(np.abs(reference - fused))),
            "top1_agreement": float(np.mean(reference.argmax(1) == fused.argmax(1)))}


def convert_to_ort(onnx_path: Path, ort_path: Path) -> None:
    """ORT-format copy of a model for onnxruntime-mobile / react-native runtimes.

    The converter writes several files (the .ort plus operator configs) into a folder; only the
    model is kept, as the one declared output.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in" / onnx_path.name
        src.parent.mkdir()
        shutil.copy2(onnx_path, src)
        out_dir = Path(tmp) / "out"
        try:
            convert_onnx_models_to_ort(src, output_dir=out_dir,
                                       optimization_styles=[OptimizationStyle.Fixed])
        except Exception as err:
            raise QuantizeError(f"ORT-format conversion of {onnx_path} failed: {err}") from err
        produced = sorted(out_dir.rglob("*.ort"))
        if not produced:
            raise QuantizeError(f"ORT-format conversion of {onnx_path} wrote no .ort file")
        ort_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(produced[0], ort_path)


def evaluate(model: OnnxClassifier, test_csv: Path, classes: list[str], batch: int,
             root: Path = Path(".")) -> tuple[dict[str, Any], np.ndarray]:
    """Test-split metrics of an ONNX model and its probabilities."""
    frame = read_split(test_csv, classes)
    paths = split_image_paths(frame, root, test_csv)
    index = label_map(classes)
    y_true = np.array([index[c] for c in frame["label"]])
    probs = predict_in_batches(model, paths, batch_size=batch, progress=True)
    return classification_metrics(y_true, probs.argmax(1), classes), probs


def measure_latency(checkpoint: Path, fp32_path: Path, int8_path: Path, sample: np.ndarray,
                    settings: QuantizeSettings) -> dict[str, Any]:
    """PyTorch eager vs ONNX FP32 vs ONNX INT8 on CPU, same threads, interleaved."""
    import torch

    from emorec.models import load_checkpoint

    threads = settings.latency_threads
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        eager, _ = load_checkpoint(checkpoint, map_location="cpu")
        eager = eager.float().eval()
        cpu = ["CPUExecutionProvider"]
        fp32 = OnnxClassifier(fp32_path, threads=threads, execution_providers=cpu)
        int8 = OnnxClassifier(int8_path, threads=threads, execution_providers=cpu)
        results: dict[str, Any] = {}
        for size in settings.latency_batch_sizes:
            batch = np.resize(sample, (size, *sample.shape[1:])).astype(np.float32)
            tensor = torch.from_numpy(batch)

            def run_eager(t: torch.Tensor = tensor) -> None:
                with torch.inference_mode():
                    eager(t)

            results[f"batch_{size}"] = measure_interleaved(
                {"pytorch_eager": run_eager,
                 "onnx_fp32": lambda b=batch: fp32.logits(b),
                 "onnx_int8": lambda b=batch: int8.logits(b)},
                repeats=settings.latency_repeats, warmup=settings.latency_warmup)
    finally:
        torch.set_num_threads(previous)
    return {"device": "cpu", "threads": threads or "default",
            "repeats": settings.latency_repeats, **results}


def targets(fp32: dict[str, Any], int8: dict[str, Any], latency: dict[str, Any],
            settings: QuantizeSettings) -> dict[str, Any]:
    """Pass/fail of the benchmark targets (recorded, never enforced)."""
    b1 = latency.get("batch_1")
    ratio = (b1["onnx_int8"]["median_ms"] / b1["pytorch_eager"]["median_ms"]) if b1 else None
    drop = fp32["macro_f1"] - int8["macro_f1"]
    latency_met = ratio is not None and ratio <= settings.max_latency_ratio
    f1_met = drop <= settings.max_f1_drop + 1e-12
    return {
        "int8_vs_eager_latency_ratio_batch_1": ratio,
        "max_latency_ratio": settings.max_latency_ratio,
        "latency_target_met": bool(latency_met),
        "macro_f1_drop": drop,
        "max_f1_drop": settings.max_f1_drop,
        "f1_target_met": bool(f1_met),
        "all_met": bool(latency_met and f1_met),
    }


def run_quantize(checkpoint: Path, fp32_path: Path, val_csv: Path, test_csv: Path,
                 int8_path: Path, ort_path: Path, settings: QuantizeSettings,
                 classes: list[str], root: Path = Path(".")) -> dict[str, Any]:
    """The whole stage: quantize, convert, evaluate, time; returns the report."""
    fp32 = OnnxClassifier(fp32_path)
    if fp32.classes != list(classes):
        raise QuantizeError(f"{fp32_path} predicts {fp32.classes}, params.yaml lists {classes}")
    calib = calibration_images(val_csv, classes, fp32, settings.calibration_images,
                               settings.seed, root)
    log.info("calibrating on %d validation images", len(calib))
    quantize_model(fp32_path, int8_path, calib, settings)
    convert_to_ort(int8_path, ort_path)

    int8 = OnnxClassifier(int8_path)
    fp32_metrics, _ = evaluate(fp32, test_csv, classes, settings.eval_batch, root)
    int8_metrics, int8_probs = evaluate(int8, test_csv, classes, settings.eval_batch, root)
    ort_model = OnnxClassifier(ort_path, execution_providers=["CPUExecutionProvider"])
    n_check = min(len(calib), settings.eval_batch)
    ort_agreement = float(np.mean(ort_model.probabilities(calib[:n_check]).argmax(1)
                                  == int8.probabilities(calib[:n_check]).argmax(1)))
    kernel_check = kernel_agreement(int8_path, calib[:n_check])
    latency = measure_latency(checkpoint, fp32_path, int8_path, calib, settings)
    sizes = {name: path.stat().st_size for name, path in
             (("fp32", fp32_path), ("int8", int8_path), ("ort", ort_path))}
    report = {
        "fp32": {"path": str(fp32_path), "bytes": sizes["fp32"], "test": fp32_metrics},
        "int8": {"path": str(int8_path), "bytes": sizes["int8"], "test": int8_metrics},
        "ort": {"path": str(ort_path), "bytes": sizes["ort"],
                "top1_agreement_with_int8": ort_agreement, "n_images": n_check},
        "size_ratio_int8_vs_fp32": sizes["int8"] / sizes["fp32"],
        "test_images": int(int8_probs.shape[0]),
        "calibration": {"images": int(len(calib)), "method": settings.calibrate_method,
                        "format": settings.quant_format, "per_channel": settings.per_channel,
                        "reduce_range": settings.reduce_range,
                        "activation_type": settings.activation_type,
                        "weight_type": settings.weight_type},
        "cpu": cpu_kernels(),
        "kernel_check": kernel_check,
        "latency": latency,
    }
    report["targets"] = targets(fp32_metrics, int8_metrics, latency, settings)
    return report
