"""Ship a finished run's model in ``models/<name>/``, and choose which shipped model serves.

A DVC experiment leaves its model in the workspace (``models/model.int8.onnx``,
``models/best.pt``), where the next ``dvc repro`` replaces it. What users get lives in git
instead: ``models/<name>/`` holds the INT8 ONNX model (serving, the app, the Hub), its label map,
fp16 safetensors weights to fine-tune from (:mod:`emorec.weights`) and a model card with the
run's figures; ``reports/<name>.json`` keeps those figures for the README and ``dvc metrics``.

Which shipped model serves by default is decided on validation data only
(:func:`choose_by_validation`): balanced accuracy on the val split of each source, averaged over
the sources, so that FER2013's 3,500 validation faces do not outvote a lab set's hundred.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from emorec.config import Params, load_params
from emorec.evaluation import metrics_by_source
from emorec.hardware import cpu_info, describe
from emorec.inference import OnnxClassifier, preprocess_files
from emorec.provenance import EPOCH_TIMES, file_sha256, git_commit, train_wall_time_s
from emorec.weights import export_weights

#: what a shipped model folder holds (``weights.fp16.json`` is the safetensors sidecar)
FILES = ("model.int8.onnx", "label_map.json", "weights.fp16.safetensors", "weights.fp16.json",
         "README.md")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def package(workspace: Path, dest: Path, weights: bool = True) -> dict[str, str]:
    """Copy the run's INT8 model and label map into ``dest`` and, with ``weights``, export its
    fp16 weights (22 MB for a resnet18: worth it for a model others fine-tune from).

    Returns ``{file name: sha256}``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(workspace / "models/model.int8.onnx", dest / "model.int8.onnx")
    shutil.copyfile(workspace / "data/processed/label_map.json", dest / "label_map.json")
    if weights:
        export_weights(workspace / "models/best.pt", dest / "weights.fp16.safetensors")
    return {name: file_sha256(dest / name) for name in FILES[:-1] if (dest / name).is_file()}


def run_report(workspace: Path, name: str) -> dict[str, Any]:
    """The figures of the run in ``workspace``: recipe, sources, test, INT8, cross-corpus."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    test = _json(workspace / "reports/metrics/test.json") or {}
    quantize = _json(workspace / "reports/quantize.json") or {}
    ingest = _json(workspace / "reports/ingest.json") or {}
    train = _json(workspace / "reports/train/metrics.json") or {}
    fp32, int8 = quantize.get("fp32", {}).get("test", {}), quantize.get("int8", {}).get("test", {})
    return {
        "name": name, "commit": git_commit(workspace),
        "hardware": describe(cpu_info()),
        "recipe": {k: params.get(k) for k in ("classes", "image", "data", "split", "train")},
        "sources": {s: {k: v[k] for k in ("reader", "split", "accepted", "accepted_per_split",
                                          "rejected_by_reason", "face_crop", "face_fallbacks")}
                    for s, v in (ingest.get("sources") or {}).items()},
        "train": {"epochs": params["train"]["epochs"],
                  "wall_time_s": (train_wall_time_s(workspace)
                                  if (workspace / EPOCH_TIMES).is_file() else None),
                  "best_epoch": (train.get("best") or {}).get("epoch"),
                  "best_val_macro_f1": (train.get("best") or {}).get("val_macro_f1")},
        "test": {k: test.get(k) for k in ("accuracy", "macro_f1", "n_images", "by_source")},
        "int8": {"accuracy": int8.get("accuracy"), "fp32_onnx_accuracy": fp32.get("accuracy"),
                 "accuracy_drop_points": (100 * (fp32["accuracy"] - int8["accuracy"])
                                          if fp32 and int8 else None)},
        "cross_corpus": _json(workspace / "reports/cross_corpus.json"),
    }


def choose_by_validation(models: dict[str, Path], val_csv: Path, root: Path = Path(".")
                         ) -> dict[str, Any]:
    """Score every candidate on the val split, per source; the highest mean balanced accuracy
    over the sources wins (ties: the first listed)."""
    frame = pd.read_csv(val_csv)
    paths = [root / p for p in frame["path"]]
    scores: dict[str, Any] = {}
    for name, path in models.items():
        model = OnnxClassifier(path)
        unknown = sorted(set(frame["label"]) - set(model.classes))
        if unknown:
            raise ValueError(f"{path} cannot name {unknown}, which {val_csv} uses")
        index = {c: i for i, c in enumerate(model.classes)}
        y_true = frame["label"].map(index).to_numpy()
        batch = preprocess_files(paths, model.preprocess)
        y_pred = np.concatenate([model.probabilities(batch[k:k + 256]).argmax(1)
                                 for k in range(0, len(batch), 256)])
        per_source = metrics_by_source(frame["source"].to_numpy(), y_true, y_pred,
                                       model.classes)
        scores[name] = {"path": str(path), "by_source": per_source,
                        "mean_balanced_accuracy": float(np.mean(
                            [s["balanced_accuracy"] for s in per_source.values()]))}
    chosen = max(scores, key=lambda n: scores[n]["mean_balanced_accuracy"])
    return {"rule": "highest mean over sources of balanced accuracy on the val split",
            "val_split": str(val_csv), "candidates": scores, "chosen": chosen}


def record_choice(candidates: dict[str, Path], workspace: Path,
                  out: Path = Path("reports/model_choice.json")) -> dict[str, Any]:
    """:func:`choose_by_validation` on the run in ``workspace``, written to ``out``."""
    choice = choose_by_validation(candidates, workspace / "data/processed/val.csv",
                                  root=workspace)
    # where the run was made is machine-specific; its commit says which run it was
    choice |= {"val_split": "data/processed/val.csv", "run_commit": git_commit(workspace)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(choice, indent=2) + "\n")
    return choice


def set_shipped_default(params_path: Path, folder: str) -> None:
    """Point ``serve.shipped_model`` at ``folder``, keeping the file's comments."""
    text = params_path.read_text()
    new, n = re.subn(r"(?m)^(\s+shipped_model:\s*)\S+", rf"\g<1>{folder}", text)
    if n != 1:
        raise ValueError(f"{params_path} has no single serve.shipped_model line")
    params_path.write_text(new)
    Params(load_params(params_path).raw)  # still parses


def cross_corpus_table(report: dict[str, Any], notes: dict[str, str] | None = None) -> list[str]:
    """Markdown rows of a cross-corpus report: one per set, service path and whole image."""
    notes = notes or {}
    rows = ["| set | images | face found | accuracy | balanced acc. | macro-F1 | whole-image "
            "acc. | note |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in report["sets"].items():
        if not s["n"]:
            continue
        svc, whole = s["service"], s["whole"]
        rows.append(f"| {name} | {s['n']} | {100 * s['found_rate']:.1f}% | "
                    f"{100 * svc['accuracy']:.1f}% | {100 * svc['balanced_accuracy']:.1f}% | "
                    f"{svc['macro_f1']:.3f} | {100 * whole['accuracy']:.1f}% | "
                    f"{notes.get(name, '')} |")
    return rows
