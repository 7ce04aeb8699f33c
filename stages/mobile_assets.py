"""Stage mobile_assets: models/model.int8.onnx + label map -> mobile/public/model/ for the web app.

Writes model.int8.onnx, label_map.json and config.json (input name, classes, image size/mean/std,
crop mode and face margin) after checking that the model's metadata, the label map and
params.yaml agree. Report: reports/mobile_assets.json (file sizes and hashes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.mobile import MobileSettings, write_mobile_assets

log = logging.getLogger("emorec.stages.mobile_assets")


def main(params: Params, args: argparse.Namespace) -> None:
    report = write_mobile_assets(args.model, args.label_map, args.out,
                                 MobileSettings.from_params(params))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%d files, %.1f kB)", args.out, len(report["files"]),
             report["total_bytes"] / 1e3)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/model.int8.onnx"),
                        help="quantized model (quantize stage)")
    parser.add_argument("--label-map", type=Path, default=Path("data/processed/label_map.json"),
                        help="class -> index map (split stage)")
    parser.add_argument("--out", type=Path, default=Path("mobile/public/model"),
                        help="folder the web app loads its model from (replaced)")
    parser.add_argument("--report", type=Path, default=Path("reports/mobile_assets.json"),
                        help="stage report")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
