"""The real-data record: one JSON with everything needed to trust and reproduce a headline figure.

After a real-data experiment (``make fer2013``) the pipeline's own reports are collected into
``reports/fer2013.json``: the commit and params that made the model, a fingerprint of the data
(hash of the ingest manifest), the hardware and training wall time, and the test split's
accuracy, macro-F1, per-class F1 and confusion matrix, for the FP32 and the INT8 model.

The literature on FER2013 reports 7-class accuracy (disgust kept). The product has six classes,
so a 7-class run is also scored with disgust folded into angry (:func:`fold_labels`) - the same
model, both figures, like for like with each audience.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from emorec.hardware import cpu_info, describe
from emorec.metrics import classification_metrics
from emorec.provenance import file_sha256, git_commit, train_wall_time_s

#: How a 7-class FER2013 run maps onto the product's six classes.
SIX_CLASS_FOLD = {"disgust": "angry"}


def fold_labels(labels: np.ndarray, fold: Mapping[str, str]) -> np.ndarray:
    """Class names with ``fold``'s keys replaced by their targets (e.g. disgust -> angry)."""
    return np.array([fold.get(str(label), str(label)) for label in labels])


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, classes: list[str]
                     ) -> list[list[int]]:
    """Rows actual, columns predicted, in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, ([index[a] for a in actual], [index[p] for p in predicted]), 1)
    return matrix.tolist()


def scores(actual: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix of string labels."""
    index = {c: i for i, c in enumerate(classes)}
    m = classification_metrics(np.array([index[a] for a in actual]),
                               np.array([index[p] for p in predicted]), classes)
    return {"n": int(len(actual)), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_class_f1": {c: m["per_class"][c]["f1"] for c in classes},
            "classes": classes, "confusion": confusion_matrix(actual, predicted, classes)}


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def build_report(root: Path = Path("."), fold: Mapping[str, str] = SIX_CLASS_FOLD
                 ) -> dict[str, Any]:
    """``reports/fer2013.json`` from the reports of the run in ``root`` (a DVC workspace)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    classes = list(params["classes"])
    table = pd.read_csv(root / "reports/evaluate/confusion.csv")
    actual, predicted = table["actual"].astype(str).to_numpy(), table["predicted"].astype(
        str).to_numpy()
    quantize = _json(root / "reports/quantize.json")
    split = _json(root / "reports/split.json")
    train = _json(root / "reports/train/metrics.json")
    cpu = cpu_info()
    report: dict[str, Any] = {
        "dataset": "FER2013", "test_split": "PrivateTest (official Usage)",
        "commit": git_commit(root),
        "dataset_fingerprint": "sha256:" + file_sha256(root / "data/interim/manifest.csv"),
        "images": split["sizes"], "ingest": _ingest_summary(root),
        "near_duplicates": split.get("split", {}).get("near_duplicates"),
        "params": {k: params[k] for k in ("classes", "image", "data", "split", "balance",
                                          "train")},
        "hardware": {"cpu": cpu, "summary": describe(cpu), "gpu": _gpu_name()},
        "train": {"wall_time_s": train_wall_time_s(root), "precision": train.get("precision"),
                  "epochs": params["train"]["epochs"], "best_epoch": train["best"]["epoch"] + 1,
                  "best_val_macro_f1": train["best"]["val_macro_f1"],
                  # over- or under-fitting at a glance (train accuracy is under augmentation)
                  "last_epoch": {"train_accuracy": train["train"]["accuracy"],
                                 "val_accuracy": train["val"]["accuracy"]}},
        "test": scores(actual, predicted, classes),
        "int8": {"accuracy": quantize["int8"]["test"]["accuracy"],
                 "fp32_onnx_accuracy": quantize["fp32"]["test"]["accuracy"],
                 "accuracy_drop_points": 100 * (quantize["fp32"]["test"]["accuracy"]
                                                - quantize["int8"]["test"]["accuracy"])},
    }
    calibration = root / "reports/metrics/calibration.json"
    if calibration.is_file():
        fitted = _json(calibration)
        report["calibration"] = {"temperature": fitted["temperature"],
                                 "test_ece_before": fitted["test"]["before"]["ece"],
                                 "test_ece_after": fitted["test"]["after"]["ece"]}
    start = start_weights(root, str(params["train"].get("pretrained", "none")))
    if start:
        report["start_weights"] = start
        if start.get("wall_time_s") is not None:
            report["train"]["total_wall_time_s"] = (report["train"]["wall_time_s"]
                                                    + start["wall_time_s"])
    folded = [c for c in classes if c not in fold]
    if len(folded) < len(classes):
        report["test_6_class"] = dict(scores(fold_labels(actual, fold),
                                             fold_labels(predicted, fold), folded),
                                      fold=dict(fold))
    return report


def start_weights(root: Path, pretrained: str) -> dict[str, Any] | None:
    """The shipped weights a run fine-tuned from, with the training time they cost.

    A two-stage recipe (``train.pretrained: models/<name>/weights.fp16.safetensors``) spent
    compute twice; its figure is only honest with both stages counted. The first stage's time
    comes from ``reports/<name>.json``, written when ``models/<name>/`` was shipped.
    """
    path = Path(pretrained)
    if path.suffix != ".safetensors" or not (root / path).is_file():
        return None
    shipped = root / "reports" / f"{path.parent.name}.json"
    record = _json(shipped) if shipped.is_file() else {}
    return {"path": pretrained, "sha256": file_sha256(root / path),
            "report": str(shipped.relative_to(root)) if record else None,
            "commit": record.get("commit"),
            "epochs": (record.get("train") or {}).get("epochs"),
            "wall_time_s": (record.get("train") or {}).get("wall_time_s")}


def _ingest_summary(root: Path) -> dict[str, Any]:
    ingest = _json(root / "reports/ingest.json")
    return {"offered": ingest["offered"], "accepted": ingest["accepted"],
            "rejected_by_reason": {k: v for k, v in ingest["rejected_by_reason"].items() if v},
            "accepted_per_usage": ingest.get("accepted_per_usage")}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
