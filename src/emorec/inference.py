"""Predictions from an exported ONNX (or ORT-format) model with onnxruntime.

The model file is self-describing: the export stage writes the class names and the preprocessing
(size/mean/std) into the ONNX ``metadata_props``, so the service, the XAI stage and the mobile
test need only the file to classify an image exactly as training saw it. A ``label_map.json``
next to the model is used only as a fallback for files exported without metadata.

This module deliberately does not import torch: the service image stays small.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from scipy.special import softmax

from emorec.errors import EmorecError, ParamsError
from emorec.imageio import open_image
from emorec.transforms import Preprocess

#: Keys of the ONNX ``metadata_props`` written by :func:`add_metadata`.
META_CLASSES = "emorec.classes"
META_IMAGE = "emorec.image"
#: Softmax temperature fitted on val by the evaluate stage; probabilities = softmax(logits / T).
META_TEMPERATURE = "emorec.temperature"
#: Confidence threshold suggested by evaluate (answers ~90 % of val); serve.min_confidence: auto.
META_MIN_CONFIDENCE = "emorec.min_confidence"
#: The label given instead of a class when the top probability is below the threshold.
UNCERTAIN = "uncertain"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ModelFileError(EmorecError):
    """The model file is missing, unreadable or lacks the metadata needed to use it."""


def providers() -> list[str]:
    """CUDA when this onnxruntime build and the machine have it, CPU always as the fallback."""
    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Session options; ``threads`` = 0 leaves the intra-op thread count to onnxruntime."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the QDQ graphs otherwise log per-node notices
    return options


def read_metadata(session: ort.InferenceSession, path: Path) -> tuple[list[str], Preprocess]:
    """Classes and preprocessing from the model's metadata, or ``label_map.json`` + defaults."""
    props = session.get_modelmeta().custom_metadata_map
    if META_CLASSES in props and META_IMAGE in props:
        classes = list(json.loads(props[META_CLASSES]))
        image = json.loads(props[META_IMAGE])
    else:
        label_map = path.with_name("label_map.json")
        if not label_map.is_file():
            raise ModelFileError(
                f"{path} has no '{META_CLASSES}'/'{META_IMAGE}' metadata and no label_map.json "
                "next to it; re-run the export stage")
        from emorec.labels import read_label_map

        classes = read_label_map(label_map)
        shape = session.get_inputs()[0].shape
        if not isinstance(shape[-1], int):
            raise ModelFileError(f"{path}: input size unknown without '{META_IMAGE}' metadata")
        image = {"size": shape[-1], "mean": 0.5, "std": 0.5}
    return classes, Preprocess.from_meta(image)


def read_temperature(props: dict[str, str], path: Path) -> float:
    """The calibration temperature stored with the model; 1.0 (plain softmax) when absent."""
    raw = props.get(META_TEMPERATURE)
    if raw is None:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise ModelFileError(f"{path}: metadata '{META_TEMPERATURE}' must be a positive number, "
                             f"got {raw!r}; re-run the export stage")
    return value


def read_min_confidence(props: dict[str, str]) -> float | None:
    """The suggested abstention threshold stored with the model, if any (and if usable)."""
    try:
        value = float(props[META_MIN_CONFIDENCE])
    except (KeyError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


def resolve_min_confidence(setting: Any, suggested: float | None) -> float:
    """``serve.min_confidence`` as a number: ``auto`` takes the model's suggestion (0 if none).

    0 never abstains. A number must lie in [0, 1]; anything else raises :class:`ParamsError`.
    """
    if setting == "auto":
        return 0.0 if suggested is None else float(suggested)
    if isinstance(setting, bool) or not isinstance(setting, int | float) or not 0 <= setting <= 1:
        raise ParamsError("serve.min_confidence",
                          f"must be 'auto' or a number in [0, 1], got {setting!r}")
    return float(setting)


def label_or_uncertain(probs: np.ndarray, threshold: float, classes: Sequence[str]) -> str:
    """The top class of one probability row, or :data:`UNCERTAIN` if its probability < threshold.

    Abstaining is worth it only on calibrated probabilities (``OnnxClassifier.probabilities``),
    where the evaluate stage's risk-coverage curve says what accuracy each threshold buys.
    """
    best = int(np.argmax(probs))
    return classes[best] if float(probs[best]) >= threshold else UNCERTAIN


def add_metadata(model_proto: Any, meta: dict[str, str]) -> None:
    """Replace an ``onnx.ModelProto``'s ``metadata_props`` with ``meta`` (keys sorted)."""
    import onnx

    del model_proto.metadata_props[:]
    onnx.helper.set_model_props(model_proto, dict(sorted(meta.items())))


class OnnxClassifier:
    """An onnxruntime session plus the class names and preprocessing stored with the model."""

    def __init__(self, path: str | Path, threads: int = 0,
                 execution_providers: Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=session_options(threads),
                providers=list(execution_providers or providers()))
        except Exception as err:  # onnxruntime raises its own untyped exceptions
            raise ModelFileError(f"onnxruntime cannot load {self.path}: {err}") from err
        self.classes, self.preprocess = read_metadata(self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.temperature = read_temperature(self.metadata, self.path)
        self.suggested_min_confidence = read_min_confidence(self.metadata)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw scores ``[N, C]`` for a preprocessed float32 batch ``[N, 1, S, S]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def probabilities(self, batch: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Softmax probabilities ``[N, C]`` for a preprocessed batch.

        ``calibrated`` divides the logits by the model's temperature first, so a confidence of
        0.9 means right about nine times in ten on data like val; ``False`` gives the plain
        softmax (what PyTorch computes, for parity checks). The top-1 class is the same.
        """
        scale = self.temperature if calibrated else 1.0
        return softmax(self.logits(batch).astype(np.float64) / scale, axis=1).astype(np.float32)

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities for PIL images of any size and mode (preprocessed here)."""
        return self.probabilities(self.preprocess.batch(list(images)))

    def describe(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """JSON-ready ``{label, confidence, probabilities{class: p}}`` for each row."""
        return [describe_row(row, self.classes) for row in np.atleast_2d(probs)]

    def info(self) -> dict[str, Any]:
        """What is being served: file, classes, preprocessing and export metadata."""
        return {
            "model_path": str(self.path),
            "model_bytes": self.path.stat().st_size,
            "classes": self.classes,
            "image": {"size": self.preprocess.size, "mean": self.preprocess.mean,
                      "std": self.preprocess.std},
            "providers": self.session.get_providers(),
            "temperature": self.temperature,
            "suggested_min_confidence": self.suggested_min_confidence,
            "metadata": {k: v for k, v in self.metadata.items()
                         if k not in (META_CLASSES, META_IMAGE)},
        }


def describe_row(probs: np.ndarray, classes: Sequence[str],
                 min_confidence: float | None = None) -> dict[str, Any]:
    """Label, its probability and every class's probability for one prediction.

    With ``min_confidence`` the label is :data:`UNCERTAIN` below it, and ``predicted`` keeps the
    top class, so a client still sees what the model would have said.
    """
    best = int(np.argmax(probs))
    row = {
        "label": classes[best],
        "confidence": float(probs[best]),
        "probabilities": {name: float(p) for name, p in zip(classes, probs, strict=True)},
    }
    if min_confidence is not None:
        row.update(label=label_or_uncertain(probs, min_confidence, classes),
                   predicted=classes[best], min_confidence=float(min_confidence))
    return row


def predict_in_batches(model: OnnxClassifier, paths: Sequence[str | Path], batch_size: int = 64,
                       progress: bool = False) -> np.ndarray:
    """Probabilities ``[N, C]`` for image files, read in batches to bound memory."""
    from tqdm import tqdm

    out = []
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc=f"onnx {model.path.name}", disable=not progress):
        out.append(model.probabilities(
            preprocess_files(paths[start:start + batch_size], model.preprocess)))
    n_classes = len(model.classes)
    return np.concatenate(out) if out else np.zeros((0, n_classes), dtype=np.float32)


def split_image_paths(frame: Any, root: str | Path, source: str | Path) -> list[Path]:
    """``root / path`` of every row of a split frame; missing files raise one clear error."""
    # imported here: the service imports this module, and its image has no pandas (splits')
    from emorec.split_csv import check_images_exist

    paths = [Path(root) / rel for rel in frame["path"]]
    check_images_exist(paths, source)
    return paths


def preprocess_files(paths: Sequence[str | Path], preprocess: Preprocess) -> np.ndarray:
    """float32 ``[N, 1, S, S]`` from image files (unreadable files raise :class:`ImageError`)."""
    return preprocess.batch([open_image(p) for p in paths])
