"""Cross-corpus evaluation: how a model reads faces from datasets it was not trained on.

A test split shares its source's camera, framing and labelling habits with the train split, so it
flatters a model that learned those habits. ``evaluate.external`` lists labelled sets in the same
schema as ``data.sources`` (reader, path, map, split/usage, label_pattern) and each is scored
the way users meet the model, through the service's own path
(:func:`emorec.serving.answers.find_faces`): find the face (``faces.detector``), level the eyes,
crop with ``serve.face_margin``, classify with the exported model; a small image without a
detected face is taken whole, as the service does (``faces.whole_image_max_side``). An image
the service would answer "no face found" for counts as wrong. The same images taken whole are
scored too.

For every set: the face-found rate; accuracy, balanced accuracy and macro-F1 over all images;
the same after folding classes (``evaluate.fold``, e.g. disgust -> angry) for comparisons with
6-class models and sets without that class; recall per class. Sets whose labels lack some of
the model's classes are scored on the classes they have (macro-F1 over those).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, recall_score
from tqdm import tqdm

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.faces import FaceSettings, to_rgb
from emorec.inference import OnnxClassifier
from emorec.serving.answers import find_faces
from emorec.sources import SourceSpec, source_list, spec_candidates

NO_FACE = "<no face>"


def external_sets(params: Params, classes: list[str]) -> list[SourceSpec]:
    """``evaluate.external``, validated like ``data.sources`` entries, against ``classes``."""
    return source_list(params, "evaluate.external", classes)


def fold_map(params: Params, classes: Sequence[str]) -> dict[str, str]:
    """``evaluate.fold`` restricted to the model's classes (both ends must be classes)."""
    raw = params.mapping("evaluate.fold", default={})
    for source, target in raw.items():
        if target not in classes and source in classes:
            raise ParamsError(f"evaluate.fold.{source}", f"must be one of {list(classes)}")
    return {str(s): str(t) for s, t in raw.items() if s in classes}


@dataclass
class Predictions:
    """Labels and what the service path and the whole image predicted for one set."""

    labels: list[str]
    service: list[str]
    whole: list[str]
    skipped: Counter[str]
    #: faces the service took whole: no face found in a small image (faces.whole_image_max_side)
    whole_image_faces: int = 0
    #: the model's logits ``[found faces, C]`` of the service path, in label order (rows of
    #: images without a face left out), so another decision rule can be scored without
    #: detecting again (:mod:`emorec.decision`)
    service_logits: np.ndarray | None = None


def predict_set(model: OnnxClassifier, spec: SourceSpec, faces: FaceSettings,
                batch_size: int = 128) -> Predictions:
    """Run every labelled image of ``spec`` through the service's path (its own
    :func:`emorec.serving.answers.find_faces`, largest face) and whole."""
    out = Predictions([], [], [], Counter())
    inputs: list[np.ndarray] = []
    wholes: list[np.ndarray] = []
    has_face: list[bool] = []
    for cand in tqdm(list(spec_candidates(spec, model.classes)), desc=f"scoring {spec.name}",
                     unit="img", mininterval=2):
        if cand.label is None:
            out.skipped["not_in_set"] += 1  # another split, or a label the set's map drops
            continue
        try:
            loaded = cand.load()
            image = loaded if isinstance(loaded, Image.Image) else Image.open(io.BytesIO(loaded))
            image = Image.fromarray(to_rgb(image))
        except Exception:  # noqa: BLE001 - a broken file is counted, not fatal
            out.skipped["unreadable"] += 1
            continue
        found = find_faces(image, "faces", faces, model.preprocess)
        out.labels.append(cand.label)
        wholes.append(model.preprocess(image))
        has_face.append(bool(found.faces))
        if found.faces:
            inputs.append(found.inputs[0])
            out.whole_image_faces += found.faces[0].score == 0.0
    out.whole = [model.classes[k] for k in _logits(model, wholes, batch_size).argmax(axis=1)]
    out.service_logits = _logits(model, inputs, batch_size)
    face_labels = iter(model.classes[k] for k in out.service_logits.argmax(axis=1))
    out.service = [next(face_labels) if ok else NO_FACE for ok in has_face]
    return out


def _logits(model: OnnxClassifier, inputs: list[np.ndarray], batch_size: int) -> np.ndarray:
    rows = [model.logits(np.stack(inputs[start:start + batch_size]))
            for start in range(0, len(inputs), batch_size)]
    return np.concatenate(rows) if rows else np.zeros((0, len(model.classes)), np.float32)


def redecide(pred: Predictions, classes: Sequence[str], bias: np.ndarray) -> Predictions:
    """``pred`` with the service path's answers taken as ``argmax(logits + bias)``: another
    decision rule on the same faces (the whole-image answers are left as they were)."""
    if pred.service_logits is None:
        raise ValueError("these predictions kept no logits")
    answers = iter(classes[k] for k in (pred.service_logits + bias).argmax(axis=1))
    service = [p if p == NO_FACE else next(answers) for p in pred.service]
    return replace(pred, service=service)


def confusion(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{true class: {answer: count}}``: where a class's misses go (fearful faces read as
    surprised, or as no face at all), which a recall alone does not say."""
    table: dict[str, Counter[str]] = {}
    for truth, answer in zip(labels, predicted, strict=True):
        table.setdefault(truth, Counter())[answer] += 1
    return {t: dict(sorted(table[t].items())) for t in sorted(table)}


def metrics(labels: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1 and the confusion over the classes the labels
    contain."""
    present = sorted(set(labels))
    return {
        "confusion": confusion(labels, predicted),
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(np.mean(recall_score(labels, predicted, labels=present,
                                                        average=None, zero_division=0))),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro",
                                   zero_division=0)),
        "recall": dict(zip(present, map(float, recall_score(
            labels, predicted, labels=present, average=None, zero_division=0)), strict=True)),
    }


def score_set(pred: Predictions, fold: dict[str, str]) -> dict[str, Any]:
    """The report entry of one set (see the module docstring)."""
    def folded(names: Sequence[str]) -> list[str]:
        return [fold.get(n, n) for n in names]

    n = len(pred.labels)
    found = sum(p != NO_FACE for p in pred.service)
    entry: dict[str, Any] = {
        "n": n, "skipped": dict(pred.skipped),
        "per_class": dict(sorted(Counter(pred.labels).items())),
        "found_rate": found / n if n else float("nan"),
        "taken_whole": pred.whole_image_faces,
        "service": metrics(pred.labels, pred.service) if n else {},
        "whole": metrics(pred.labels, pred.whole) if n else {},
    }
    if fold and n:
        entry["folded"] = {"map": fold,
                           "service": metrics(folded(pred.labels), folded(pred.service)),
                           "whole": metrics(folded(pred.labels), folded(pred.whole))}
    return entry


def summary(sets: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Means over the sets, the figures a model is compared by."""
    scored = [s for s in sets.values() if s["n"]]
    if not scored:
        return {}
    return {key: float(np.mean([s["service"][key] for s in scored]))
            for key in ("accuracy", "balanced_accuracy", "macro_f1")} | {
        "found_rate": float(np.mean([s["found_rate"] for s in scored])),
        "whole_balanced_accuracy": float(np.mean([s["whole"]["balanced_accuracy"]
                                                  for s in scored]))}
