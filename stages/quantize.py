"""Stage quantize: models/model.onnx -> INT8 QDQ ONNX + ORT-format model, report FP32 vs INT8."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.headline import quantize_headline, write_headline
from emorec.quantize import QuantizeSettings, run_quantize

log = logging.getLogger("emorec.stages.quantize")


def main(params: Params, args: argparse.Namespace) -> None:
    settings = QuantizeSettings.from_params(params)
    report = run_quantize(args.checkpoint, args.fp32, args.val, args.test, args.out, args.ort,
                          settings, params.classes)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    write_headline(args.headline, quantize_headline(report))
    t = report["targets"]
    log.info("macro-F1 FP32 %.4f -> INT8 %.4f (drop %.4f, target met: %s)",
             report["fp32"]["test"]["macro_f1"], report["int8"]["test"]["macro_f1"],
             t["macro_f1_drop"], t["f1_target_met"])
    log.info("INT8 / eager latency at batch 1: %.3f (target <= %.2f, met: %s)",
             t["int8_vs_eager_latency_ratio_batch_1"] or float("nan"), t["max_latency_ratio"],
             t["latency_target_met"])
    cpu, check = report["cpu"], report["kernel_check"]
    log.info("CPU %s (%s cores, int8 dot product: %s); fused INT8 kernels vs reference: top-1 "
             "agreement %.3f, max prob diff %.4f", cpu["model_name"], cpu["logical_cores"],
             cpu["int8_dot_product"], check["top1_agreement"], check["max_abs_prob_diff"])


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/best.pt"),
                        help="trained checkpoint, timed as the PyTorch eager baseline")
    parser.add_argument("--fp32", type=Path, default=Path("models/model.onnx"),
                        help="FP32 ONNX model (export stage)")
    parser.add_argument("--val", type=Path, default=Path("data/processed/val.csv"),
                        help="validation split, source of calibration images")
    parser.add_argument("--test", type=Path, default=Path("data/processed/test.csv"),
                        help="test split for FP32 vs INT8 accuracy")
    parser.add_argument("--out", type=Path, default=Path("models/model.int8.onnx"),
                        help="INT8 ONNX model to write")
    parser.add_argument("--ort", type=Path, default=Path("models/model.int8.ort"),
                        help="ORT-format INT8 model to write (mobile runtimes)")
    parser.add_argument("--report", type=Path, default=Path("reports/quantize.json"),
                        help="accuracy, size and latency report")
    parser.add_argument("--headline", type=Path, default=Path("reports/metrics/quantize.json"),
                        help="the DVC metrics: INT8 accuracy, macro-F1 drop, latency, size")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
