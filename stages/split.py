"""Stage split: manifest -> stratified data/processed/{train,val,test}.csv, balanced train.

Also writes label_map.json, class_weights.json, augmented copies under data/processed/augmented/
(train only) and reports/split.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.split_balance import run_split

log = logging.getLogger("emorec.stages.split")


def main(params: Params, args: argparse.Namespace) -> None:
    report = run_split(params, args.manifest, args.out, args.report)
    log.info("split %s, strategy %s, %d augmented copies, no leakage", report["sizes"],
             report["strategy"], report["augmented"]["total"])


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--manifest", type=Path, default=Path("data/interim/manifest.csv"),
                        help="manifest written by the ingest stage")
    parser.add_argument("--out", type=Path, default=Path("data/processed"),
                        help="folder for the split CSVs, label map, class weights, augmented/")
    parser.add_argument("--report", type=Path, default=Path("reports/split.json"),
                        help="split and balance report")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
