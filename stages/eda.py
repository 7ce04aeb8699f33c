"""Stage eda: data/interim/manifest.csv -> reports/eda.json and plots under reports/eda/.

Class balance, image modes and sizes, sharpness (Laplacian variance) and exact/near duplicates.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.eda import run_eda

log = logging.getLogger("emorec.stages.eda")


def main(params: Params, args: argparse.Namespace) -> None:
    report = run_eda(params, args.manifest, args.plots, args.report)
    dup = report["duplicates"]
    log.info("%d images, imbalance %.2f, %d exact extra copies, %d near-duplicate pairs",
             report["images"], report["imbalance_ratio"], dup["exact_extra_copies"],
             dup["near_pairs"])


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--manifest", type=Path, default=Path("data/interim/manifest.csv"),
                        help="manifest written by the ingest stage")
    parser.add_argument("--plots", type=Path, default=Path("reports/eda"),
                        help="folder for the PNG plots")
    parser.add_argument("--report", type=Path, default=Path("reports/eda.json"),
                        help="EDA numbers")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
