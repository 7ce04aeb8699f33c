"""A Hugging Face model card from the pipeline's reports, and publishing the model to the Hub.

``write_model_card`` (the ``model_card`` DVC stage) renders ``models/README.md``: a YAML header
the Hub understands (license, ``library_name: onnx``, tags, ``pipeline_tag``, metrics in
``model-index`` form) followed by what a user must know before trusting the model: the data,
the measured figures, intended use, limitations, the known biases of FER-style data and how the
probabilities are calibrated. Every number comes from a report file, never from the author.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorec.config import Params
from emorec.errors import EmorecError

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
TAGS = ["image-classification", "facial-expression-recognition", "emotion-recognition", "onnx",
        "int8", "dvc", "emorec"]


class PublishError(EmorecError):
    """A file to publish is missing, or the upload cannot start (no token, bad repo id)."""


# -- inputs ------------------------------------------------------------------------------------


def read_json(path: Path | None, required: bool = True) -> dict[str, Any] | None:
    """A report; ``None`` when optional and absent (e.g. FER2013 figures not produced yet)."""
    if path is None or not path.is_file():
        if required:
            raise PublishError(f"report not found: {path} (run `dvc repro` first)")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PublishError(f"{path} is not valid JSON: {err}") from err


@dataclass(frozen=True)
class CardInputs:
    """The reports a card is written from (``None`` where a report is optional and absent)."""

    test: dict[str, Any]
    calibration: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    fer2013: dict[str, Any] | None = None

    @classmethod
    def from_paths(cls, test: Path, calibration: Path | None = None,
                   quantize: Path | None = None, split: Path | None = None,
                   fer2013: Path | None = None) -> CardInputs:
        return cls(test=read_json(test), calibration=read_json(calibration, required=False),
                   quantize=read_json(quantize, required=False),
                   split=read_json(split, required=False),
                   fer2013=read_json(fer2013, required=False))


def headline(report: dict[str, Any]) -> dict[str, float]:
    """``accuracy`` / ``macro_f1`` of a report, at the top level or under ``test``.

    The FER2013 report is written by another tool, so its shape is taken loosely.
    """
    for node in (report, report.get("test"), report.get("metrics")):
        if isinstance(node, dict) and any(k in node for k in ("accuracy", "macro_f1")):
            return {k: float(node[k]) for k in ("accuracy", "macro_f1")
                    if isinstance(node.get(k), int | float)}
    return {}


# -- the card ----------------------------------------------------------------------------------


def fer2013_scores(report: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """``(label, {accuracy, macro_f1})`` per class setting of ``reports/fer2013.json``.

    ``emorec.real_data.build_report`` writes ``test`` (the run's classes, usually the 7 of the
    literature) and, for a 7-class run, ``test_6_class`` (disgust folded into angry).
    """
    rows = []
    for key, fallback in (("test", "test"), ("test_6_class", "6 classes")):
        node = report.get(key)
        figures = headline(node) if isinstance(node, dict) else {}
        if figures:
            classes = node.get("classes")
            label = f"{len(classes)} classes" if isinstance(classes, list) else fallback
            fold = node.get("fold")
            if isinstance(fold, dict) and fold:
                label += " (" + ", ".join(f"{k} -> {v}" for k, v in fold.items()) + ")"
            rows.append((label, figures))
    if not rows and headline(report):  # a flat {accuracy, macro_f1} report
        rows.append(("test", headline(report)))
    return rows


def eval_results(inputs: CardInputs, data_source: str) -> list[Any]:
    """``model-index`` entries: test accuracy/macro-F1 on the pipeline's data (+ FER2013).

    The header claims results *of these files*, so FER2013 figures enter it only when the
    model was trained on FER2013 (``data.source: fer2013``); otherwise they stay in the text.
    """
    from huggingface_hub import EvalResult

    datasets = [(f"emorec-{data_source}", f"emorec {data_source} data, test split", None,
                 headline(inputs.test))]
    if inputs.fer2013 is not None and data_source == "fer2013":
        split = inputs.fer2013.get("test_split", "PrivateTest")
        datasets += [("fer2013", f"FER2013, {split}", label, figures)
                     for label, figures in fer2013_scores(inputs.fer2013)]
    names = {"accuracy": "Test accuracy", "macro_f1": "Test macro-F1"}
    types = {"accuracy": "accuracy", "macro_f1": "f1"}
    return [EvalResult(task_type="image-classification", dataset_type=dtype, dataset_name=dname,
                       dataset_split="test", dataset_config=config, metric_type=types[key],
                       metric_value=round(value, 4),
                       metric_name=names[key] + (f", {config}" if config else ""),
                       metric_config="macro" if key == "macro_f1" else None)
            for dtype, dname, config, figures in datasets for key, value in figures.items()]


def card_metadata(params: Params, inputs: CardInputs, license_id: str, model_name: str) -> Any:
    from huggingface_hub import ModelCardData

    return ModelCardData(
        license=license_id, library_name="onnx", tags=TAGS, pipeline_tag="image-classification",
        model_name=model_name, eval_results=eval_results(inputs, params.get("data.source")))


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def _metrics_section(params: Params, inputs: CardInputs) -> list[str]:
    test = inputs.test
    classes = params.classes
    lines = ["## Metrics", "",
             f"Test split of the pipeline's own data (`data.source: {params.get('data.source')}`"
             f", {test.get('n_images', 'n/a')} images; chance macro-F1 about "
             f"{1 / len(classes):.2f}):", "",
             "| Metric | Value |", "|---|---|",
             f"| Accuracy | {_fmt(test.get('accuracy'))} |",
             f"| Macro-F1 | {_fmt(test.get('macro_f1'))} |"]
    q = inputs.quantize or {}
    for key, label in (("fp32", "ONNX FP32"), ("int8", "ONNX INT8")):
        if isinstance(q.get(key), dict):
            lines.append(f"| {label} macro-F1 ({q[key].get('bytes', 0) / 1e6:.1f} MB) | "
                         f"{_fmt(q[key].get('test', {}).get('macro_f1'))} |")
    lines += ["", "| Class | Precision | Recall | F1 | Support |", "|---|---|---|---|---|"]
    for name, row in (test.get("per_class") or {}).items():
        lines.append(f"| {name} | {_fmt(row.get('precision'))} | {_fmt(row.get('recall'))} | "
                     f"{_fmt(row.get('f1'))} | {row.get('support', '')} |")
    lines += ["", "### FER2013", ""]
    if inputs.fer2013 is None:
        lines.append("No FER2013 figures yet (`reports/fer2013.json` absent): the numbers above "
                     "are on the pipeline's own data only and say nothing about real photos.")
    else:
        lines += _fer2013_lines(inputs.fer2013, params.get("data.source"))
    return lines + [""]


def _fer2013_lines(report: dict[str, Any], data_source: str) -> list[str]:
    """The FER2013 table plus the run's provenance (commit, hardware, INT8 drop) if recorded."""
    split = report.get("test_split", "test split")
    n = (report.get("test") or {}).get("n") if isinstance(report.get("test"), dict) else None
    lines = ["Figures of a FER2013 run of this pipeline (trained on the official Training split, "
             f"tested on {split}" + (f", {n} images" if n else "") + ")."]
    if data_source != "fer2013":
        lines[0] += (" That is a separate run, not the model files here, which were trained "
                     f"with `data.source: {data_source}`.")
    lines += ["",
             "| Classes | Accuracy | Macro-F1 |", "|---|---|---|"]
    lines += [f"| {label} | {_fmt(f.get('accuracy'))} | {_fmt(f.get('macro_f1'))} |"
              for label, f in fer2013_scores(report)]
    int8 = report.get("int8")
    if isinstance(int8, dict) and "accuracy" in int8:
        lines += ["", f"INT8 model accuracy {_fmt(int8['accuracy'])} (drop "
                      f"{_fmt(int8.get('accuracy_drop_points'), 2)} points vs ONNX FP32)."]
    facts = []
    if report.get("commit"):
        facts.append(f"commit `{str(report['commit'])[:12]}`")
    hardware = report.get("hardware")
    if isinstance(hardware, dict) and hardware.get("summary"):
        facts.append(f"hardware: {hardware['summary']}")
    train = report.get("train")
    if isinstance(train, dict) and isinstance(train.get("wall_time_s"), int | float):
        facts.append(f"training {train['wall_time_s'] / 3600:.1f} h")
    if facts:
        lines += ["", "Run: " + "; ".join(facts) + " (`reports/fer2013.json`)."]
    note = report.get("notes") or report.get("description")
    if note:
        lines += ["", str(note)]
    return lines


def _data_section(params: Params, inputs: CardInputs) -> list[str]:
    source = params.get("data.source")
    about = {
        "demo": "the project's seeded **procedural** face generator (grayscale cartoons whose "
                "expression is carried by brow, eye and mouth geometry). They are not photos of "
                "people: figures on them show the pipeline works, not that the model reads real "
                "faces.",
        "fer2013": "FER2013 (Goodfellow et al., 2013): about 35,900 48x48 grayscale faces "
                   "collected by image search and labelled into 7 expressions, with its official "
                   "Training / PublicTest / PrivateTest split.",
        "folder": "an image folder (`root/<class>/*`) supplied by whoever ran the pipeline.",
    }.get(source, f"data source `{source}`.")
    lines = ["## Data", "", f"Trained on {about}", "",
             f"Classes (index order): {', '.join(params.classes)}. Input: grayscale "
             f"{params.get('image.size')}x{params.get('image.size')}, "
             f"`(pixel/255 - {params.get('image.mean')}) / {params.get('image.std')}`, "
             "layout `[N, 1, S, S]` float32 (stored in the ONNX metadata too)."]
    sizes = (inputs.split or {}).get("sizes")
    if isinstance(sizes, dict):
        lines += ["", "Split sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
                  + " (train after balancing; synthetic images, if any, only in train)."]
    return lines + [""]


def _calibration_section(inputs: CardInputs) -> list[str]:
    cal = inputs.calibration
    lines = ["## Calibration", ""]
    if cal is None:
        return lines + ["No calibration report: probabilities are a plain softmax.", ""]
    before, after = cal["test"]["before"], cal["test"]["after"]
    lines += [f"Temperature scaling fitted on the validation split: **T = "
              f"{cal['temperature']:.3f}**, stored in the ONNX metadata as `emorec.temperature`; "
              "probabilities are `softmax(logits / T)`. It never changes the predicted class.",
              "", f"| Test ({cal['bins']} bins) | ECE | NLL | Brier |", "|---|---|---|---|",
              f"| before | {_fmt(before['ece'])} | {_fmt(before['nll'])} | "
              f"{_fmt(before['brier'])} |",
              f"| after | {_fmt(after['ece'])} | {_fmt(after['nll'])} | {_fmt(after['brier'])} |"]
    selective = cal.get("selective") or {}
    cover = {k: v for k, v in selective.items() if k.startswith("accuracy_at_")}
    if cover:
        lines += ["", "Selective prediction (answer only the most confident images): "
                  + ", ".join(f"{k.split('_')[2]}% coverage -> accuracy {_fmt(v)}"
                              for k, v in cover.items()) + "."]
    if "min_confidence" in cal:
        lines += [f"Suggested `min_confidence` {cal['min_confidence']:.3f} (answers about "
                  f"{selective.get('min_confidence_target_coverage', 0.9):.0%} of val, stored "
                  "as `emorec.min_confidence`): below it, answer `uncertain` rather than a "
                  "class."]
    return lines + [""]


FIXED_SECTIONS = """## Intended use

- Research, teaching and demos of a reproducible pipeline (DVC, ONNX, INT8, calibration).
- Exploring facial *expression* classification on consenting users' own images, on device.

Not intended for decisions about people: hiring, education or workplace monitoring,
policing, border control, insurance, health or credit. The EU AI Act prohibits emotion
recognition in workplaces and education institutions (except for medical or safety reasons).

## Limitations

- It classifies the *configuration of a face*, not what someone feels: the same expression
  can accompany different emotions, and people express emotions differently (Barrett et al.,
  2019, "Emotional Expressions Reconsidered").
- Six (or seven) discrete classes are a simplification; blends, subtle and neutral-ish faces
  are the usual errors, and the model always picks one class unless a confidence threshold is
  applied.
- Trained on small grayscale crops of a single, roughly frontal face: profiles, occlusion
  (masks, hands, glasses), strong lighting, motion blur and children are out of distribution.
- Face detection (OpenCV Haar cascade in the service, the browser's FaceDetector in the app)
  fails on some faces before this model runs; a wrong crop gives a confident wrong answer.
- Calibration is fitted on the validation split; on data unlike it (another camera,
  population or country) the probabilities are again only scores.

## Known biases of FER-style data

- **Label noise and ambiguity**: FER2013 labels come from one annotator per image; human
  accuracy on it is about 65 +/- 5 % (Goodfellow et al., 2013), so part of the "error" is
  disagreement about the label.
- **Posed and exaggerated expressions** from web image search dominate; spontaneous, subtle
  expressions are rarer and harder.
- **Demographic imbalance**: web-scraped face datasets over-represent young, light-skinned
  adults and under-represent children, older people and darker skin tones; FER models have
  been shown to err more for under-represented groups (e.g. Xu et al., 2020, "Investigating
  Bias and Fairness in Facial Expression Recognition"; Dominguez-Catena et al., 2024,
  "Metrics for Dataset Demographic Bias: A Case Study on Facial Expression Recognition").
- **Stereotyped associations**: some datasets link classes with gender or age (e.g. more
  "happy" women, more "angry" men), which a model can learn as a shortcut.
- **Cultural display rules**: the six "basic" expressions are read differently across
  cultures (Jack et al., 2012), so accuracy measured on one population does not transfer.
- **Class imbalance**: disgust and fear are rare; per-class recall above matters more than
  overall accuracy.

No per-group evaluation has been run for this model; do not assume equal accuracy across
age, gender or skin tone.
"""


def _usage_section(repo_id: str | None) -> list[str]:
    where = repo_id or "USER/NAME"
    return ["## How to use", "", "```python",
            "import json, numpy as np, onnxruntime as ort",
            "from huggingface_hub import hf_hub_download",
            f'path = hf_hub_download("{where}", "model.int8.onnx")',
            "session = ort.InferenceSession(path)",
            "meta = session.get_modelmeta().custom_metadata_map",
            'classes = json.loads(meta["emorec.classes"])',
            'T = float(meta.get("emorec.temperature", 1.0))',
            "# x: float32 [N, 1, S, S], preprocessed as in meta['emorec.image']",
            "logits = session.run(None, {'input': x})[0] / T",
            "probs = np.exp(logits - logits.max(1, keepdims=True))",
            "probs /= probs.sum(1, keepdims=True)", "```", "",
            "`model.int8.ort` is the same INT8 model in ORT format for onnxruntime-mobile; "
            "`label_map.json` maps class names to output indices.", ""]


def render_card(params: Params, inputs: CardInputs, license_id: str = "mit",
                repo_id: str | None = None) -> str:
    """The full ``README.md`` text: YAML header (model-index) and the sections."""
    from huggingface_hub import ModelCard

    model = params.get("train.model")
    name = f"emorec-{model}"
    data = card_metadata(params, inputs, license_id, name)
    body = [f"# {name}: facial emotion recognition (ONNX, INT8)", "",
            f"A `{model}` (timm) classifier of facial expressions into "
            f"{len(params.classes)} classes, exported to ONNX and quantized to INT8 by the "
            "emorec DVC pipeline. Files: `model.onnx` (FP32), `model.int8.onnx` (INT8, QDQ), "
            "`model.int8.ort` (INT8, ORT format), `label_map.json`. Class names, preprocessing "
            "and the calibration temperature are stored in the ONNX metadata.", "",
            *_data_section(params, inputs), *_metrics_section(params, inputs),
            *_calibration_section(inputs), FIXED_SECTIONS, *_usage_section(repo_id)]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return str(ModelCard(text))


def write_model_card(params: Params, inputs: CardInputs, out: Path, license_id: str = "mit",
                     repo_id: str | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_card(params, inputs, license_id, repo_id))
    return out


# -- publishing --------------------------------------------------------------------------------


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
