"""Stage export: models/best.pt -> models/model.onnx, parity vs PyTorch -> reports/export.json."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.export import ExportSettings, check_parity, export_model, read_calibration

log = logging.getLogger("emorec.stages.export")


def main(params: Params, args: argparse.Namespace) -> None:
    settings = ExportSettings.from_params(params)
    report = export_model(args.checkpoint, args.val, args.out, settings, params.classes,
                          calibration=read_calibration(args.calibration))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    p = report["parity"]
    log.info("exported %s (opset %d): max |dp| %.2e, top-1 agreement %.3f", args.out,
             report["opset"], p["max_abs_diff"], p["top1_agreement"])
    check_parity(report)


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"),
                        help="trained checkpoint (train stage)")
    parser.add_argument("--val", type=Path, default=Path("data/processed/val.csv"),
                        help="validation split used for the parity batch")
    parser.add_argument("--calibration", type=Path,
                        default=Path("reports/metrics/calibration.json"),
                        help="evaluate stage report whose temperature goes into the metadata")
    parser.add_argument("--out", type=Path, default=Path("models/model.onnx"),
                        help="ONNX model to write")
    parser.add_argument("--report", type=Path, default=Path("reports/export.json"),
                        help="parity and export report")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
