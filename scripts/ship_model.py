"""Ship a finished experiment's model in ``models/<name>/`` and pick the default on validation data.

    python scripts/run_preset.py multisource-cpu          # the experiment (see presets/)
    python scripts/ship_model.py multisource --choose models/fer2013

writes ``models/multisource/`` (INT8 ONNX, label map, fp16 safetensors to fine-tune from, model
card with the cross-corpus table) and ``reports/multisource.json``. With ``--choose``, every
listed shipped model and the new one are scored on the run's val split per source, and
``reports/model_choice.json`` names the one with the highest mean balanced accuracy over the
sources; ``--set-default`` then writes it into params.yaml's ``serve.shipped_model``.

Takes about a minute on 2 cores (AMD EPYC), more with --choose (each model scored on the val
split).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emorec.cli import script_parser
from emorec.config import load_params
from emorec.publish import CardInputs, render_card
from emorec.shipping import (
    cross_corpus_table,
    package,
    record_choice,
    run_report,
    set_shipped_default,
)
from emorec.unseen import CARD_END, CARD_HEADING, CARD_START


def card(workspace: Path, report: dict, name: str, pictures: Path | None,
         fer2013: Path | None = None) -> str:
    """The Hub card of the run, plus its data sources and the cross-corpus table."""
    params = load_params(workspace / "params.yaml")
    reports = workspace / "reports"
    inputs = CardInputs.from_paths(reports / "metrics/test.json",
                                   reports / "metrics/calibration.json",
                                   reports / "quantize.json", reports / "split.json", fer2013)
    lines = [render_card(params, inputs, files=list(report["files"])).rstrip()]
    start = (report.get("recipe") or {}).get("train", {}).get("pretrained", "none")
    if str(start).endswith(".safetensors"):  # a two-stage recipe: say where it started
        lines += ["", f"Fine-tuned from `{start}` (a model shipped in this repository)."]
    if report["sources"]:  # a multi-source run; one source is described by the card itself
        lines += ["", "## Data sources", "",
                  "| source | reader | split | images |", "|---|---|---|---:|"]
        lines += [f"| {source} | {info['reader']} | {info['split']} | {info['accepted']} |"
                  for source, info in report["sources"].items()]
    by_source = report["test"].get("by_source") or {}
    if by_source:
        lines += ["", "Test split per source (majority labels for FER+):", "",
                  "| source | images | accuracy | balanced acc. | macro-F1 |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {s} | {m['n']} | {100 * m['accuracy']:.1f}% | "
                  f"{100 * m['balanced_accuracy']:.1f}% | {m['macro_f1']:.3f} |"
                  for s, m in by_source.items()]
    cross = report.get("cross_corpus")
    if cross and cross.get("sets"):
        lines += ["", "## Cross-corpus (through the service's detect-align-crop path)", "",
                  f"{cross['path']}; no face found counts as wrong. Measured on "
                  f"{cross['hardware']}.", "", *cross_corpus_table(cross)]
    if pictures is not None and (pictures / "xai/comparison.png").is_file():
        up = Path("../..") / pictures  # the card lives in models/<name>/
        lines += ["", "## Real faces (FER+ Test)", "",
                  f"![Grad-CAM, Grad-CAM++, SHAP and LIME]({up}/xai/comparison.png)", "",
                  f"![Confusion matrix]({up}/evaluate/confusion.png) "
                  f"![Reliability diagram]({up}/evaluate/reliability.png)"]
    # filled by `python scripts/unseen.py report` (the protocol's table, emorec.unseen)
    lines += ["", CARD_HEADING, "", CARD_START, "_Not scored yet: run `python scripts/unseen.py "
              "score` and `report`._", CARD_END]
    if "weights.fp16.safetensors" in report["files"]:
        lines += ["", "## Fine-tune from these weights", "", "```yaml",
                  f"train.pretrained: models/{name}/weights.fp16.safetensors   # params.yaml",
                  "```"]
    return "\n".join([*lines, ""])


def report_choice(choice: dict, set_default: bool) -> None:
    """Print the validation scores and, with ``set_default``, serve the chosen model."""
    for name, score in choice["candidates"].items():
        print(f"{name}: mean balanced accuracy over val sources "
              f"{100 * score['mean_balanced_accuracy']:.1f}%")
    print(f"chosen: {choice['chosen']}")
    if set_default:
        try:
            set_shipped_default(Path("params.yaml"), f"models/{choice['chosen']}")
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("name", help="folder under models/ and report name under reports/")
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="DVC workspace of the finished run (params.yaml, models/, reports/)")
    parser.add_argument("--choose", nargs="*", type=Path, default=[], metavar="FOLDER",
                        help="other shipped model folders to compare on the run's val split")
    parser.add_argument("--baseline", type=Path, default=None, metavar="JSON",
                        help="another model's cross_corpus report on the same sets, shown beside")
    parser.add_argument("--pictures", type=Path, default=None, metavar="DIR",
                        help="scripts/real_face_pictures.py output of this model for the card")
    parser.add_argument("--fer2013", type=Path, default=None, metavar="JSON",
                        help="scripts/fer2013_report.py output of this run, for the card")
    parser.add_argument("--no-weights", action="store_true",
                        help="ship no fp16 safetensors (a model nobody fine-tunes from)")
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="where the figures go (default: reports/NAME.json)")
    parser.add_argument("--set-default", action="store_true",
                        help="write the chosen folder into params.yaml serve.shipped_model")
    args = parser.parse_args(argv)
    ws = args.workspace
    missing = [p for p in ("models/model.int8.onnx", "models/best.pt", "reports/metrics/test.json")
               if not (ws / p).is_file()]
    if missing:
        print(f"error: {ws} has no finished run (missing {missing}); run "
              "a preset first, e.g. `python scripts/run_preset.py multisource-cpu`",
              file=sys.stderr)
        return 2
    dest = Path("models") / args.name
    files = package(ws, dest, weights=not args.no_weights)
    report = run_report(ws, args.name) | {"files": files}
    if args.baseline is not None:
        report["cross_corpus_baseline"] = json.loads(args.baseline.read_text()) | {
            "report": str(args.baseline)}
    (dest / "README.md").write_text(card(ws, report, args.name, args.pictures, args.fer2013))
    out = args.report or Path("reports") / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{dest}: {', '.join(files)}; figures in {out}")
    if args.choose or args.set_default:
        candidates = {args.name: dest / "model.int8.onnx"}
        candidates |= {f.name: f / "model.int8.onnx" for f in args.choose}
        report_choice(record_choice(candidates, ws), args.set_default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
