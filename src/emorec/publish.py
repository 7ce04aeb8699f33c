"""Publishing the model to the Hugging Face Hub, with the card :mod:`emorec.model_card` renders.

``python -m emorec.publish --repo-id USER/NAME`` uploads a model repo with ``huggingface_hub``
(token from ``HF_TOKEN``); ``--dry-run DIR`` assembles the same folder locally and uploads
nothing, so what would be published can be inspected (and tested offline). What is published:

* by default the shipped real-face model, the folder ``serve.shipped_model`` names (or
  ``--model-folder DIR``): :data:`FOLDER_FILES`, i.e. its INT8 ONNX model, ``label_map.json``, a
  ``config.json`` (classes, preprocessing, face margin, temperature) and a runnable usage example
  ``example.py``, with its card (the folder's ``README.md``, model-index metrics kept) told
  which files the repo holds and how to use them. That is the model users get from the
  service and the app, so it is the one worth sharing;
* with ``--models-dir`` (``--card``, ``--label-map``): this pipeline's models,
  :data:`PUBLISHED_FILES`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emorec.errors import EmorecError

# CardInputs, render_card, write_model_card: re-exported for callers that predate model_card
from emorec.model_card import CardInputs, PublishError, render_card, write_model_card  # noqa: F401

log = logging.getLogger(__name__)

MODEL_FILES = ("model.onnx", "model.int8.onnx", "model.int8.ort")
CARD_FILE = "README.md"
LABEL_MAP_FILE = "label_map.json"
#: What a publish uploads, no more and no less.
PUBLISHED_FILES = (*MODEL_FILES, CARD_FILE, LABEL_MAP_FILE)
#: What a model-folder publish holds (the model file keeps its name, see FOLDER_MODEL_FILE).
FOLDER_MODEL_FILE = "model.int8.onnx"
CONFIG_FILE = "config.json"
EXAMPLE_FILE = "example.py"
FOLDER_FILES = (FOLDER_MODEL_FILE, LABEL_MAP_FILE, CONFIG_FILE, EXAMPLE_FILE, CARD_FILE)


def source_files(models_dir: Path, card: Path, label_map: Path) -> dict[str, Path]:
    """Name in the repo -> local file, for every file in :data:`PUBLISHED_FILES`."""
    files = {name: models_dir / name for name in MODEL_FILES}
    files[CARD_FILE] = card
    files[LABEL_MAP_FILE] = label_map
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise PublishError(f"cannot publish, missing: {', '.join(missing)} (run `dvc repro "
                           "model_card`, which builds the models and the card)")
    return files


def assemble(files: dict[str, Path], folder: Path) -> Path:
    """Copy the files into ``folder`` (emptied first): exactly what is uploaded."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, src in files.items():
        shutil.copyfile(src, folder / name)
    return folder


def upload(folder: Path, repo_id: str, token: str, private: bool = False,
           message: str = "Upload emorec model") -> str:
    """Create the model repo if needed and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=message)
    return str(getattr(info, "commit_url", info))


def check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise PublishError(f"--repo-id must look like USER/NAME, got {repo_id!r}")
    return repo_id


def publish(repo_id: str, models_dir: Path, card: Path, label_map: Path,
            dry_run: Path | None = None, private: bool = False,
            env: dict[str, str] | None = None) -> Path | str:
    """Dry run: the assembled folder. Otherwise: the upload's commit URL."""
    check_repo_id(repo_id)
    files = source_files(models_dir, card, label_map)
    if dry_run is not None:
        folder = assemble(files, dry_run)
        log.info("dry run: %s holds what would go to %s; nothing uploaded", folder, repo_id)
        return folder
    token = (env if env is not None else os.environ).get("HF_TOKEN")
    if not token:
        raise PublishError("HF_TOKEN is not set (a write token from "
                           "https://huggingface.co/settings/tokens)")
    with tempfile.TemporaryDirectory() as tmp:
        return upload(assemble(files, Path(tmp) / "upload"), repo_id, token, private)


# -- a shipped model folder -------------------------------------------------------------------

#: The usage example written as ``example.py`` and shown in the card: onnxruntime, numpy and
#: Pillow only, preprocessing exactly as ``emorec.transforms.Preprocess`` (tested against it).
EXAMPLE = '''"""Classify a face crop with this repo's ONNX model: python example.py face.png"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

here = Path(__file__).resolve().parent
config = json.loads((here / "config.json").read_text())
image = config["image"]
session = ort.InferenceSession(str(here / config["model_file"]),
                               providers=["CPUExecutionProvider"])
gray = Image.open(sys.argv[1]).convert("L")  # grayscale, as the model was trained
if gray.size != (image["size"], image["size"]):
    gray = gray.resize((image["size"], image["size"]), Image.BILINEAR)
x = (np.asarray(gray, dtype=np.float32) / 255.0 - image["mean"]) / image["std"]
logits = session.run(None, {config["input_name"]: x[None, None].astype(np.float32)})[0][0]
z = logits.astype(np.float64) / config["temperature"]  # calibrated probabilities
probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
print(json.dumps({"label": config["classes"][int(probs.argmax())],
                  "probabilities": dict(zip(config["classes"], probs.round(6).tolist()))}))
'''


def folder_config(model_path: Path, face_margin: float) -> dict[str, Any]:
    """``config.json``: what a user needs besides the ONNX file to feed it and read it.

    Everything comes from the model's own metadata (written by the export stage) except the
    face margin, the service's crop setting (``serve.face_margin``) the model was measured with.
    """
    from emorec.inference import OnnxClassifier

    model = OnnxClassifier(model_path, threads=1, execution_providers=["CPUExecutionProvider"])
    pre = model.preprocess
    return {
        "architecture": model.metadata.get("emorec.model_name"),
        "model_file": FOLDER_MODEL_FILE, "label_map": LABEL_MAP_FILE,
        "input_name": model.input_name, "output_name": model.output_name,
        "classes": model.classes,
        "image": {"size": pre.size, "mean": pre.mean, "std": pre.std, "grayscale": True,
                  "resize": "bilinear", "layout": "NCHW float32 [N, 1, size, size]",
                  "normalize": "(pixel / 255 - mean) / std"},
        "face_crop": {"margin": face_margin,
                      "note": "square crop around the detected face, eyes levelled, margin "
                              "= share of the box side on each side"},
        "temperature": model.temperature,
        "suggested_min_confidence": model.suggested_min_confidence,
    }


def _folder_usage(repo_id: str | None) -> list[str]:
    where = repo_id or "USER/NAME"
    return ["## How to use", "",
            "Files: `model.int8.onnx` (INT8, QDQ; class names, preprocessing and the calibration "
            "temperature are also in its ONNX metadata), `label_map.json` (class -> output "
            "index), `config.json` (classes, input size, mean/std, grayscale, face margin, "
            "temperature) and `example.py` (below).", "",
            "```python",
            "import subprocess, sys",
            "from huggingface_hub import snapshot_download",
            f'folder = snapshot_download("{where}")',
            'subprocess.run([sys.executable, f"{folder}/example.py", "face.png"])  # any size',
            "```", "", "`example.py` (onnxruntime, numpy, Pillow):", "", "```python",
            EXAMPLE.rstrip(), "```", "",
            "The model expects a face crop, not a whole photo: find faces first (the emorec "
            "service uses MTCNN and the margin in `config.json`).", ""]


def folder_card(card_path: Path, repo_id: str | None) -> str:
    """The folder's card with its metadata (model-index) kept and its usage section replaced.

    The card was written by the run that trained the model (stage model_card), so its figures
    are that run's; only what this repo holds and how to use it changes.
    """
    from huggingface_hub import ModelCard

    if not card_path.is_file():
        raise PublishError(f"model card not found: {card_path} (a model folder needs its "
                           "README.md from the model_card stage)")
    card = ModelCard.load(card_path)
    if not getattr(card.data, "eval_results", None):
        raise PublishError(f"{card_path} has no model-index metrics in its YAML header")
    body = card.text.split("\n## How to use", 1)[0].rstrip()
    # the pipeline's card lists the pipeline's three model files; this repo holds one
    body = re.sub(r"Files: `model\.onnx`[^\n]*?`label_map\.json`\.",
                  "Files: see *How to use*.", body, flags=re.S)
    text = f"---\n{card.data.to_yaml()}\n---\n\n{body}\n\n" + "\n".join(
        _folder_usage(repo_id))
    return str(ModelCard(text))


def folder_files(folder: Path) -> dict[str, Path]:
    """The files a model folder must hold, or one error naming what is missing."""
    files = {name: folder / name for name in (FOLDER_MODEL_FILE, LABEL_MAP_FILE, CARD_FILE)}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise PublishError(f"cannot publish {folder}, missing: {', '.join(missing)}")
    return files


def assemble_folder(folder: Path, out: Path, face_margin: float,
                    repo_id: str | None = None) -> Path:
    """Write the complete repo folder for a shipped model folder into ``out`` (emptied first)."""
    files = folder_files(folder)
    card = folder_card(files[CARD_FILE], repo_id)
    config = folder_config(files[FOLDER_MODEL_FILE], face_margin)
    assemble({n: p for n, p in files.items() if n != CARD_FILE}, out)
    (out / CARD_FILE).write_text(card)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / EXAMPLE_FILE).write_text(EXAMPLE)
    return out


def publish_folder(folder: Path, face_margin: float, repo_id: str | None,
                   dry_run: Path | None = None, private: bool = False,
                   env: dict[str, str] | None = None) -> Path | str:
    """Like :func:`publish` for a shipped model folder (``serve.shipped_model``)."""
    if repo_id is not None:
        check_repo_id(repo_id)
    if dry_run is not None:
        out = assemble_folder(folder, dry_run, face_margin, repo_id)
        log.info("dry run: %s holds what would go to %s; nothing uploaded", out,
                 repo_id or "the Hub")
        return out
    if repo_id is None:
        raise PublishError("--repo-id USER/NAME is required to upload (or give --dry-run DIR)")
    token = (env if env is not None else os.environ).get("HF_TOKEN")
    if not token:
        raise PublishError("HF_TOKEN is not set (a write token from "
                           "https://huggingface.co/settings/tokens)")
    with tempfile.TemporaryDirectory() as tmp:
        return upload(assemble_folder(folder, Path(tmp) / "upload", face_margin, repo_id),
                      repo_id, token, private)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emorec.publish", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repo-id", default=None,
                        help="Hub model repo, USER/NAME (required to upload)")
    parser.add_argument("--dry-run", type=Path, metavar="DIR",
                        help="assemble the upload in DIR and upload nothing")
    parser.add_argument("--model-folder", type=Path, default=None,
                        help="a shipped model folder (model.int8.onnx, label_map.json, README.md);"
                             " default: serve.shipped_model of --params")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="for serve.shipped_model and serve.face_margin")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="publish the pipeline's models instead: the folder with "
                             "model.onnx, model.int8.onnx, model.int8.ort (e.g. models)")
    parser.add_argument("--card", type=Path, default=Path("models/README.md"),
                        help="with --models-dir: model card (stage model_card)")
    parser.add_argument("--label-map", type=Path, default=Path("data/processed/label_map.json"),
                        help="with --models-dir: the pipeline's label map")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.models_dir is not None:
            if args.repo_id is None:
                raise PublishError("--repo-id USER/NAME is required with --models-dir")
            result = publish(args.repo_id, args.models_dir, args.card, args.label_map,
                             dry_run=args.dry_run, private=args.private)
        else:
            from emorec.config import load_params
            from emorec.served_model import shipped_folder

            params = load_params(args.params)
            folder = args.model_folder or shipped_folder(params, Path("."))
            result = publish_folder(folder, params.number("serve.face_margin", low=0, high=1),
                                    args.repo_id, dry_run=args.dry_run, private=args.private)
    except EmorecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
