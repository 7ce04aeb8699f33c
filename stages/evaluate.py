"""Evaluate stage: score the best checkpoint on the test split (metrics JSON, DVC plots, PNGs).

Also fits temperature scaling on the val split and reports calibration before/after on test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.evaluation import evaluate_checkpoint
from emorec.headline import evaluate_headline, write_headline


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/best.pt"),
                        help="checkpoint written by the train stage")
    parser.add_argument("--split-csv", type=Path, default=Path("data/processed/test.csv"),
                        help="split to score")
    parser.add_argument("--val-csv", type=Path, default=Path("data/processed/val.csv"),
                        help="split the temperature is fitted on")
    parser.add_argument("--calibration", type=Path,
                        default=Path("reports/metrics/calibration.json"),
                        help="temperature, ECE/NLL/Brier before and after (read by export)")
    parser.add_argument("--metrics", type=Path, default=Path("reports/metrics/test.json"),
                        help="accuracy, macro-F1 and per-class precision/recall/F1")
    parser.add_argument("--headline", type=Path, default=Path("reports/metrics/evaluate.json"),
                        help="the DVC metrics: accuracy, macro-F1, balanced accuracy, ECE")
    parser.add_argument("--plots-dir", type=Path, default=Path("reports/evaluate"),
                        help="confusion.csv, per_class_f1.csv, reliability.csv, PNGs")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(params, args) -> None:
    evaluate_checkpoint(params, args.model, args.split_csv, args.metrics, args.plots_dir,
                        progress=not args.no_progress, val_csv=args.val_csv,
                        calibration_path=args.calibration)
    calibration = (json.loads(args.calibration.read_text()) if args.calibration.is_file()
                   else None)
    write_headline(args.headline, evaluate_headline(json.loads(args.metrics.read_text()),
                                                    calibration))


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
