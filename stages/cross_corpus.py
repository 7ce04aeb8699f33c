"""Stage cross_corpus: the INT8 model on evaluate.external's labelled sets, scored through the
service's own path (detect, level the eyes, crop), -> reports/cross_corpus.json.

An image without a found face counts as wrong. With no sets listed (the demo) the report says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.cross_corpus import external_sets, fold_map, predict_set, score_set, summary
from emorec.faces import FaceSettings
from emorec.hardware import cpu_info, describe
from emorec.headline import cross_corpus_headline, write_headline
from emorec.inference import OnnxClassifier

log = logging.getLogger("emorec.stages.cross_corpus")


def main(params: Params, args: argparse.Namespace) -> None:
    model = OnnxClassifier(args.model)
    specs = external_sets(params, model.classes)
    faces = FaceSettings.from_params(params)
    fold = fold_map(params, model.classes)
    sets = {spec.name: score_set(predict_set(model, spec, faces), fold) for spec in specs}
    report = {"model": str(args.model), "classes": model.classes,
              "path": f"{faces.detector} detector, eyes levelled, margin {faces.margin:g}",
              "hardware": describe(cpu_info()), "sets": sets, "mean": summary(sets)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_headline(args.headline, cross_corpus_headline(report))
    for name, entry in sets.items():
        if entry["n"]:
            log.info("%s: %d images, face found in %.1f%%, accuracy %.1f%%, balanced %.1f%%",
                     name, entry["n"], 100 * entry["found_rate"],
                     100 * entry["service"]["accuracy"],
                     100 * entry["service"]["balanced_accuracy"])
    if not specs:
        log.info("evaluate.external lists no set: %s has none", args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/model.int8.onnx"),
                        help="ONNX model to score (e.g. a shipped one under models/)")
    parser.add_argument("--out", type=Path, default=Path("reports/cross_corpus.json"),
                        help="report of every set")
    parser.add_argument("--headline", type=Path,
                        default=Path("reports/metrics/cross_corpus.json"),
                        help="the DVC metrics: means over the sets")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
