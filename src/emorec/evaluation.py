"""Scoring a trained checkpoint on a split, and the prediction loop shared with validation.

The evaluate stage writes the test metrics (``classification_metrics`` shape) as a DVC metrics
file, the per-sample ``actual,predicted`` table that DVC's ``confusion`` template renders, the
per-class F1 table for a bar plot, a confusion-matrix PNG and a grid of the most confident
mistakes, which is usually the quickest way to spot label noise or a preprocessing bug.

Given the validation split too, it fits a temperature on the val logits (``emorec.calibration``)
and reports calibration on test before/after (``reports/metrics/calibration.json``, the
reliability table and PNG). The export stage carries that temperature into the ONNX metadata,
so the service and the phone show calibrated probabilities. With calibrated probabilities it
also writes the risk-coverage curve (accuracy when abstaining below each confidence), accuracy
at 80/90 % coverage and a suggested ``min_confidence`` for the service's ``uncertain`` answer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.special import softmax
from sklearn.metrics import f1_score, recall_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from emorec.calibration import CalibrationResult, calibrate
from emorec.config import Params
from emorec.data import FaceDataset
from emorec.errors import DataError
from emorec.metrics import classification_metrics, confusion
from emorec.models import TTA_MODES, load_checkpoint, with_tta
from emorec.models import device as default_device
from emorec.plots import confusion_matrix_png, image_grid_png, save_figure
from emorec.precision import autocast
from emorec.split_csv import check_images_exist, read_split
from emorec.transforms import Preprocess

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device,
                   amp_dtype: torch.dtype | None = None, progress: bool = False,
                   desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits ``[N, C]`` and targets ``[N]`` for every batch of ``loader``.

    Puts ``model`` in eval mode; callers that go on training switch it back. Results stay on the
    device until the end so the loop does not wait for each batch (one sync, not one per batch).
    """
    model.eval()
    outs, targets = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with autocast(device, amp_dtype):
            outs.append(model(x.to(device, non_blocking=True)).float())
        targets.append(y)
    if not outs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(outs).cpu().numpy(), torch.cat(targets).numpy()


def worst_misclassifications(probs: np.ndarray, y_true: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most confident wrong predictions, most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    confidence = probs[wrong, pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:k]


def _check_classes(meta_classes: list[str], params: Params, model_path: Path) -> list[str]:
    if list(meta_classes) != params.classes:
        raise DataError(f"{model_path} was trained for classes {list(meta_classes)} but params "
                        f"'classes' is {params.classes}; retrain or fix params.yaml")
    return list(meta_classes)


def write_plot_tables(y_true: np.ndarray, y_pred: np.ndarray, metrics: dict[str, Any],
                      classes: list[str], plots_dir: Path) -> None:
    """The CSV files declared as DVC plots (confusion template, per-class F1 bars)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    names = np.asarray(classes)
    pd.DataFrame({"actual": names[y_true], "predicted": names[y_pred]}).to_csv(
        plots_dir / "confusion.csv", index=False)
    pd.DataFrame({"class": classes,
                  "f1": [metrics["per_class"][c]["f1"] for c in classes]}).to_csv(
        plots_dir / "per_class_f1.csv", index=False)


def split_loader(params: Params, split_csv: str | Path, classes: list[str], pre: Preprocess,
                 root: str | Path) -> tuple[FaceDataset, DataLoader]:
    """The images of one split CSV, in file order, batched for scoring."""
    dataset = FaceDataset(read_split(split_csv, classes), classes, pre, root=root)
    check_images_exist(dataset.paths, split_csv)
    loader = DataLoader(dataset, batch_size=params.integer("evaluate.batch_size", low=1),
                        shuffle=False, num_workers=params.integer("train.num_workers", low=0))
    return dataset, loader


def reliability_png(result: CalibrationResult, path: Path) -> Path:
    """Reliability diagram before/after temperature scaling, beside the risk-coverage curve."""
    from matplotlib.figure import Figure

    table, report = result.reliability, result.report
    fig = Figure(figsize=(10, 4.2))
    ax, rc = fig.subplots(1, 2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, style in (("before", "o-"), ("after", "s-")):
        scores = report["test"][name]
        label = (f"{name} (T={result.temperature:.2f})" if name == "after" else name)
        ax.plot(table[f"confidence_{name}"], table[f"accuracy_{name}"], style,
                label=f"{label}: ECE {scores['ece']:.3f}")
    ax.set(xlabel="confidence (top-1 probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability on test ({report['bins']} bins)")
    ax.legend(loc="upper left", fontsize=8)
    curve = result.risk_coverage
    rc.plot(curve["coverage"], curve["accuracy"], "-")
    rc.set(xlabel="coverage (share answered)", ylabel="accuracy of answered",
           xlim=(0, 1.01), title="Risk-coverage (calibrated, test)")
    return save_figure(fig, path)


def write_calibration(result: CalibrationResult, calibration_path: Path, plots_dir: Path) -> None:
    """The metrics JSON (with ``temperature`` for the export stage), plot CSV and PNG."""
    calibration_path.parent.mkdir(parents=True, exist_ok=True)
    calibration_path.write_text(json.dumps(result.report, indent=2) + "\n")
    plots_dir.mkdir(parents=True, exist_ok=True)
    result.reliability.to_csv(plots_dir / "reliability.csv", index=False)
    result.risk_coverage.to_csv(plots_dir / "risk_coverage.csv", index=False)
    reliability_png(result, plots_dir / "reliability.png")


def calibrate_on_val(params: Params, model: nn.Module, dev: torch.device, val_csv: str | Path,
                     classes: list[str], pre: Preprocess, root: str | Path,
                     test_logits: np.ndarray, test_labels: np.ndarray,
                     progress: bool) -> CalibrationResult:
    """Temperature fitted on the val split, scored on the test logits already computed."""
    _, loader = split_loader(params, val_csv, classes, pre, root)
    val_logits, val_labels = predict_logits(model, loader, dev, progress=progress,
                                            desc="calibrate (val)")
    return calibrate(
        val_logits, val_labels, test_logits, test_labels,
        n_bins=params.integer("evaluate.calibration_bins", low=1),
        coverages=tuple(params.sequence("evaluate.coverages")),
        threshold_coverage=params.number("evaluate.min_confidence_coverage", low=0.01, high=1))


def metrics_by_source(sources: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                      classes: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy, balanced accuracy and macro-F1 of each source of a multi-source split.

    A merged test split is dominated by its largest source; per source, FER+ test accuracy
    (majority labels) stands next to the lab set's, and a gain on one cannot hide a loss on
    the other. Macro scores run over the classes a source has.
    """
    out = {}
    for source in sorted(set(sources)):
        mine = sources == source
        present = sorted(set(y_true[mine].tolist()))
        recall = recall_score(y_true[mine], y_pred[mine], labels=present, average=None,
                              zero_division=0)
        out[str(source)] = {
            "n": int(mine.sum()),
            "accuracy": float((y_true[mine] == y_pred[mine]).mean()),
            "balanced_accuracy": float(np.mean(recall)),
            "macro_f1": float(f1_score(y_true[mine], y_pred[mine], labels=present,
                                       average="macro", zero_division=0)),
            "classes": [classes[k] for k in present],
        }
    return out


def evaluate_checkpoint(params: Params, model_path: str | Path, split_csv: str | Path,
                        metrics_path: str | Path, plots_dir: str | Path,
                        root: str | Path = ".", progress: bool = True,
                        val_csv: str | Path | None = None,
                        calibration_path: str | Path | None = None) -> dict[str, Any]:
    """Score ``model_path`` on ``split_csv``; write the metrics JSON and plots; return metrics.

    With ``val_csv`` and ``calibration_path`` also fit and report temperature scaling.
    """
    model_path, plots_dir, metrics_path = Path(model_path), Path(plots_dir), Path(metrics_path)
    dev = default_device()
    model, meta = load_checkpoint(model_path, map_location=dev)
    model = with_tta(model.to(dev), params.choice("evaluate.tta", TTA_MODES))
    classes = _check_classes(meta["classes"], params, model_path)
    pre = Preprocess.from_meta(meta["image"])
    dataset, loader = split_loader(params, split_csv, classes, pre, root)
    logits, y_true = predict_logits(model, loader, dev, progress=progress, desc="evaluate")
    probs = softmax(logits.astype(np.float64), axis=1)
    y_pred = probs.argmax(axis=1)

    metrics = classification_metrics(y_true, y_pred, classes)
    metrics.update({
        "n_images": len(dataset),
        "n_misclassified": int((y_pred != y_true).sum()),
        "model": {"name": meta.get("model_name"), "epoch": meta.get("epoch"),
                  "val_macro_f1": (meta.get("metrics") or {}).get("macro_f1")},
    })
    sources = pd.read_csv(split_csv, usecols=["source"])["source"].to_numpy()
    if len(set(sources)) > 1:
        metrics["by_source"] = metrics_by_source(sources, y_true, y_pred, classes)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")

    write_plot_tables(y_true, y_pred, metrics, classes, plots_dir)
    confusion_matrix_png(confusion(y_true, y_pred, len(classes)), classes,
                         plots_dir / "confusion.png",
                         title=f"{Path(split_csv).stem}: macro-F1 {metrics['macro_f1']:.3f}")
    worst = worst_misclassifications(probs, y_true, params.integer("evaluate.worst_k", low=0))
    images, titles = [], []
    for i in worst:
        with Image.open(dataset.paths[i]) as img:
            images.append(pre.to_gray(img))
        titles.append(f"{classes[y_true[i]]} -> {classes[y_pred[i]]} ({probs[i, y_pred[i]]:.2f})")
    image_grid_png(images, titles, plots_dir / "worst.png",
                   title=f"Most confident mistakes ({len(worst)} of "
                         f"{metrics['n_misclassified']}; true -> predicted (confidence))")
    log.info("%s: accuracy %.3f, macro-F1 %.3f on %d images", split_csv, metrics["accuracy"],
             metrics["macro_f1"], len(dataset))
    if val_csv is not None and calibration_path is not None:
        result = calibrate_on_val(params, model, dev, val_csv, classes, pre, root, logits, y_true,
                                  progress)
        write_calibration(result, Path(calibration_path), plots_dir)
        after, before = result.report["test"]["after"], result.report["test"]["before"]
        log.info("temperature %.3f: test ECE %.3f -> %.3f, NLL %.3f -> %.3f",
                 result.temperature, before["ece"], after["ece"], before["nll"], after["nll"])
        if result.report["fit"]["at_search_bound"]:
            log.warning("temperature %.3g is at the end of its search range: the val split is "
                        "separable, at chance or too small to calibrate on", result.temperature)
    return metrics
