"""Stage ingest: data.source (demo | folder | fer2013) -> data/interim/images + manifest.csv.

Bad files are rejected and counted by reason in reports/ingest.json; they never stop the stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.ingest import run_ingest

log = logging.getLogger("emorec.stages.ingest")


def main(params: Params, args: argparse.Namespace) -> None:
    report = run_ingest(params, args.out, args.report)
    rejected = {k: v for k, v in report["rejected_by_reason"].items() if v}
    log.info("%s: accepted %d of %d, rejected %s", report["source"], report["accepted"],
             report["offered"], rejected or "none")


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/interim"),
                        help="folder for images/<class>/<id>.png and manifest.csv")
    parser.add_argument("--report", type=Path, default=Path("reports/ingest.json"),
                        help="counts and rejections report")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
