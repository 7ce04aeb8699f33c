"""The Hugging Face model card, rendered from the pipeline's reports (the ``model_card`` stage).

:func:`write_model_card` renders ``models/README.md``: a YAML header the Hub understands
(license, ``library_name: onnx``, tags, ``pipeline_tag``, metrics in ``model-index`` form)
followed by what a user must know before trusting the model: the data, the measured figures,
intended use, limitations, the known biases of FER-style data and how the probabilities are
calibrated. Every number comes from a report file, never from the author. Publishing the model
with its card is :mod:`emorec.publish`.
"""


from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emorec.config import Params
from emorec.errors import EmorecError

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
    if isinstance(train, dict) and isinstance(train.get("total_wall_time_s"), int | float):
        facts.append(f"training {train['total_wall_time_s'] / 3600:.1f} h including the start "
                     "weights")  # a fine-tune: both stages' compute counts
    elif isinstance(train, dict) and isinstance(train.get("wall_time_s"), int | float):
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


#: what each file a card can describe is (a published repo holds all, a shipped folder fewer)
FILE_NOTES = {"model.onnx": "FP32", "model.int8.onnx": "INT8, QDQ",
              "model.int8.ort": "INT8, ORT format", "label_map.json": "",
              "weights.fp16.safetensors": "fp16 weights to fine-tune from"}
#: the files a published Hub repo holds (emorec.publish)
PUBLISHED_FILES = ("model.onnx", "model.int8.onnx", "model.int8.ort", "label_map.json")


def render_card(params: Params, inputs: CardInputs, license_id: str = "mit",
                repo_id: str | None = None, files: Sequence[str] | None = None) -> str:
    """The full ``README.md`` text: YAML header (model-index) and the sections; ``files`` are
    the ones next to the card (default: everything a published repo holds)."""
    from huggingface_hub import ModelCard

    model = params.get("train.model")
    name = f"emorec-{model}"
    data = card_metadata(params, inputs, license_id, name)
    body = [f"# {name}: facial emotion recognition (ONNX, INT8)", "",
            f"A `{model}` (timm) classifier of facial expressions into "
            f"{len(params.classes)} classes, exported to ONNX and quantized to INT8 by the "
            f"emorec DVC pipeline. Files: {_file_list(files)}. Class names, preprocessing "
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


def _file_list(files: Sequence[str] | None) -> str:
    names = [n for n in (files or PUBLISHED_FILES) if n in FILE_NOTES]
    return ", ".join(f"`{n}` ({FILE_NOTES[n]})" if FILE_NOTES[n] else f"`{n}`" for n in names)
