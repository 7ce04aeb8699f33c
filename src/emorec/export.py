"""PyTorch checkpoint -> self-describing ONNX model, with a parity check against PyTorch.

Why the pieces exist:

* **Opset fallback** - runtimes lag behind exporters (older onnxruntime-web/mobile builds), so
  ``export.opsets`` lists acceptable opsets in order of preference; the first one the exporter
  really produces wins, and every attempt is recorded in the report.
* **Dynamic batch axis** - the service batches requests adaptively and the quantize stage
  benchmarks batch 1 and 32 with the same file.
* **Metadata** - class names and preprocessing travel inside the model, so no consumer can pair
  a model with the wrong label map or normalisation. So does the softmax temperature the
  evaluate stage fitted on val (``reports/metrics/calibration.json``): every consumer then shows
  the same calibrated probabilities.
* **Parity** - an exporter bug (or an unsupported op silently approximated) shows up as a
  difference in probabilities on real validation images; the stage refuses such a model.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from emorec import __version__
from emorec.config import Params
from emorec.errors import EmorecError, ParamsError
from emorec.inference import (
    INPUT_NAME,
    META_CLASSES,
    META_IMAGE,
    META_MIN_CONFIDENCE,
    META_TEMPERATURE,
    OUTPUT_NAME,
    OnnxClassifier,
    add_metadata,
    preprocess_files,
    split_image_paths,
)
from emorec.labels import label_map
from emorec.split_csv import read_split
from emorec.transforms import Preprocess

log = logging.getLogger(__name__)


class ExportError(EmorecError):
    """The model could not be exported, or the export does not match PyTorch."""


@dataclass(frozen=True)
class ExportSettings:
    """The ``export`` section of params.yaml, validated."""

    opsets: list[int]
    dynamo: bool
    parity_atol: float
    parity_batch: int
    min_top1_agreement: float
    tta: str = "none"

    @classmethod
    def from_params(cls, params: Params) -> ExportSettings:
        section = params.section("export")
        opsets = section.sequence("opsets")
        if not opsets or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 7
                                 for o in opsets):
            raise ParamsError("export.opsets",
                              f"must be a non-empty list of integers >= 7, got {opsets}")
        return cls(
            opsets=list(opsets),
            dynamo=section.boolean("dynamo"),
            parity_atol=section.number("parity_atol", low=0),
            parity_batch=section.integer("parity_batch", low=1),
            min_top1_agreement=section.number("min_top1_agreement", low=0, high=1),
            tta=section.choice("tta", ("none", "flip")),  # emorec.models.TTA_MODES
        )


@dataclass
class ExportResult:
    opset: int
    attempts: list[dict[str, Any]] = field(default_factory=list)


def _export_once(model: nn.Module, example: torch.Tensor, path: Path, opset: int,
                 dynamo: bool) -> None:
    """One ``torch.onnx.export`` call with a dynamic batch axis, exporter chatter captured."""
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamo": dynamo,
    }
    if dynamo:
        batch = torch.export.Dim("batch", min=1)
        kwargs.update(dynamic_shapes=({0: batch},), external_data=False)
    else:
        kwargs.update(dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), **kwargs)


def export_with_fallback(model: nn.Module, example: torch.Tensor, path: Path, opsets: list[int],
                         dynamo: bool) -> ExportResult:
    """Export with the first opset in ``opsets`` that the exporter actually produces.

    The dynamo exporter may quietly keep its native opset when down-conversion fails; such a file
    is not what was asked for, so it counts as a failed attempt.
    """
    result = ExportResult(opset=-1)
    for opset in opsets:
        try:
            _export_once(model, example, path, opset, dynamo)
            produced = next(o.version for o in onnx.load(str(path), load_external_data=False)
                            .opset_import if o.domain in ("", "ai.onnx"))
            if produced != opset:
                raise ExportError(f"exporter produced opset {produced} instead of {opset}")
        except Exception as err:  # exporters raise many unrelated types; all mean "try next"
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            log.warning("export at opset %d failed: %s", opset, reason)
            result.attempts.append({"opset": opset, "ok": False, "error": reason})
            continue
        result.attempts.append({"opset": opset, "ok": True})
        result.opset = opset
        return result
    tried = "; ".join(f"opset {a['opset']}: {a['error']}" for a in result.attempts)
    raise ExportError(f"ONNX export failed for every opset in export.opsets ({tried})")


def read_calibration(path: Path) -> dict[str, Any]:
    """The evaluate stage's calibration report; its ``temperature`` must be a positive number."""
    if not path.is_file():
        raise ExportError(f"calibration report not found: {path} (run `dvc repro evaluate`)")
    try:
        report = json.loads(path.read_text())
        temperature = float(report["temperature"])
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{path}: no usable 'temperature' ({err}); re-run evaluate") from err
    if not np.isfinite(temperature) or temperature <= 0:
        raise ExportError(f"{path}: 'temperature' must be positive, got {temperature}")
    return report


def calibration_metadata(calibration: dict[str, Any] | None) -> dict[str, str]:
    """ONNX metadata entries taken from the calibration report (none without one)."""
    if calibration is None:
        return {}
    meta = {META_TEMPERATURE: repr(float(calibration["temperature"]))}
    if calibration.get("min_confidence") is not None:  # suggested serve.min_confidence ('auto')
        meta[META_MIN_CONFIDENCE] = repr(float(calibration["min_confidence"]))
    return meta


def model_metadata(ckpt_meta: dict[str, Any], opset: int, dynamo: bool,
                   calibration: dict[str, Any] | None = None) -> dict[str, str]:
    """What a consumer needs to use the model, as ONNX string metadata."""
    image = ckpt_meta["image"]
    return {
        **calibration_metadata(calibration),
        META_CLASSES: json.dumps(list(ckpt_meta["classes"])),
        META_IMAGE: json.dumps({"size": int(image["size"]), "mean": float(image["mean"]),
                                "std": float(image["std"])}),
        "emorec.model_name": str(ckpt_meta.get("model_name", "")),
        "emorec.epoch": str(ckpt_meta.get("epoch", "")),
        "emorec.opset": str(opset),
        "emorec.exporter": "dynamo" if dynamo else "torchscript",
        "emorec.version": __version__,
        "emorec.input_layout": "NCHW float32 [N,1,size,size], (pixel/255-mean)/std, grayscale",
        "emorec.output": (f"logits [N, classes]; probabilities = softmax(logits / "
                          f"{META_TEMPERATURE}) (1 when absent)"),
    }


def load_images(csv_path: Path, classes: list[str], pre: Preprocess, limit: int | None = None,
                root: Path = Path(".")) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a split CSV, preprocessed, with their class indices."""
    frame = read_split(csv_path, classes)
    if limit is not None:
        frame = frame.head(limit)
    batch = preprocess_files(split_image_paths(frame, root, csv_path), pre)
    index = label_map(classes)
    return batch, np.array([index[c] for c in frame["label"]], dtype=np.int64)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute probability difference and top-1 agreement of two ``[N, C]`` arrays."""
    return {
        "n_images": int(reference.shape[0]),
        "max_abs_diff": float(np.max(np.abs(reference - candidate))),
        "mean_abs_diff": float(np.mean(np.abs(reference - candidate))),
        "top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
    }


def export_model(checkpoint: Path, val_csv: Path, onnx_path: Path, settings: ExportSettings,
                 classes: list[str], root: Path = Path("."),
                 calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, check and compare; returns the report. Raises :class:`ExportError` on bad parity.

    ``calibration`` (the evaluate stage's report) puts its temperature into the metadata.

    The ONNX file is written even when parity fails, so it can be inspected; DVC does not
    commit outputs of a failed stage.
    """
    from emorec.models import batched_probabilities, load_checkpoint, with_tta

    model, meta = load_checkpoint(checkpoint, map_location="cpu")
    if list(meta["classes"]) != list(classes):
        raise ExportError(f"{checkpoint} was trained for classes {meta['classes']}, "
                          f"params.yaml lists {classes}")
    pre = Preprocess.from_meta(meta["image"])
    batch, _ = load_images(val_csv, classes, pre, limit=settings.parity_batch, root=root)
    model = with_tta(model.float().eval(), settings.tta)  # the flip goes into the graph

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        # Two images, so no exporter can specialise the batch axis to 1.
        example = torch.from_numpy(np.concatenate([batch, batch])[:2])
        result = export_with_fallback(model, example, raw_path, settings.opsets, settings.dynamo)
        proto = onnx.load(str(raw_path))
    add_metadata(proto, model_metadata(meta, result.opset, settings.dynamo, calibration))
    onnx.save(proto, str(onnx_path))
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected {onnx_path}: {err}") from err

    session = OnnxClassifier(onnx_path, execution_providers=["CPUExecutionProvider"])
    reference = batched_probabilities(model, batch, batch_size=len(batch))
    # Parity is about the graph, so both sides use the plain softmax (temperature 1).
    stats = parity(reference, session.probabilities(batch, calibrated=False))
    # The dynamic axis must really be dynamic: a single image gives the same answer.
    single = parity(reference[:1], session.probabilities(batch[:1], calibrated=False))
    passed = (stats["max_abs_diff"] <= settings.parity_atol
              and single["max_abs_diff"] <= settings.parity_atol
              and stats["top1_agreement"] >= settings.min_top1_agreement)
    report = {
        "checkpoint": str(checkpoint),
        "onnx_path": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": result.opset,
        "opset_attempts": result.attempts,
        "dynamo": settings.dynamo,
        "tta": settings.tta,
        "model_name": meta.get("model_name"),
        "classes": classes,
        "image": {"size": pre.size, "mean": pre.mean, "std": pre.std},
        "checker": "passed",
        "temperature": session.temperature,
        "suggested_min_confidence": session.suggested_min_confidence,
        "parity": {**stats, "batch1_max_abs_diff": single["max_abs_diff"],
                   "atol": settings.parity_atol,
                   "min_top1_agreement": settings.min_top1_agreement, "passed": bool(passed)},
    }
    return report


def check_parity(report: dict[str, Any]) -> None:
    """Raise the one-line failure the stage prints when parity is outside the tolerance."""
    p = report["parity"]
    if not p["passed"]:
        raise ExportError(
            f"ONNX/PyTorch parity failed on {p['n_images']} validation images: max |dp| = "
            f"{max(p['max_abs_diff'], p['batch1_max_abs_diff']):.3g} (export.parity_atol "
            f"{p['atol']:.3g}), top-1 agreement {p['top1_agreement']:.3f} "
            f"(export.min_top1_agreement {p['min_top1_agreement']:.3f})")
