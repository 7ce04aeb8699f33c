"""Which ONNX model the service and the web app use, and where it came from.

Why one module: ``bento/service.py``, the ``mobile_assets`` stage and the serving benchmark must
agree on the model a user gets with no configuration, or the app on a phone and the server
would answer the same face differently. ``params.yaml: serve.model`` decides:

* ``shipped`` (the default): the real-face model committed with the code, in the folder
  ``serve.shipped_model`` (``model.int8.onnx`` + ``label_map.json`` + its card ``README.md``).
  A user who clones the repository and runs ``make repro`` still gets answers from a model
  trained on photos of people, not from the demo pipeline's cartoon model.
* ``pipeline``: this pipeline's own INT8 model (``models/model.int8.onnx``, stage quantize).
* ``fp32``: this pipeline's FP32 model (``models/model.onnx``, stage export).

``EMOREC_MODEL`` (an ONNX file) overrides all of them. :func:`model_provenance` says what is
served in ``/health``: the kind, the file, its sha256 and the card's model name, so a client
can tell which model answered without reading the server's configuration.

No torch, pandas or huggingface_hub here: this module travels in the serving image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emorec.config import Params
from emorec.errors import ParamsError

#: serve.model -> the pipeline's file (``shipped`` reads serve.shipped_model instead).
PIPELINE_FILES = {"pipeline": "models/model.int8.onnx", "fp32": "models/model.onnx"}
CHOICES = ("shipped", *PIPELINE_FILES)
#: File names inside a shipped model folder (what ``models/fer2013/`` holds).
SHIPPED_MODEL_FILE = "model.int8.onnx"
LABEL_MAP_FILE = "label_map.json"
CARD_FILE = "README.md"
#: The pipeline's label map (split stage), paired with the pipeline's models.
PIPELINE_LABEL_MAP = "data/processed/label_map.json"
ENV_VAR = "EMOREC_MODEL"


@dataclass(frozen=True)
class ModelChoice:
    """The model file to load and why this one."""

    path: Path
    kind: str                 # shipped | pipeline | env
    setting: str              # how it was chosen, for humans: "serve.model: shipped", ...
    label_map: Path | None    # the class -> index map that belongs to it, when known


def shipped_folder(params: Params, root: Path) -> Path:
    """``serve.shipped_model`` as a folder under ``root`` holding the shipped model files."""
    raw = params.get("serve.shipped_model")
    if not isinstance(raw, str) or not raw.strip():
        raise ParamsError("serve.shipped_model",
                          f"must be a folder such as models/fer2013, got {raw!r}")
    return root / raw


def choose_model(params: Params, root: Path, env: dict[str, str] | None = None) -> ModelChoice:
    """The model ``serve.model`` (or ``EMOREC_MODEL`` in ``env``) names, paths under ``root``.

    Only the choice is made here; whether the file exists is checked where it is opened
    (:class:`emorec.inference.OnnxClassifier` raises one clear error), so that a bento can be
    described before its models are built.
    """
    choice = params.choice("serve.model", CHOICES)
    override = (env or {}).get(ENV_VAR)
    if override:
        path = Path(override)
        label_map = path.with_name(LABEL_MAP_FILE)
        return ModelChoice(path, "env", f"{ENV_VAR}={override}",
                           label_map if label_map.is_file() else None)
    if choice == "shipped":
        folder = shipped_folder(params, root)
        return ModelChoice(folder / SHIPPED_MODEL_FILE, "shipped",
                           f"serve.model: shipped, serve.shipped_model: "
                           f"{params.get('serve.shipped_model')}", folder / LABEL_MAP_FILE)
    return ModelChoice(root / PIPELINE_FILES[choice], "pipeline", f"serve.model: {choice}",
                       root / PIPELINE_LABEL_MAP)


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (models are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_name(model_path: Path) -> str | None:
    """The ``model-index`` name in the model card (``README.md``) next to the model, if any.

    The card's YAML header is read with PyYAML alone (the serving image has no
    huggingface_hub); a missing or unreadable card gives ``None``, never an error, because the
    pipeline's own model folder need not have one.
    """
    card = model_path.with_name(CARD_FILE)
    try:
        text = card.read_text()
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    header, sep, _ = text[3:].partition("\n---")
    if not sep:
        return None
    try:
        meta = yaml.safe_load(header)
    except yaml.YAMLError:
        return None
    index = meta.get("model-index") if isinstance(meta, dict) else None
    if isinstance(index, list) and index and isinstance(index[0], dict):
        name = index[0].get("name")
        return str(name) if name else None
    return None


def model_provenance(choice: ModelChoice, classes: list[str]) -> dict[str, Any]:
    """What ``/health`` says about the served model: kind, setting, file, sha256, card name."""
    return {"kind": choice.kind, "setting": choice.setting, "path": str(choice.path),
            "sha256": sha256(choice.path), "card_name": card_name(choice.path),
            "classes": list(classes)}
