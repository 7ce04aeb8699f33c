"""Stage mobile_assets: the served model + its label map -> mobile/public/model/ for the web app.

The model is the one the service serves (``serve.model``: by default the shipped real-face model
in ``serve.shipped_model``; ``pipeline`` for models/model.int8.onnx with
data/processed/label_map.json), so the app and the server answer alike. ``--model`` and
``--label-map`` override the choice (then the model is checked against params.yaml too).
Writes the model, label_map.json and config.json (input name, classes, image size/mean/std,
crop mode and face margin) after checking that the model's metadata and the label map (and, for
the pipeline's model, params.yaml) agree. Report: reports/mobile_assets.json (sizes, hashes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.errors import EmorecError
from emorec.mobile import MobileSettings, write_mobile_assets
from emorec.served_model import choose_model

log = logging.getLogger("emorec.stages.mobile_assets")


def main(params: Params, args: argparse.Namespace) -> None:
    chosen = choose_model(params, Path("."))
    model = args.model or chosen.path
    label_map = args.label_map or (chosen.label_map if args.model is None else None)
    if label_map is None:
        raise EmorecError("--label-map is required with --model (the class -> index map of "
                          "that model)")
    given = args.model is not None
    report = write_mobile_assets(model, label_map, args.out, MobileSettings.from_params(params),
                                 check_params=given or chosen.kind == "pipeline",
                                 source="--model" if given else chosen.setting)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%d files, %.1f kB)", args.out, len(report["files"]),
             report["total_bytes"] / 1e3)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", type=Path, default=None,
                        help="ONNX model to bundle (default: the one serve.model picks)")
    parser.add_argument("--label-map", type=Path, default=None,
                        help="its class -> index map (default: the chosen model's)")
    parser.add_argument("--out", type=Path, default=Path("mobile/public/model"),
                        help="folder the web app loads its model from (replaced)")
    parser.add_argument("--report", type=Path, default=Path("reports/mobile_assets.json"),
                        help="stage report")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
